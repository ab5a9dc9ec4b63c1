"""Relational knowledge distillation (RKD).

Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068).
Instead of matching outputs one sample at a time, the student matches the *structure* of the
teacher's embeddings within a batch, so student and teacher dimensions may differ:

* distance-wise: ψ_D(t_i, t_j) = ‖t_i − t_j‖₂ / μ, with μ the mean distance over the B(B−1)
  off-diagonal pairs; L_D = mean over all B² ordered pairs of Huber(ψ_D(s) − ψ_D(t));
* angle-wise: ψ_A(t_i, t_j, t_k) = cos∠t_i t_j t_k = ⟨e_ij, e_kj⟩, e_ij = (t_i − t_j) / ‖t_i − t_j‖₂;
  L_A = mean over all B³ ordered triplets of Huber(ψ_A(s) − ψ_A(t)).

Huber is smooth-L1 with δ = 1 (½x² for |x| < 1, |x| − ½ otherwise). As in the authors' code
(github.com/lenscape/RKD, ``metric/loss.py``) the means run over all B² / B³ index tuples,
including degenerate ones (i = j, or j equal to i or k) whose value is 0 for both networks;
the default weights (25 and 50) are those used with this normalisation by mdistiller.

Recipe term ``rkd``: for classification the paper applies the losses to the output of the final
pooling layer, i.e. the penultimate embedding of both networks (as mdistiller does with its
``pooled_feat``), not to the logits. :class:`RKDTerm` therefore reads the student's pooled
features (``forward_features``, [B, D_s]) and the cached teacher layer ``teacher_tap`` (default
``pool``, the global pooling of this project's CNN teachers; a map is average-pooled to
``hint_size`` before caching, globally by default). ``teacher_tap: logits`` uses the teacher's
cached logits instead, a common variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from edgedistill.distill.terms import Term, TermBatch, TermConfig, register_term

_EPS = 1e-12


def _flatten_pair(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, min_batch: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if student_emb.dim() < 2 or teacher_emb.dim() < 2:
        raise ValueError(
            f"embeddings must be [B, D] (or [B, ...], flattened), got student "
            f"{tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)}"
        )
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {student_emb.shape[0]}, teacher {teacher_emb.shape[0]}"
        )
    if student_emb.shape[0] < min_batch:
        raise ValueError(
            f"{name} needs a batch of at least {min_batch}, got {student_emb.shape[0]}"
        )
    batch = student_emb.shape[0]
    return student_emb.reshape(batch, -1), teacher_emb.detach().reshape(batch, -1)


def _normalised_distances(emb: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B] Euclidean distances divided by their off-diagonal mean; zero diagonal."""
    # explicit differences (not the |a|² + |b|² − 2ab expansion) avoid cancellation far from the
    # origin; the clamp before sqrt keeps the gradient finite for coincident points
    diff = emb[None, :, :] - emb[:, None, :]
    dist = diff.pow(2).sum(dim=2).clamp(min=_EPS).sqrt()
    off_diagonal = ~torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    dist = dist * off_diagonal
    return dist / dist[off_diagonal].mean()


