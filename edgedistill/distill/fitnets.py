"""FitNets hint loss.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets",
ICLR 2015 (arXiv:1412.6550). A student's intermediate ("guided") feature is mapped by a small
trainable regressor r onto the shape of a teacher's intermediate ("hint") feature, and the
student is trained to match it:

    L_hint = mean over all elements of ( r(v_student) − u_teacher )².

The paper writes ½ ‖u − r(v)‖² summed over elements; the mean used here (as in common
re-implementations) only rescales the loss. The paper's regressor is a convolution whose kernel
size makes the spatial sizes agree; here it is a 1×1 convolution after adaptive average pooling
(see :class:`HintAdapter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from edgedistill.distill.terms import Term, TermBatch, TermConfig, register_term, shape_probe


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Mean squared error between an adapted student feature and the teacher's hint.

    Args:
        student_feat: student feature already mapped to the teacher's shape (e.g. by
            :class:`HintAdapter`), any shape [B, ...].
        teacher_feat: teacher feature of the same shape; treated as a constant (no gradient).

    Returns:
        Scalar tensor: mean over all elements of (student − teacher)². Zero when equal.

    Raises:
        ValueError: if the two shapes differ or the features are empty.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"adapted student feature {tuple(student_feat.shape)} and teacher feature "
            f"{tuple(teacher_feat.shape)} differ in shape"
        )
    if student_feat.numel() == 0:
        raise ValueError(f"hint_loss needs non-empty features, got {tuple(student_feat.shape)}")
    return F.mse_loss(student_feat, teacher_feat.detach())


class HintAdapter(nn.Module):
    """Trainable regressor mapping a student feature onto the teacher feature's shape.

    The layer is chosen by the rank of the shapes (the batch entry, index 0, is ignored):

    * 4-D [B, C, H, W]: ``F.adaptive_avg_pool2d`` of the student map to the teacher's H×W
      (only if the sizes differ), then a 1×1 ``Conv2d`` (+ ``BatchNorm2d``). Pooling runs before
      the convolution, which is equivalent (both are linear) and cheaper. When the student map
      is smaller than the teacher's, adaptive pooling upsamples by replicating values
      (nearest-neighbour for integer factors); no interpolation is used.
    * 3-D [B, C, T]: the same with ``F.adaptive_avg_pool1d`` on T and a 1×1 ``Conv1d``
      (+ ``BatchNorm1d``).
    * 2-D [B, D]: a ``Linear`` layer.

    No activation follows, so the adapter can reach negative (pre-activation) teacher values.
    Its parameters are trainable and are NOT part of the student: pass them to the optimiser
    together with the student's and drop the adapter after distillation.

    Args:
        student_shape: shape of the student feature, e.g. ``(B, C_s, H_s, W_s)``.
        teacher_shape: shape of the teacher feature, same rank, e.g. ``(B, C_t, H_t, W_t)``.
        batch_norm: add a batch-norm layer after the 1×1 convolution (4-D and 3-D only).

    Raises:
        ValueError: for ranks other than 2, 3 or 4, ranks or batch entries that differ, or
            non-positive sizes.
    """

    def __init__(
        self, student_shape: Sequence[int], teacher_shape: Sequence[int], *, batch_norm: bool = True
    ) -> None:
        super().__init__()
        student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
        if len(student_shape) != len(teacher_shape):
            raise ValueError(
                f"student shape {student_shape} and teacher shape {teacher_shape} differ in rank"
            )
        if len(student_shape) not in (2, 3, 4):
            raise ValueError(
                f"unsupported feature rank {len(student_shape)} (shape {student_shape}); "
                "expected [B, D], [B, C, T] or [B, C, H, W]"
            )
        if min(student_shape + teacher_shape) <= 0:
            raise ValueError(f"sizes must be positive, got {student_shape} and {teacher_shape}")
        if student_shape[0] != teacher_shape[0]:
            raise ValueError(
                f"batch sizes differ: student {student_shape[0]}, teacher {teacher_shape[0]}"
            )
        self.student_shape = student_shape
        self.teacher_shape = teacher_shape
        c_s, c_t = student_shape[1], teacher_shape[1]
        self.proj: nn.Module
        if len(student_shape) == 2:
            self.proj = nn.Linear(c_s, c_t)
        elif len(student_shape) == 3:
            conv1 = nn.Conv1d(c_s, c_t, kernel_size=1, bias=not batch_norm)
            self.proj = nn.Sequential(conv1, nn.BatchNorm1d(c_t)) if batch_norm else conv1
        else:
            conv2 = nn.Conv2d(c_s, c_t, kernel_size=1, bias=not batch_norm)
            self.proj = nn.Sequential(conv2, nn.BatchNorm2d(c_t)) if batch_norm else conv2

    def forward(self, student_feat: torch.Tensor) -> torch.Tensor:
        """Map [B, C_s, ...] to [B, C_t, ...] with the teacher's spatial / temporal size."""
        expected = len(self.student_shape)
        if student_feat.dim() != expected or student_feat.shape[1] != self.student_shape[1]:
            raise ValueError(
                f"expected a {expected}-D student feature with {self.student_shape[1]} channels "
                f"(like {self.student_shape}), got {tuple(student_feat.shape)}"
            )
        target_size = self.teacher_shape[2:]
        if tuple(student_feat.shape[2:]) != target_size:
            if expected == 4:
                student_feat = F.adaptive_avg_pool2d(student_feat, (target_size[0], target_size[1]))
            else:
                student_feat = F.adaptive_avg_pool1d(student_feat, target_size[0])
        out: torch.Tensor = self.proj(student_feat)
        return out


