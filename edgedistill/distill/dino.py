"""DINO self-distillation with a centred, sharpened EMA teacher.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294). The teacher's output is
centred (a running mean c is subtracted, against collapse onto one dimension) and sharpened (a
low temperature τ_t, against collapse onto the uniform distribution); the student matches it:

    q = softmax((t − c) / τ_t)   (constant),   L = mean_b −Σ_k q_bk · log softmax(s_b / τ_s)_k
    c ← m·c + (1 − m)·mean_b t_b,              θ_teacher ← λ·θ_teacher + (1 − λ)·θ_student

Only a single (student view, teacher view) pair is supported: the multi-crop sum over pairs of
different views and the teacher-temperature warm-up of the official code are left to the caller
(call :func:`dino_loss` per pair, pass a different ``teacher_temp`` per epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_temperature(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_momentum(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {value}")


def dino_teacher_targets(
    teacher_out: torch.Tensor, center: torch.Tensor, *, teacher_temp: float = 0.04
) -> torch.Tensor:
    """Centred, sharpened teacher distribution softmax((t − c) / τ_t), [B, K], detached."""
    _check_temperature("teacher_temp", teacher_temp)
    if teacher_out.dim() != 2:
        raise ValueError(f"teacher_out must be 2-D [B, K], got shape {tuple(teacher_out.shape)}")
    if center.shape != teacher_out.shape[1:]:
        raise ValueError(
            f"center must have shape ({teacher_out.shape[1]},), got {tuple(center.shape)}"
        )
    return F.softmax((teacher_out.detach() - center.detach()) / teacher_temp, dim=-1)


def dino_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO cross-entropy between the centred/sharpened teacher and the student.

    Args:
        student_out: [B, K] student projection-head outputs.
        teacher_out: [B, K] teacher outputs for the paired view; treated as a constant.
        center: [K] running centre of the teacher outputs (see :func:`update_center`).
        student_temp: τ_s > 0.
        teacher_temp: τ_t > 0, usually lower than τ_s (sharpening).

    Returns:
        Scalar tensor: mean_b −Σ_k softmax((t − c)/τ_t)_bk · log softmax(s/τ_s)_bk.
    """
    _check_temperature("student_temp", student_temp)
    if student_out.shape != teacher_out.shape:
        raise ValueError(
            f"student outputs {tuple(student_out.shape)} and teacher outputs "
            f"{tuple(teacher_out.shape)} differ in shape"
        )
    q = dino_teacher_targets(teacher_out, center, teacher_temp=teacher_temp)
    log_p = F.log_softmax(student_out / student_temp, dim=-1)
    return -(q * log_p).sum(dim=-1).mean()


@torch.no_grad()
def update_center(
    center: torch.Tensor, teacher_out: torch.Tensor, *, momentum: float = 0.9
) -> torch.Tensor:
    """New centre m·c + (1 − m)·mean_b t_b, [K] (a new tensor; inputs are not modified)."""
    _check_momentum(momentum)
    if teacher_out.dim() != 2 or center.shape != teacher_out.shape[1:]:
        raise ValueError(
            f"expected teacher_out [B, K] and center [K], got {tuple(teacher_out.shape)} "
            f"and {tuple(center.shape)}"
        )
    batch_center = teacher_out.detach().mean(dim=0).to(center)
    return center * momentum + batch_center * (1.0 - momentum)


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, *, momentum: float, copy_buffers: bool = True
) -> None:
    """In place: θ_teacher ← m·θ_teacher + (1 − m)·θ_student for every parameter.

    ``momentum=0`` copies the student, ``momentum=1`` keeps the teacher. With ``copy_buffers``
    (default) the buffers (e.g. BatchNorm running statistics) are copied from the student; the
    official DINO code averages parameters only (its ViTs have no buffers).
    """
    _check_momentum(momentum)
    pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    kinds: list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = [
        ("parameter", dict(teacher.named_parameters()), dict(student.named_parameters()))
    ]
    if copy_buffers:
        kinds.append(("buffer", dict(teacher.named_buffers()), dict(student.named_buffers())))
    for kind, t_dict, s_dict in kinds:  # check everything before changing anything
        if t_dict.keys() != s_dict.keys():
            raise ValueError(f"teacher and student have different {kind} names")
        for name, t_x in t_dict.items():
            if t_x.shape != s_dict[name].shape:
                raise ValueError(
                    f"{kind} {name!r} differs in shape: teacher {tuple(t_x.shape)} "
                    f"vs student {tuple(s_dict[name].shape)}"
                )
            pairs.append((kind, t_x, s_dict[name]))
    for kind, t_x, s_x in pairs:
        if kind == "parameter":
            t_x.mul_(momentum).add_(s_x.detach().to(t_x), alpha=1.0 - momentum)
        else:
            t_x.copy_(s_x)


class DINOLoss(nn.Module):
    """Module form of :func:`dino_loss` keeping the centre as a buffer (``center``, [K]).

    Each call computes the loss with the current centre, THEN updates the centre with the
    teacher batch (as in the official code). The centre starts at zero.
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"out_dim must be > 0, got {out_dim}")
        _check_temperature("student_temp", student_temp)
        _check_temperature("teacher_temp", teacher_temp)
        _check_momentum(center_momentum)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        loss = dino_loss(
            student_out,
            teacher_out,
            self.center,
            student_temp=self.student_temp,
            teacher_temp=self.teacher_temp,
        )
        self.center.copy_(update_center(self.center, teacher_out, momentum=self.center_momentum))
        return loss
