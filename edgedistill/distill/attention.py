"""Attention transfer (AT).

Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017 (arXiv:1612.03928).
A feature map [B, C, ...] is summarised by a spatial attention map, the channel statistic
|f|^p (p = 2 in the paper), flattened and L2-normalised per sample; the student matches the
teacher's map:

    Q = normalise( mean_c |f_c|^p ),   L_AT = mean_b ‖ Q_s − Q_t ‖₂².

Only spatial positions are compared, so student and teacher channel counts may differ.
The paper sums over channels (identical after normalisation) and writes the unsquared p-norm
of the difference, weighted by β/2; the authors' code squares it and averages over batch *and*
positions (i.e. it is this loss divided by the number of positions), with β = 1000. Here the
squared distance is summed over positions and averaged over the batch; scale β accordingly,
or pass ``reduction="mean"`` for the authors' per-position mean.

Recipe term ``at`` (:class:`ATTerm`): for each pair (student stage j, teacher layer) of
``pairs``, the paper's sum over the transferred groups as in the authors' code,

    L = β/2 · Σ_j mean_{b, positions} (Q_s,j − Q_t,j)²,   β = 1000 by default,

on the student's ``forward_intermediates`` stage outputs and the cached teacher layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from edgedistill.distill.terms import Term, TermBatch, TermConfig, register_term, shape_probe
from edgedistill.schema import Section


def _check_p(p: float) -> None:
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")


def _energy(feat: torch.Tensor, p: float, name: str) -> torch.Tensor:
    """[B, C, *S] -> [B, *S]: the channel mean of |f|^p, not yet normalised."""
    if feat.dim() not in (3, 4):
        raise ValueError(f"{name} must be [B, C, T] or [B, C, H, W], got shape {tuple(feat.shape)}")
    if feat.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(feat.shape)}")
    return feat.abs().pow(p).mean(dim=1)


def _normalise(energy: torch.Tensor) -> torch.Tensor:
    return F.normalize(energy.reshape(energy.shape[0], -1), p=2, dim=1)


def _pool_to(energy: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Adaptive-average-pool a [B, *S] map to [B, *size] (no-op when already that size)."""
    if list(energy.shape[1:]) == size:
        return energy
    if len(size) == 2:
        return F.adaptive_avg_pool2d(energy.unsqueeze(1), (size[0], size[1])).squeeze(1)
    return F.adaptive_avg_pool1d(energy.unsqueeze(1), size[0]).squeeze(1)


def attention_map(feat: torch.Tensor, *, p: float = 2) -> torch.Tensor:
    """Spatial attention map of a feature.

    Args:
        feat: [B, C, H, W] or [B, C, T] feature.
        p: exponent (>= 1) applied to |f| before averaging over channels.

    Returns:
        [B, H·W] (or [B, T]) tensor: mean_c |f_c|^p flattened and divided by its L2 norm per
        sample (an all-zero map stays zero).

    Raises:
        ValueError: on other ranks, an empty feature, or p < 1.
    """
    _check_p(p)
    return _normalise(_energy(feat, p, "feat"))


