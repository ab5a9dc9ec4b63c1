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
"""

from __future__ import annotations

import torch
from torch import nn

from edgedistill.distill.comodo import ComodoLoss
from edgedistill.distill.infonce import InfoNCELoss
from edgedistill.distill.l2 import normalized_l2_loss

CROSSMODAL_TERMS = ("comodo", "infonce", "l2")


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


class CrossModalTerm(nn.Module):
    """Projection head + one cross-modal loss, with the loss's own state (the queue).

    Args:
        name: "comodo", "infonce" or "l2".
        student_dim: D_s; teacher_dim: D_t.
        temperature: COMODO's teacher temperature, or InfoNCE's temperature.
        student_temperature: COMODO's student temperature.
        queue_size: COMODO's queue length (> 0), or InfoNCE's extra negatives (0 = in-batch).
    """

    def __init__(
        self,
        name: str,
        student_dim: int,
        teacher_dim: int,
        *,
        temperature: float,
        student_temperature: float,
        queue_size: int,
    ) -> None:
        super().__init__()
        if name not in CROSSMODAL_TERMS:
            raise ValueError(f"unknown cross-modal term {name!r}; known: {CROSSMODAL_TERMS}")
        self.name = name
        self.projection = ProjectionHead(student_dim, teacher_dim)
        self.loss: nn.Module | None = None
        if name == "comodo":
            self.loss = ComodoLoss(
                teacher_dim,
                queue_size,
                teacher_temperature=temperature,
                student_temperature=student_temperature,
            )
        elif name == "infonce":
            self.loss = InfoNCELoss(temperature, queue_size, dim=teacher_dim)

    def forward(self, student_features: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        """Loss of [B, D_s] student features against [B, D_t] teacher embeddings."""
        projected = self.projection(student_features)
        if self.loss is None:
            return normalized_l2_loss(projected, teacher_emb)
        out: torch.Tensor = self.loss(projected, teacher_emb)
        return out