def _angles(emb: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B, B] with [j, i, k] = cos of the angle at e_j between e_i and e_k."""
    unit = F.normalize(emb[None, :, :] - emb[:, None, :], p=2, dim=2, eps=_EPS)
    return unit @ unit.transpose(1, 2)


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD loss.

    Args:
        student_emb: [B, D_s] student embeddings (higher ranks are flattened to [B, -1]), B >= 2.
        teacher_emb: [B, D_t] teacher embeddings; D_t may differ from D_s. No gradient.

    Returns:
        Scalar tensor: mean over the B×B pairs of smooth-L1 between the mean-normalised
        pairwise distances. Invariant to scaling, rotating and translating either embedding.

    Raises:
        ValueError: on rank < 2, differing batch sizes, or B < 2.
    """
    student, teacher = _flatten_pair(student_emb, teacher_emb, 2, "the RKD distance loss")
    return F.smooth_l1_loss(_normalised_distances(student), _normalised_distances(teacher))


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Angle-wise RKD loss.

    Args:
        student_emb: [B, D_s] student embeddings (higher ranks are flattened to [B, -1]), B >= 3.
        teacher_emb: [B, D_t] teacher embeddings; D_t may differ from D_s. No gradient.

    Returns:
        Scalar tensor: mean over the B×B×B triplets of smooth-L1 between the cosines of the
        angles they form. Invariant to scaling, rotating and translating either embedding.

    Raises:
        ValueError: on rank < 2, differing batch sizes, or B < 3.
    """
    student, teacher = _flatten_pair(student_emb, teacher_emb, 3, "the RKD angle loss")
    return F.smooth_l1_loss(_angles(student), _angles(teacher))


def _check_weights(distance_weight: float, angle_weight: float) -> None:
    if distance_weight < 0 or angle_weight < 0:
        raise ValueError(
            f"weights must be >= 0, got distance_weight={distance_weight}, "
            f"angle_weight={angle_weight}"
        )


def rkd_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """Weighted sum of the distance- and angle-wise RKD losses.

    Args:
        student_emb: [B, D_s] student embeddings (flattened if higher rank).
        teacher_emb: [B, D_t] teacher embeddings; no gradient.
        distance_weight: weight of :func:`rkd_distance_loss` (>= 0); a zero weight skips it.
        angle_weight: weight of :func:`rkd_angle_loss` (>= 0); a zero weight skips it, so B = 2
            is then allowed.

    Returns:
        Scalar tensor: distance_weight · L_D + angle_weight · L_A.

    Raises:
        ValueError: on negative weights or the conditions of the two losses.
    """
    _check_weights(distance_weight, angle_weight)
    _flatten_pair(student_emb, teacher_emb, 2, "RKD")
    loss = student_emb.new_zeros(())
    if distance_weight > 0:
        loss = loss + distance_weight * rkd_distance_loss(student_emb, teacher_emb)
    if angle_weight > 0:
        loss = loss + angle_weight * rkd_angle_loss(student_emb, teacher_emb)
    return loss


class RKDLoss(nn.Module):
    """Module form of :func:`rkd_loss` with fixed weights."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        _check_weights(distance_weight, angle_weight)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        return rkd_loss(
            student_emb,
            teacher_emb,
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
        )


class RKDConfig(TermConfig):
    """Options of the ``rkd`` term (weights as in :func:`rkd_loss`)."""

    distance_weight: float = Field(default=25.0, ge=0, description="weight of L_D (>= 0)")
    angle_weight: float = Field(default=50.0, ge=0, description="weight of L_A (>= 0)")
    teacher_tap: str = Field(
        default="pool",
        min_length=1,
        description="teacher layer of the embedding (the penultimate pooling), or logits",
    )
    hint_size: int | None = Field(
        default=1, ge=1, description="average-pool a cached teacher map to this size"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> RKDConfig:
        if self.distance_weight + self.angle_weight <= 0:
            raise ValueError("rkd needs distance_weight or angle_weight > 0")
        return self


@register_term("rkd")
class RKDTerm(Term[RKDConfig]):
    """``rkd``: :func:`rkd_loss` between the student's pooled features [B, D_s] and the cached
    teacher embedding ``teacher_tap`` [B, D_t] (flattened). A batch too small for the enabled
    losses (fewer than 3 samples with the angle loss, 2 without) contributes nothing."""

    config = RKDConfig
    needs = frozenset({"features", "teacher_features"})

    def teacher_taps(self) -> tuple[str, ...]:
        return (self.options.teacher_tap,)

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, Any]
    ) -> None:
        if self.options.teacher_tap not in teacher_features:
            raise ValueError(f"rkd needs the cached teacher feature '{self.options.teacher_tap}'")
        return None

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor | None:
        assert batch.features is not None
        teacher = batch.teacher[self.options.teacher_tap]  # "logits": the cached logits
        if len(batch.features) < (3 if self.options.angle_weight > 0 else 2):
            return None
        return rkd_loss(
            batch.features,
            teacher,
            distance_weight=self.options.distance_weight,
            angle_weight=self.options.angle_weight,
        )
