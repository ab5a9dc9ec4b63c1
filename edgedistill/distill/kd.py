"""Hinton logit distillation.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015
(arXiv:1503.02531). The student matches the teacher's class distribution softened by a
temperature T; the loss is scaled by T² so its gradients keep the same magnitude as T changes:

    L_KD = T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) ), averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.distill.terms import TEACHER_LOGITS, Term, TermBatch, TermConfig, register_term


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Hinton KD loss.

    Args:
        student_logits: [B, K] raw student scores.
        teacher_logits: [B, K] raw teacher scores; treated as a constant (no gradient).
        temperature: T > 0; larger values soften both distributions.

    Returns:
        Scalar tensor: T² · mean_b KL(p_t ‖ p_s). Zero when the logits are equal.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    return kl.mean() * temperature**2


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss` with a fixed temperature."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, temperature=self.temperature)


@register_term("kd")
class KDTerm(Term[TermConfig]):
    """``kd``: :func:`kd_loss` against the cached teacher logits, at the scheduled temperature."""

    needs = frozenset({"logits", "teacher_logits"})

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.logits is not None
        temperature = self.options.temperature_at(epoch, total_epochs)
        return kd_loss(batch.logits, batch.teacher[TEACHER_LOGITS], temperature=temperature)
