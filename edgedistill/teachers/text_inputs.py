"""Text teachers on the task's own input: byte-token ids [B, L] back to texts, then the LM.

A text task stores every text as :class:`~edgedistill.students.text.ByteTokenizer` ids (UTF-8
bytes + 1, 0 = padding), the same ids the student reads. :class:`TextTeacherOnIds` decodes
each row back to its text and hands the batch of strings to a frozen
:class:`~edgedistill.teachers.text.TextTeacher`, so a text teacher plugs into the chain's
teacher cache, linear-probe adaptation and reports like any tensor teacher, and sees exactly
the (possibly cut) text the student sees.

Two packaged cards are registered here (weights verified by the card's pinned sha256):
``smollm2`` (SmolLM2-135M-Instruct, verbaliser class log-probabilities from a prompt, or
pooled states) and ``minilm`` (all-MiniLM-L6-v2 sentence embeddings; give it a head with
``teacher.adapt``).

MACs of a transformer teacher are counted analytically (:func:`transformer_macs`): every
linear layer of every block once per token, attention scores and weighted sums
(``tokens² · hidden`` each per layer), and the vocabulary projection for the tokens whose
logits are kept. Token counts depend on the text; :meth:`TextTeacherOnIds.macs` reports the
count for a text of ``typical_tokens`` tokens (the mean over the texts the teacher has seen,
or 32 before it has seen any).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.errors import RecipeError
from edgedistill.students.text import ByteTokenizer
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.packaged import register_packaged_teacher
from edgedistill.teachers.text import (
    MINILM_HINT,
    SMOLLM2_HINT,
    CausalLMTeacher,
    SentenceEncoderTeacher,
    TextTeacher,
    causal_lm_teacher,
    sentence_encoder_teacher,
)

DEFAULT_TYPICAL_TOKENS = 32
LENGTH_GROUP = 16  # texts per teacher call after sorting a batch by length


def transformer_macs(config: Any, tokens: int, logit_tokens: int) -> int:
    """Multiply-accumulates of one forward pass of a decoder or encoder transformer.

    Args:
        config: A ``transformers`` config (``hidden_size``, ``num_hidden_layers``,
            ``intermediate_size``, ``num_attention_heads``, optional ``num_key_value_heads``,
            ``vocab_size``; a gated MLP when ``hidden_act`` is SiLU, as in Llama).
        tokens: Sequence length T.
        logit_tokens: Positions whose vocabulary logits are computed (0 for an encoder).

    Returns:
        ``T · (attention projections + MLP) · layers + 2 · T² · hidden · layers
        + logit_tokens · hidden · vocab``.
    """
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    inner = int(config.intermediate_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    kv = hidden * kv_heads // heads
    projections = hidden * hidden * 2 + hidden * kv * 2  # q, o and k, v
    gated = str(getattr(config, "hidden_act", "")).lower() in ("silu", "swish")
    mlp = hidden * inner * (3 if gated else 2)
    attention = 2 * tokens * tokens * hidden
    per_layer = tokens * (projections + mlp) + attention
    return layers * per_layer + logit_tokens * hidden * int(config.vocab_size)


class TextTeacherOnIds(nn.Module):
    """A text teacher that reads byte-token ids: decode each row, run the teacher.

    Args:
        teacher: The frozen text teacher (list of B strings -> [B, D]).

    Shapes:
        ids [B, L] int64 (0 = padding) -> the teacher's outputs [B, D] float32.
    """

    exportable = False  # ONNX Runtime sessions / a tokenizer inside: a torch-only row

    input_dtype = torch.int64

    def __init__(self, teacher: TextTeacher) -> None:
        super().__init__()
        self.teacher = teacher
        self.parameter_count = sum(p.numel() for p in teacher.model.parameters())
        self._tokens_seen = 0
        self._texts_seen = 0

    @staticmethod
    def texts(ids: torch.Tensor) -> list[str]:
        """The text of each row of ids (padding dropped)."""
        decode = ByteTokenizer().decode
        return [decode(row) for row in ids.detach().cpu().tolist()]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        texts = [t if t.strip() else " " for t in self.texts(ids)]
        self._count_tokens(texts)
        # Texts of similar length run together, so short reviews are not padded to the
        # longest of the batch (about 2x fewer token positions on review snippets); the
        # teachers pad and mask, so grouping changes outputs only by float rounding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        outputs: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for start in range(0, len(order), LENGTH_GROUP):
            group = order[start : start + LENGTH_GROUP]
            for i, row in zip(group, self.teacher([texts[i] for i in group]), strict=True):
                outputs[i] = row
        return torch.stack(outputs)

    def forward_features(self, ids: torch.Tensor) -> torch.Tensor:
        """The teacher's outputs as features (a sentence encoder's embeddings; a causal LM's
        verbaliser log-probabilities or pooled states, as its card says)."""
        return self(ids)

    def _count_tokens(self, texts: list[str]) -> None:
        tokenizer = self.teacher.tokenizer
        prompts = (
            self.teacher.prompts(texts) if isinstance(self.teacher, CausalLMTeacher) else texts
        )
        self._tokens_seen += sum(len(ids) for ids in tokenizer(prompts)["input_ids"])
        self._texts_seen += len(texts)

    @property
    def typical_tokens(self) -> int:
        """Mean prompt length in tokens over the texts seen so far (32 before any)."""
        if not self._texts_seen:
            return DEFAULT_TYPICAL_TOKENS
        return max(1, round(self._tokens_seen / self._texts_seen))

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs for one text of :attr:`typical_tokens` tokens (``input_shape`` is the byte
        length, which does not fix the token count)."""
        keeps_logits = isinstance(self.teacher, CausalLMTeacher)
        keeps_logits = keeps_logits and self.teacher.output == "verbaliser"  # type: ignore[union-attr]
        return transformer_macs(self.teacher.config, self.typical_tokens, int(keeps_logits))


