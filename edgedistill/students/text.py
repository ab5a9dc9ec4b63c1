"""Text students over a byte tokenizer an app can re-implement in a few lines.

``ByteTokenizer``: UTF-8 bytes + 1 as ids (0 = padding, vocabulary 257, no vocabulary file).
``text_cnn``: embedding, 1-D conv-BN-ReLU stages, masked max/mean pooling (Kim, EMNLP 2014,
arXiv:1408.5882). ``text_gru``: embedding, single-layer bidirectional GRU, masked mean. Both
take ids [B, L] int64, ignore padding exactly (appended pads leave the logits unchanged) and
honour the student contract of :mod:`edgedistill.students.base`. ``TINY_CONFIGS``: small variants.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.students.base import STUDENTS, fold_batch_norm_

VOCAB_SIZE = 257
PAD_ID = 0
RULE = (
    "Encode the text as UTF-8 bytes; if lowercase, map bytes 65-90 (A-Z) to 97-122 (a-z); keep "
    "the first max_len bytes; id = byte + 1; right-pad with 0 to max_len; int64 [batch, max_len]."
)
TINY_CONFIGS: dict[str, dict[str, object]] = {
    "text_cnn": {"embed_dim": 16, "widths": [16, 24], "kernel_size": 3},
    "text_gru": {"embed_dim": 16, "hidden_size": 16},
}


class ByteTokenizer:
    """UTF-8 bytes + 1 as token ids (0 = padding); vocabulary size 257.

    Args:
        max_len: Ids are truncated to (and, when padding, filled up to) this length.
        lowercase: Map ASCII ``A``-``Z`` to ``a``-``z`` before encoding (bytes >= 0x80 are
            untouched, so every language reproduces it exactly).
    """

    def __init__(self, max_len: int = 128, lowercase: bool = False) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len, self.lowercase = max_len, lowercase

    def encode(self, text: str, pad: bool = True) -> list[int]:
        """``text`` -> ids: the first ``max_len`` UTF-8 bytes + 1, then 0s up to ``max_len``."""
        data = text.encode("utf-8")
        if self.lowercase:
            data = bytes(b + 32 if 65 <= b <= 90 else b for b in data)
        ids = [b + 1 for b in data[: self.max_len]]
        return ids + [PAD_ID] * (self.max_len - len(ids)) if pad else ids

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Encode and pad every text: int64 [B, max_len]."""
        return np.array([self.encode(t) for t in texts], dtype=np.int64).reshape(-1, self.max_len)

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of :meth:`encode` (pads dropped; a cut multi-byte character becomes U+FFFD)."""
        return bytes(int(i) - 1 for i in ids if int(i) != PAD_ID).decode("utf-8", "replace")

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description of the tokenizer for a bundle manifest."""
        return {
            "type": "byte",
            "vocab_size": VOCAB_SIZE,
            "pad_id": PAD_ID,
            "lowercase": self.lowercase,
            "max_len": self.max_len,
            "dtype": "int64",
            "rule": RULE,
        }


