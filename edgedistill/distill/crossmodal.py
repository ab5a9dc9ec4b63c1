"""Cross-modal embedding terms: a student of one modality matches a frozen teacher of another.

The student's pooled features [B, D_s] (``forward_features``) pass through a projection head
that exists only during training and land in the teacher's embedding space [B, D_t], where one
of three losses compares them with the teacher's cached clip embeddings:

* ``comodo`` — COMODO (Chen et al., 2025, arXiv:2503.07259): the teacher's and the student's
  similarity distributions over a FIFO queue of teacher embeddings, matched by cross-entropy
  (:mod:`edgedistill.distill.comodo`). ``temperature`` is the teacher's, ``student_temperature``
  the student's; ``queue_size`` entries.
* ``infonce`` — IMU2CLIP-style InfoNCE (Moon et al., 2022, arXiv:2210.14395): each student
  embedding must pick its own clip among the batch (and the queue, when ``queue_size`` > 0) at
  temperature ``temperature`` (:mod:`edgedistill.distill.infonce`).
* ``l2`` — normalised L2 between the two embeddings (:mod:`edgedistill.distill.l2`).

The projection head is dropped after training: the deployed student keeps only its trunk, and a
classifier head is trained on top (linear probe or fine-tuning).

Each term is registered in the file of its loss as an :class:`EmbeddingTerm` subclass; this
module holds what they share (the projection head and the objective adapter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from edgedistill.distill.terms import (
    EMBEDDING_KEY,
    TERMS,
    C,
    Term,
    TermBatch,
    TermsNeeding,
    parse_term,
    shape_probe,
)


class ProjectionHead(nn.Module):
    """Two-layer MLP from the student's feature width to the teacher's embedding width.

    Args:
        dim_in: D_s, the student's pooled feature width.
        dim_out: D_t, the teacher's embedding width.
        hidden: Hidden width (default max(D_s, 256)).

    Shapes:
        [B, D_s] -> [B, D_t].
    """

    def __init__(self, dim_in: int, dim_out: int, hidden: int | None = None) -> None:
        super().__init__()
        if min(dim_in, dim_out) <= 0:
            raise ValueError(f"dims must be positive, got {dim_in} -> {dim_out}")
        width = hidden or max(dim_in, 256)
        self.net = nn.Sequential(
            nn.Linear(dim_in, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, dim_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class EmbeddingTerm(Term[C]):
    """Base of the cross-modal terms: the student's pooled features, projected by a
    :class:`ProjectionHead` into the teacher's embedding space, against the cached teacher
    embeddings (:data:`~edgedistill.distill.terms.EMBEDDING_KEY`). A subclass registers itself
    and builds its loss in :meth:`embedding_loss`; ``temperature`` is the teacher's."""

    needs = frozenset({"features", "teacher_embedding"})

    def embedding_loss(self, teacher_dim: int) -> nn.Module:
        """``loss(projected [B, D_t], teacher [B, D_t]) -> scalar``, with its own state."""
        raise NotImplementedError

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, Any]
    ) -> nn.Module:
        embedding = teacher_features.get(EMBEDDING_KEY)
        if embedding is None:
            raise ValueError(f"loss term '{self.name}' needs cached teacher '{EMBEDDING_KEY}'s")
        pooled = shape_probe(model, "forward_features", sample)
        own = self.options.model_dump(exclude={"name", "weight"})
        return CrossModalTerm(self.name, int(pooled.shape[1]), int(embedding.shape[1]), **own)

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.features is not None and self.module is not None
        out: torch.Tensor = self.module(batch.features, batch.teacher[EMBEDDING_KEY])
        return out


CROSSMODAL_TERMS = TermsNeeding("teacher_embedding")
"""Names of the registered cross-modal terms (a live view of the registry)."""


class CrossModalTerm(nn.Module):
    """Projection head + one cross-modal loss, with the loss's own state (the queue).

    Args:
        name: A registered cross-modal term: "comodo", "infonce", "l2", ...
        student_dim: D_s; teacher_dim: D_t.
        **options: That term's options, e.g. ``temperature`` (COMODO's teacher temperature,
            or InfoNCE's), ``student_temperature`` (COMODO's), ``queue_size`` (COMODO's queue
            length, or InfoNCE's extra negatives, 0 = in-batch).
    """

    def __init__(self, name: str, student_dim: int, teacher_dim: int, **options: Any) -> None:
        super().__init__()
        kind = TERMS.get(name) if name in TERMS else None
        if kind is None or not issubclass(kind, EmbeddingTerm):
            known = ", ".join(CROSSMODAL_TERMS)
            raise ValueError(f"unknown cross-modal term {name!r}; known: {known}")
        term: EmbeddingTerm[Any] = kind(parse_term({"name": name, "weight": 1.0, **options}))
        self.name = name
        self.projection = ProjectionHead(student_dim, teacher_dim)
        self.loss = term.embedding_loss(teacher_dim)

    def forward(self, student_features: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        """Loss of [B, D_s] student features against [B, D_t] teacher embeddings."""
        out: torch.Tensor = self.loss(self.projection(student_features), teacher_emb)
        return out


__all__ = ["CROSSMODAL_TERMS", "CrossModalTerm", "EmbeddingTerm", "ProjectionHead"]