def at_loss(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    *,
    p: float = 2,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Attention-transfer loss between a student and a teacher feature.

    When the spatial (or temporal) sizes differ, both un-normalised maps mean_c |f|^p are
    reduced with adaptive average pooling to the element-wise minimum size (a no-op for the
    smaller one) before normalisation; pooling the map equals pooling |f|^p, so a pooled
    position holds the mean energy of the positions it covers.

    Args:
        student_feat: [B, C_s, H_s, W_s] or [B, C_s, T_s] student feature.
        teacher_feat: [B, C_t, H_t, W_t] or [B, C_t, T_t] teacher feature of the same rank and
            batch size; channels may differ. Treated as a constant (no gradient).
        p: exponent (>= 1) of the attention map.
        reduction: "sum" over the compared positions (then the batch mean), or "mean" over
            them (the authors' code: the squared difference averaged over batch and positions).

    Returns:
        Scalar tensor: mean over the batch of ‖Q_s − Q_t‖₂², in [0, 2] (the maps are non-negative);
        divided by the number of compared positions with ``reduction="mean"``. Zero when the
        two attention maps are equal.

    Raises:
        ValueError: on unsupported or differing ranks, differing batch sizes, empty features,
            p < 1 or an unknown reduction.
    """
    _check_p(p)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    student = _energy(student_feat, p, "student_feat")
    teacher = _energy(teacher_feat.detach(), p, "teacher_feat")
    if student_feat.dim() != teacher_feat.dim():
        raise ValueError(
            f"student {tuple(student_feat.shape)} and teacher {tuple(teacher_feat.shape)} "
            "differ in rank"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"batch sizes differ: student {student.shape[0]}, teacher {teacher.shape[0]}"
        )
    size = [min(a, b) for a, b in zip(student.shape[1:], teacher.shape[1:], strict=True)]
    student, teacher = _pool_to(student, size), _pool_to(teacher, size)
    squared = (_normalise(student) - _normalise(teacher)).pow(2)
    return squared.mean() if reduction == "mean" else squared.sum(dim=1).mean()


class ATLoss(nn.Module):
    """Module form of :func:`at_loss` with a fixed exponent p."""

    def __init__(self, p: float = 2) -> None:
        super().__init__()
        _check_p(p)
        self.p = p

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return at_loss(student_feat, teacher_feat, p=self.p)


class ATPair(Section):
    """One transferred group: the student stage ``student_stage`` (an index into
    ``forward_intermediates``' stage outputs) against the teacher layer ``teacher_tap``."""

    student_stage: int
    teacher_tap: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):  # the [stage, tap] shorthand
            if len(value) != 2:
                raise ValueError(f"a pair is [student_stage, teacher_tap], got {list(value)}")
            return {"student_stage": value[0], "teacher_tap": value[1]}
        return value


class ATConfig(TermConfig):
    """Options of the ``at`` term."""

    pairs: tuple[ATPair, ...] = Field(
        default=(),
        description="[{student_stage, teacher_tap}, ...] or [[stage, tap], ...]",
    )
    beta: float = Field(default=1000.0, gt=0, description="the paper's β (authors' code: 1000)")
    p: float = Field(default=2.0, ge=1, description="exponent of the attention map")
    hint_size: int | None = Field(
        default=None, ge=1, description="average-pool cached teacher maps to this size"
    )

    @model_validator(mode="after")
    def _some_pairs(self) -> ATConfig:
        if not self.pairs:
            raise ValueError("an at term needs pairs: [[student_stage, teacher_tap], ...]")
        return self


@register_term("at")
class ATTerm(Term[ATConfig]):
    """``at``: β/2 · Σ over ``pairs`` of :func:`at_loss` (``reduction="mean"``) between a student
    stage output and a cached teacher layer; channels may differ, spatial sizes are pooled to
    the smaller. No trainable part."""

    config = ATConfig
    needs = frozenset({"intermediates", "teacher_features"})

    def teacher_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pair.teacher_tap for pair in self.options.pairs))

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, Any]
    ) -> None:
        _, feats = shape_probe(model, "forward_intermediates", sample)
        for pair in self.options.pairs:
            if pair.teacher_tap not in teacher_features:
                raise ValueError(f"at needs the cached teacher feature '{pair.teacher_tap}'")
            try:
                student = feats[pair.student_stage]
            except IndexError:
                raise ValueError(
                    f"at student_stage {pair.student_stage}: the student has {len(feats)} stages"
                ) from None
            teacher = teacher_features[pair.teacher_tap]
            if student.dim() != len(teacher.shape) or student.dim() not in (3, 4):
                raise ValueError(
                    f"at pair ({pair.student_stage}, {pair.teacher_tap}): student stage "
                    f"{tuple(student.shape[1:])} and teacher layer {tuple(teacher.shape[1:])} "
                    "must both be [C, T] or [C, H, W] maps"
                )
        return None

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.intermediates is not None
        groups = [
            at_loss(
                batch.intermediates[pair.student_stage],
                batch.teacher[pair.teacher_tap],
                p=self.options.p,
                reduction="mean",
            )
            for pair in self.options.pairs
        ]
        return self.options.beta / 2 * torch.stack(groups).sum()