def _frozen(teacher: TextTeacher, name: str, digest: str) -> FrozenTeacher:
    return FrozenTeacher(TextTeacherOnIds(teacher), name, digest)


_LM_OPTIONS = {"output", "template", "verbalisers", "layer", "max_length"}


@register_packaged_teacher("smollm2", install=SMOLLM2_HINT, extra="text")
def _smollm2_from_card(path: Path, config: dict[str, Any], name: str, digest: str) -> FrozenTeacher:
    """A card's SmolLM2 (GGUF) teacher; ``config`` holds :class:`CausalLMTeacher` options."""
    unknown = sorted(set(config) - _LM_OPTIONS)
    if unknown:
        raise RecipeError(
            f"smollm2 teacher: unknown option(s) {unknown}; known: {sorted(_LM_OPTIONS)}"
        )
    options = dict(config)
    if "verbalisers" in options:
        options["verbalisers"] = tuple(str(v) for v in options["verbalisers"])
    lm = causal_lm_teacher(
        path.parent, gguf_file=path.name, name=name, weights_sha256=digest, **options
    )
    return _frozen(lm, name, sha256_of(digest, lm.spec()))


@register_packaged_teacher("minilm", install=MINILM_HINT, extra="text")
def _minilm_from_card(path: Path, config: dict[str, Any], name: str, digest: str) -> FrozenTeacher:
    """A card's all-MiniLM-L6-v2 teacher (embeddings [B, 384]); ``config``: max_length."""
    unknown = sorted(set(config) - {"max_length", "normalize"})
    if unknown:
        raise RecipeError(
            f"minilm teacher: unknown option(s) {unknown}; known: max_length, normalize"
        )
    encoder: SentenceEncoderTeacher = sentence_encoder_teacher(
        path.parent,
        name=name,
        weights_sha256=digest,
        max_length=config.get("max_length"),
        normalize=bool(config.get("normalize", True)),
    )
    return _frozen(encoder, name, sha256_of(digest, encoder.spec()))


def sha256_of(weights: str, spec: dict[str, Any]) -> str:
    """The teacher part of cache keys: the weights and what the teacher does to a text."""
    from edgedistill.artifacts import sha256_json

    return sha256_json({"weights": weights, "spec": spec})