class FitNetsLoss(nn.Module):
    """Hint loss with its own :class:`HintAdapter`.

    ``loss = hint_loss(adapter(student_feat), teacher_feat)``. The adapter's parameters are
    trainable: include ``fitnets_loss.parameters()`` in the optimiser next to the student's,
    otherwise the regressor stays at its random initialisation.

    Args:
        student_shape: shape of the student feature (see :class:`HintAdapter`).
        teacher_shape: shape of the teacher feature.
        batch_norm: forwarded to :class:`HintAdapter`.
    """

    def __init__(
        self, student_shape: Sequence[int], teacher_shape: Sequence[int], *, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.adapter = HintAdapter(student_shape, teacher_shape, batch_norm=batch_norm)

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        if student_feat.shape[:1] != teacher_feat.shape[:1]:
            raise ValueError(
                f"batch sizes differ: student {tuple(student_feat.shape)}, "
                f"teacher {tuple(teacher_feat.shape)}"
            )
        return hint_loss(self.adapter(student_feat), teacher_feat)


class FitNetsConfig(TermConfig):
    """Options of the ``fitnets`` term."""

    student_stage: int = Field(default=-2, description="guided student stage index")
    teacher_tap: str = Field(default="", description="teacher layer of the hint")
    hint_size: int | None = Field(
        default=None, ge=1, description="pool the cached teacher map to this size"
    )

    @model_validator(mode="after")
    def _needs_a_tap(self) -> FitNetsConfig:
        if not self.teacher_tap:
            raise ValueError("a fitnets term needs teacher_tap (a layer name of the teacher)")
        return self


@register_term("fitnets")
class FitNetsTerm(Term[FitNetsConfig]):
    """``fitnets``: the student stage ``student_stage`` (``forward_intermediates``) regressed by
    a trainable :class:`HintAdapter` onto the cached teacher layer ``teacher_tap``, pooled to
    ``hint_size`` by whoever fills the cache (recorded here so checkpoints see it)."""

    config = FitNetsConfig
    needs = frozenset({"intermediates", "teacher_features"})

    @property
    def key(self) -> str:
        return self.options.teacher_tap.replace(".", "_")

    def teacher_taps(self) -> tuple[str, ...]:
        return (self.options.teacher_tap,)

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, Any]
    ) -> nn.Module:
        tap, stage = self.options.teacher_tap, self.options.student_stage
        if tap not in teacher_features:
            raise ValueError(f"fitnets needs the cached teacher feature '{tap}'")
        _, feats = shape_probe(model, "forward_intermediates", sample)
        try:
            student = feats[stage]
        except IndexError:
            raise ValueError(
                f"fitnets student_stage {stage}: the student has {len(feats)} stages"
            ) from None
        hint = teacher_features[tap]
        return HintAdapter(tuple(student.shape), (student.shape[0], *hint.shape[1:]))

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.intermediates is not None and self.module is not None
        student = self.module(batch.intermediates[self.options.student_stage])
        return hint_loss(student, batch.teacher[self.options.teacher_tap])