def pad_mask(x: torch.Tensor) -> torch.Tensor:
    """Token ids [B, L] -> float mask [B, 1, L]: 1 at real tokens, 0 at padding."""
    return (x != PAD_ID).unsqueeze(1).to(torch.float32)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of [B, C, L] over the positions where ``mask`` [B, 1, L] is 1 -> [B, C]."""
    return (h * mask).sum(dim=2) / mask.sum(dim=2).clamp_min(1.0)


class ConvBNReLU1d(nn.Module):
    """Same-padded conv-BN-ReLU zeroed at pads (so the next conv sees plain zero padding).

    [B, cin, L], mask [B, 1, L] -> [B, cout, L]."""

    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm1d(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) * mask

    def fuse_(self) -> None:
        """Fold the (eval-mode) batch norm into the convolution, in place; idempotent."""
        fold_batch_norm_(self)


class _TextStudent(nn.Module):
    """Shared head: ``_features`` gives per-layer [B, C_i, L] and the mask; pool; classify."""

    config: dict[str, object]
    embedding: nn.Embedding
    dropout: nn.Dropout
    classifier: nn.Linear

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(h, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x)[0]

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, K] and the feature maps [B, C_i, L] listed in the class's Shapes."""
        feats, mask = self._features(x)
        return self.classifier(self.dropout(self._pool(feats[-1], mask))), feats

    def _live_config(self, **sizes: object) -> dict[str, object]:
        return {
            **self.config,
            "embed_dim": int(self.embedding.embedding_dim),
            "num_classes": int(self.classifier.out_features),
            **sizes,
        }

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs."""
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)
        self.config["num_classes"] = num_classes


@STUDENTS.register("text_cnn")
class TextCNN(_TextStudent):
    """Byte-level CNN classifier (Kim, EMNLP 2014, arXiv:1408.5882), stages in sequence.

    Args:
        num_classes: Number of output logits K.
        embed_dim: Token embedding size E (pad id 0 embeds to zeros).
        widths: Output channels of each conv-BN-ReLU stage; multiples of 8.
        kernel_size: Odd temporal kernel of every stage (same padding, stride 1).
        pool: ``"max"`` (Kim's max-over-time) or ``"mean"``, both over non-pad positions.
        dropout: Dropout before the classifier (training only).
        vocab_size: Embedding rows; 257 for :class:`ByteTokenizer`.

    Shapes:
        forward: ids [B, L] int64 -> logits [B, K].
        forward_intermediates: logits and each stage's output [B, widths[i], L] (0 at pads).
    """

    def __init__(
        self,
        num_classes: int = 2,
        embed_dim: int = 64,
        widths: Sequence[int] = (64, 64, 64),
        kernel_size: int = 3,
        pool: str = "max",
        dropout: float = 0.0,
        vocab_size: int = VOCAB_SIZE,
    ) -> None:
        super().__init__()
        if not widths or any(w <= 0 or w % 8 for w in widths):
            raise ValueError(f"widths must be positive multiples of 8, got {list(widths)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if pool not in ("max", "mean"):
            raise ValueError(f"pool must be 'max' or 'mean', got {pool!r}")
        self.config = dict(
            num_classes=num_classes, embed_dim=embed_dim, widths=[int(w) for w in widths],
            kernel_size=kernel_size, pool=pool, dropout=dropout, vocab_size=vocab_size,
        )  # fmt: skip
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        chans = [embed_dim, *(int(w) for w in widths)]
        self.stages = nn.ModuleList(
            ConvBNReLU1d(cin, cout, kernel_size) for cin, cout in itertools.pairwise(chans)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(chans[-1], num_classes)

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        mask = pad_mask(x)
        h = self.embedding(x).transpose(1, 2) * mask  # [B, E, L]
        feats = []
        for stage in self.stages:
            h = stage(h, mask)
            feats.append(h)
        return feats, mask

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # After ReLU and masking every value is >= 0 and pads are 0, so the plain max equals
        # the max over real positions (0 for an all-pad row).
        return h.amax(dim=2) if self.config["pool"] == "max" else masked_mean(h, mask)

    def current_config(self) -> dict[str, object]:
        """Constructor arguments that rebuild this model, widths read from the live modules."""
        stages: list[ConvBNReLU1d] = list(self.stages)  # type: ignore[arg-type]
        return self._live_config(widths=[int(s.conv.out_channels) for s in stages])

    def to_deploy(self) -> nn.Module:
        """An inference copy: eval mode, batch norm folded into the convolutions."""
        model = copy.deepcopy(self).eval()
        for module in model.modules():
            if isinstance(module, ConvBNReLU1d):
                module.fuse_()
        return model


@STUDENTS.register("text_gru")
class TextGRU(_TextStudent):
    """Embedding, single-layer bidirectional GRU (batch_first), masked mean, linear head.

    The recurrence (Cho et al., arXiv:1406.1078) is unrolled over L with an ``nn.GRU``'s
    weights (standard state dict; ONNX needs only MatMul/Sigmoid/Tanh). A pad step carries the
    state over and outputs 0, so padding anywhere is skipped in both directions; without
    padding it equals ``nn.GRU``.

    Args:
        num_classes: Number of output logits K.
        embed_dim: Token embedding size E (pad id 0 embeds to zeros).
        hidden_size: GRU hidden size H per direction.
        dropout: Dropout before the classifier (training only).
        vocab_size: Embedding rows; 257 for :class:`ByteTokenizer`.

    Shapes:
        forward: ids [B, L] int64 -> logits [B, K].
        forward_intermediates: logits and the GRU outputs [B, 2H, L] (both directions, 0 at pads).
    """

    def __init__(
        self,
        num_classes: int = 2,
        embed_dim: int = 64,
        hidden_size: int = 64,
        dropout: float = 0.0,
        vocab_size: int = VOCAB_SIZE,
    ) -> None:
        super().__init__()
        if embed_dim < 1 or hidden_size < 1:
            raise ValueError("embed_dim and hidden_size must be positive")
        self.config = dict(
            num_classes=num_classes, embed_dim=embed_dim, hidden_size=hidden_size,
            dropout=dropout, vocab_size=vocab_size,
        )  # fmt: skip
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(embed_dim, hidden_size, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)

    def _direction(self, emb: torch.Tensor, mask: torch.Tensor, sfx: str) -> torch.Tensor:
        """One direction (``sfx`` "" or "_reverse"): [B, L, E], mask [B, L, 1] -> [B, L, H]."""
        w_ih, b_ih, w_hh, b_hh = (
            getattr(self.gru, f"{n}_l0{sfx}")
            for n in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")
        )
        gi = F.linear(emb, w_ih, b_ih)  # input projections of every step at once: [B, L, 3H]
        steps = range(gi.shape[1]) if not sfx else range(gi.shape[1] - 1, -1, -1)
        h = gi.new_zeros(gi.shape[0], self.gru.hidden_size)
        out: list[torch.Tensor] = [h] * gi.shape[1]
        for t in steps:
            i_r, i_z, i_n = gi[:, t].chunk(3, dim=1)
            h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            new = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
            m = mask[:, t]
            h = m * new + (1 - m) * h  # a pad step carries the state over unchanged
            out[t] = h * m
        return torch.stack(out, dim=1)

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        mask = pad_mask(x)
        emb, step_mask = self.embedding(x), mask.transpose(1, 2)  # [B, L, E], [B, L, 1]
        outs = [self._direction(emb, step_mask, sfx) for sfx in ("", "_reverse")]
        return [torch.cat(outs, dim=2).transpose(1, 2)], mask

    def current_config(self) -> dict[str, object]:
        """Constructor arguments that rebuild this model, sizes read from the live modules."""
        return self._live_config(hidden_size=int(self.gru.hidden_size))

    def to_deploy(self) -> nn.Module:
        """An inference copy in eval mode (there is no batch norm to fold)."""
        return copy.deepcopy(self).eval()
