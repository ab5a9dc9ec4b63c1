"""Decoupled knowledge distillation (DKD).

Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation", CVPR 2022 (arXiv:2203.08679).
The Hinton KD loss is split into two parts that can be weighted independently:

* TCKD (target-class KD): KL between the binary distributions b = (p_target, 1 - p_target) of
  teacher and student;
* NCKD (non-target-class KD): KL between the distributions over the non-target classes only,
  i.e. the softmax renormalised after removing the target class.

    L_DKD = α · T² · TCKD + β · T² · NCKD, each KL averaged over the batch.

With α = 1 and β = 1 − p_t^target (per sample, teacher target-class probability at temperature
T) this is exactly the Hinton loss (the paper's Eq. 5): KD = TCKD + (1 − p_t^target) · NCKD.

The authors' code masks the target class by subtracting 1000 from its (temperature-scaled)
logit before the softmax; here the target column is removed instead, which is the exact limit
of that masking. The authors' linear warm-up of the whole loss over the first epochs belongs
to the training loop, not to this function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgedistill.distill.terms import TEACHER_LOGITS, Term, TermBatch, TermConfig, register_term


def _check_hyper_parameters(alpha: float, beta: float, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD loss.

    Args:
        student_logits: [B, K] raw student scores, K >= 2.
        teacher_logits: [B, K] raw teacher scores; treated as a constant (no gradient).
        targets: [B] integer ground-truth class indices in [0, K).
        alpha: weight of TCKD (>= 0). The paper uses 1.0.
        beta: weight of NCKD (>= 0). The paper uses 8.0 on CIFAR-100, 0.5 on ImageNet.
        temperature: T > 0; both logit sets are divided by T before the softmax.

    Returns:
        Scalar tensor: T² · (α · mean_b TCKD + β · mean_b NCKD). Zero when the logits are equal.

    Raises:
        ValueError: on non-[B, K] logits, mismatched shapes, K < 2, an empty batch, non-integer
            or out-of-range targets, or a negative weight / non-positive temperature.
    """
    _check_hyper_parameters(alpha, beta, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if student_logits.dim() != 2 or student_logits.shape[1] < 2:
        raise ValueError(
            f"logits must have shape [B, K] with K >= 2, got {tuple(student_logits.shape)}"
        )
    batch, num_classes = student_logits.shape
    if batch == 0:
        raise ValueError("dkd_loss needs a non-empty batch")
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape [{batch}], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}), got {targets.tolist()}")

    target_mask = F.one_hot(targets.long(), num_classes).bool()
    tckd, nckd = [], []
    for logits in (teacher_logits.detach(), student_logits):
        log_p = F.log_softmax(logits / temperature, dim=-1)
        # binary distribution: log p_target and log (1 - p_target) = logsumexp over the others
        log_target = log_p[target_mask]
        log_others = log_p[~target_mask].view(batch, num_classes - 1)
        tckd.append(torch.stack([log_target, torch.logsumexp(log_others, dim=-1)], dim=-1))
        # distribution among the non-target classes: renormalise without the target column
        nckd.append(F.log_softmax(log_others, dim=-1))

    def _kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
        return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1).mean()

    loss = alpha * _kl(*tckd) + beta * _kl(*nckd)
    return loss * temperature**2


class DKDLoss(nn.Module):
    """Module form of :func:`dkd_loss` with fixed α, β and temperature."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        _check_hyper_parameters(alpha, beta, temperature)
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        return dkd_loss(
            student_logits,
            teacher_logits,
            targets,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
        )


class DKDConfig(TermConfig):
    """Options of the ``dkd`` term."""

    alpha: float = Field(default=1.0, ge=0, description="TCKD weight")
    beta: float = Field(default=8.0, ge=0, description="NCKD weight")


@register_term("dkd")
class DKDTerm(Term[DKDConfig]):
    """``dkd``: :func:`dkd_loss` against the cached teacher logits (needs every label)."""

    config = DKDConfig
    needs = frozenset({"logits", "teacher_logits", "labels"})

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.logits is not None
        return dkd_loss(
            batch.logits,
            batch.teacher[TEACHER_LOGITS],
            batch.targets,
            alpha=self.options.alpha,
            beta=self.options.beta,
            temperature=self.options.temperature_at(epoch, total_epochs),
        )
