"""Depth pruning of decoder LLMs and its recovery by self-data distillation.

Blocks whose output barely differs from their input are removed. Scores over calibration
tokens x (a block's input) and y (its output), averaged over every non-padding token:

* angular distance, d(x, y) = arccos(x·y / (|x| |y|)) / pi in [0, 1] (Gromov et al., "The
  Unreasonable Ineffectiveness of the Deeper Layers", arXiv:2403.17887): between the input of
  block l and the output of block l + n - 1, the window of n blocks with the smallest one is
  removed (:func:`choose_window`; they use the last token only, here all tokens count);
* Block Influence, BI_l = 1 - E_t[cos(x_t, y_t)] (Men et al., ShortGPT, arXiv:2403.03853):
  the n blocks with the lowest BI are removed (:func:`choose_blocks`).

Recovery (Thangarasa et al., "Self-Data Distillation for Recovering Quality in Pruned Large
Language Models", arXiv:2410.09982): rather than fine-tuning the pruned model on the original
texts, the *unpruned* model first rewrites them (:func:`self_data_generate`), keeping the
targets in the distribution the pruned weights came from, and the pruned model is fine-tuned
on the rewrites (:func:`finetune_causal_lm`, next-token loss); :func:`perplexity` measures it.

Models are Llama-style ``transformers`` causal LMs (``model.model.layers`` holds the blocks,
``self_attn.layer_idx`` is a block's KV-cache slot). Tokenizers are used through
``tokenizer(texts, add_special_tokens=...)["input_ids"]``, ``decode``, ``pad_token_id`` /
``eos_token_id`` and, when it has a chat template, ``apply_chat_template``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.errors import RecipeError

Metric = Literal["angular", "cosine"]
ModelT = TypeVar("ModelT", bound=nn.Module)
REWRITE_INSTRUCTION = "Rewrite this movie review in your own words:"


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` of a Llama-style causal LM, or a one-line RecipeError."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise RecipeError(f"{type(model).__name__} has no model.layers ModuleList of blocks")
    return layers


def _distance(x: torch.Tensor, y: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Per-token distance of hidden states [B, L, D] -> [B, L] (in float64)."""
    cos = F.cosine_similarity(x.double(), y.double(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi if metric == "angular" else 1.0 - cos


def _as_batch(batch: Mapping[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
    out = dict(batch)
    out.setdefault("attention_mask", torch.ones_like(out["input_ids"]))
    return out


def block_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    *,
    metric: Metric = "angular",
    span: int = 1,
) -> list[float]:
    """Mean distance between the input of block l and the output of block l + span - 1.

    With ``span=1`` this is one score per block (low: the block barely changes its input and
    is a pruning candidate). With ``span=n`` entry l scores removing blocks l..l+n-1 at once,
    the quantity Gromov et al. minimise (use :func:`choose_window` on it).

    Block inputs and outputs are read with forward hooks rather than
    ``output_hidden_states=True``: ``transformers`` >= 5 replaces the last hidden state by
    the final-norm output, which is not the last block's output.

    Args:
        model: A Llama-style causal LM (run in eval mode, no gradients; its mode is restored).
        batches: Token batches: dicts with ``input_ids`` and ``attention_mask`` [B, L] (padding
            positions are excluded from the mean), or bare ``input_ids`` tensors.
        metric: ``"angular"`` (arccos(cos) / pi, Gromov et al.) or ``"cosine"``
            (1 - cos, ShortGPT's Block Influence).
        span: Blocks per scored window.

    Returns:
        ``num_blocks - span + 1`` floats, token-weighted means over all batches.
    """
    blocks = decoder_blocks(model)
    if metric not in ("angular", "cosine"):
        raise RecipeError(f"metric must be 'angular' or 'cosine', not {metric!r}")
    if not 1 <= span <= len(blocks):
        raise RecipeError(f"span must be in 1..{len(blocks)}, got {span}")
    states: list[torch.Tensor] = []

    def grab_input(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not states:
            states.append(args[0] if args else kwargs["hidden_states"])

    def grab_output(_: nn.Module, __: Any, output: Any) -> None:
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [block.register_forward_hook(grab_output) for block in blocks]
    sums = torch.zeros(len(blocks) - span + 1, dtype=torch.float64)
    count = 0.0
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            for raw in batches:
                batch = _as_batch(raw)
                states.clear()
                model(**batch, use_cache=False)
                mask = batch["attention_mask"].to(torch.float64)
                for start in range(len(sums)):
                    d = _distance(states[start], states[start + span], metric)
                    sums[start] += (d * mask).sum()
                count += float(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise RecipeError("block_importance needs at least one non-padding token")
    return (sums / count).tolist()


def _check_n(n: int, num_blocks: int) -> None:
    if not 1 <= n <= num_blocks - 2:
        raise RecipeError(
            f"can remove 1..{num_blocks - 2} of {num_blocks} blocks (never the first or the "
            f"last), not {n}"
        )


def choose_blocks(importance: Sequence[float], n: int, contiguous: bool = False) -> list[int]:
    """Sorted indices of the ``n`` lowest-scoring blocks, never the first or the last one.

    ``importance`` has one score per block (:func:`block_importance`, ``span=1``);
    ``contiguous`` picks the window of ``n`` adjacent blocks with the smallest summed score
    instead (ties: the earliest).
    """
    scores = [float(s) for s in importance]
    _check_n(n, len(scores))
    if contiguous:
        starts = range(1, len(scores) - n)
        best = min(starts, key=lambda s: (sum(scores[s : s + n]), s))
        return list(range(best, best + n))
    inner = sorted(range(1, len(scores) - 1), key=lambda i: (scores[i], i))
    return sorted(inner[:n])


def choose_window(window_scores: Sequence[float], n: int) -> list[int]:
    """Gromov et al.'s rule: the ``n`` contiguous blocks whose removal moves the stream least.

    ``window_scores`` is :func:`block_importance` with ``span=n`` (entry l: distance between
    the input of block l and the output of block l + n - 1). Returns ``[l*, ..., l* + n - 1]``
    of the smallest score among windows that keep the first and the last block.
    """
    num_blocks = len(window_scores) + n - 1
    _check_n(n, num_blocks)
    best = min(range(1, num_blocks - n), key=lambda s: (float(window_scores[s]), s))
    return list(range(best, best + n))


def remove_blocks(model: ModelT, indices: Iterable[int]) -> ModelT:
    """A deep copy of ``model`` without the decoder blocks at ``indices``.

    ``config.num_hidden_layers`` (and ``config.layer_types`` where the config has it) is
    updated and every kept block's ``self_attn.layer_idx`` renumbered 0..n-1, so the KV cache
    built from the config and ``generate`` work on the smaller model. The original is untouched.

    Raises:
        RecipeError: an index is not an int, repeated, out of range, or all blocks would go.
    """
    blocks = decoder_blocks(model)
    drop = list(indices)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in drop):
        raise RecipeError(f"block indices must be ints, got {drop}")
    bad = [i for i in drop if not 0 <= i < len(blocks)]
    if bad:
        raise RecipeError(f"block indices {bad} out of range for {len(blocks)} blocks")
    if len(set(drop)) != len(drop):
        raise RecipeError(f"block indices repeat: {drop}")
    if len(drop) >= len(blocks):
        raise RecipeError(f"cannot remove all {len(blocks)} blocks")
    pruned = copy.deepcopy(model)
    keep = [i for i in range(len(blocks)) if i not in set(drop)]
    old = decoder_blocks(pruned)
    pruned.model.layers = nn.ModuleList([old[i] for i in keep])  # type: ignore[union-attr]
    for new_index, block in enumerate(decoder_blocks(pruned)):
        for module in (block, getattr(block, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    for config in {id(c): c for c in _configs(pruned)}.values():
        config.num_hidden_layers = len(keep)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == len(blocks):
            config.layer_types = [layer_types[i] for i in keep]
    return pruned


def _configs(model: nn.Module) -> list[Any]:
    """The config objects a causal LM and its inner model hold (often the same object)."""
    found = [getattr(model, "config", None), getattr(getattr(model, "model", None), "config", None)]
    return [c for c in found if c is not None and hasattr(c, "num_hidden_layers")]


def blocks_adjacent_to_cut(removed: Sequence[int], num_blocks: int, width: int = 2) -> list[int]:
    """Indices, in the pruned model, of the ``width`` kept blocks on either side of each cut.

    ``removed`` indexes the original model of ``num_blocks`` blocks.
    """
    kept = [i for i in range(num_blocks) if i not in set(removed)]
    chosen: set[int] = set()
    for r in removed:
        before = [k for k in kept if k < r][-width:] if width else []
        after = [k for k in kept if k > r][:width]
        chosen.update(kept.index(k) for k in before + after)
    return sorted(chosen)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else (tokenizer.eos_token_id or 0))


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (special tokens as the tokenizer adds them), cut to max_length."""
    if max_length < 2:
        raise RecipeError(f"max_length must be >= 2, got {max_length}")
    rows = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [list(r)[:max_length] for r in rows]


def _right_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _token_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over the non-padding targets of a right-padded batch."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )


def token_batches(
    tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 16
) -> list[dict[str, torch.Tensor]]:
    """Right-padded ``input_ids``/``attention_mask`` batches of ``texts`` (for importance)."""
    rows = _encode(tokenizer, texts, max_length)
    pad = _pad_id(tokenizer)
    out = []
    for start in range(0, len(rows), batch_size):
        ids, mask = _right_padded(rows[start : start + batch_size], pad)
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def perplexity(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 16
) -> float:
    """Corpus perplexity: exp(total next-token NLL / number of predicted tokens).

    Each text is tokenised on its own (with the tokenizer's special tokens) and cut to
    ``max_length`` tokens; its first token is context only. Texts are pooled token-weighted,
    so one text gives exactly exp(mean NLL of its tokens).
    """
    rows = [r for r in _encode(tokenizer, texts, max_length) if len(r) >= 2]
    if not rows:
        raise RecipeError("perplexity needs at least one text of two or more tokens")
    pad, total, count = _pad_id(tokenizer), 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            ids, mask = _right_padded(rows[start : start + batch_size], pad)
            total += float(_token_nll(model, ids, mask))
            count += int(mask[:, 1:].sum())
    model.train(was_training)
    return math.exp(total / count)


def _chat_prompt(tokenizer: Any, message: str, chat: bool) -> str:
    """``message`` as the user turn of the chat template (``chat``), else plus a newline."""
    if chat:
        messages = [{"role": "user", "content": message}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text)
    return message + "\n"


def self_data_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int = 0,
    *,
    instruction: str = REWRITE_INSTRUCTION,
    chat: bool = True,
    batch_size: int = 16,
) -> list[str]:
    """The unpruned model's greedy rewrite of every fine-tuning text (the self-distilled data).

    Each text becomes the user turn ``"{instruction}\\n\\n{text}"`` of the tokenizer's chat
    template (``chat`` and a template present; else the plain message and a newline). The
    default instruction asks for a rewrite rather than, say, a sentiment explanation: in
    Thangarasa et al. the original model re-expresses the *fine-tuning targets* in its own
    words, so the pruned model is pulled back toward the distribution its weights came from
    while the content (here the review, sentiment included) stays that of the data set.

    Decoding is greedy (deterministic; ``seed`` only fixes torch's RNG for anything else),
    prompts are left-padded in batches, and only the new tokens are decoded (special tokens
    skipped, whitespace stripped). An empty generation falls back to the original text.

    Args:
        model: The unpruned causal LM (eval mode during generation, mode restored after).
        tokenizer: Its tokenizer.
        prompts: The task texts to rewrite; max_new_tokens: the generation length cap.
        seed: Seed of torch's global RNG; batch_size: prompts per ``generate`` call.
        instruction: The request placed before each text.
        chat: Wrap the request in the chat template (instruction-tuned models).
    """
    if max_new_tokens < 1:
        raise RecipeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    torch.manual_seed(seed)
    pad = _pad_id(tokenizer)
    chat = chat and bool(getattr(tokenizer, "chat_template", None))
    texts = list(prompts)
    out: list[str] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            filled = [_chat_prompt(tokenizer, f"{instruction}\n\n{t}", chat) for t in chunk]
            rows = tokenizer(filled, add_special_tokens=not chat)["input_ids"]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            generated = model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            for original, row in zip(chunk, generated[:, width:], strict=True):
                text = tokenizer.decode(row.tolist(), skip_special_tokens=True).strip()
                out.append(text or original)
    model.train(was_training)
    return out


@dataclass
class FinetuneHistory:
    """What :func:`finetune_causal_lm` did: per-step mean token loss, tokens seen, time."""

    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    trainable_params: int = 0
    seconds: float = 0.0


def finetune_causal_lm(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    max_length: int,
    seed: int,
    trainable: Sequence[int] | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
) -> FinetuneHistory:
    """Next-token fine-tuning in place: AdamW, linear decay to zero, loss masked on padding.

    Batches of ``batch_size`` texts (right-padded, cut to ``max_length`` tokens) are drawn
    epoch by epoch from a permutation seeded by ``seed``; the loss of a step is the mean NLL
    over its non-padding target tokens. Same model, texts and seed: same weights (CPU).

    Args:
        model: A causal LM; trained in place and left in eval mode with its parameters'
            ``requires_grad`` flags as they were.
        tokenizer: Its tokenizer; texts: the training texts.
        steps, lr, batch_size, max_length, seed: The budget and schedule.
        trainable: Decoder block indices to train (everything else frozen, so the backward
            pass stops at the earliest of them: cheaper on CPU); None trains every parameter.
        weight_decay: AdamW decoupled weight decay.
        max_grad_norm: Gradient-norm clip (0 disables).
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise RecipeError(
            f"need steps, batch_size >= 1 and lr > 0; got {steps}, {batch_size}, {lr}"
        )
    rows = [r for r in _encode(tokenizer, texts, max_length) if len(r) >= 2]
    if not rows:
        raise RecipeError("fine-tuning needs at least one text of two or more tokens")
    blocks = decoder_blocks(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    if trainable is None:
        params = list(model.parameters())
    else:
        bad = [i for i in trainable if not 0 <= i < len(blocks)]
        if bad or not trainable:
            raise RecipeError(f"trainable blocks {list(trainable)} invalid for {len(blocks)}")
        params = [p for i in sorted(set(trainable)) for p in blocks[i].parameters()]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    history = FinetuneHistory(trainable_params=sum(p.numel() for p in params))
    pad, order, cursor, began = _pad_id(tokenizer), torch.empty(0, dtype=torch.long), 0, time.time()
    model.train()
    try:
        for _ in range(steps):
            picked: list[int] = []
            while len(picked) < min(batch_size, len(rows)):
                if cursor >= len(order):
                    order, cursor = torch.randperm(len(rows), generator=generator), 0
                picked.append(int(order[cursor]))
                cursor += 1
            ids, mask = _right_padded([rows[i] for i in picked], pad)
            count = int(mask[:, 1:].sum())
            loss = _token_nll(model, ids, mask) / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            schedule.step()
            history.losses.append(loss.item())
            history.tokens += count
    finally:
        model.eval()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
    history.seconds = time.time() - began
    return history
