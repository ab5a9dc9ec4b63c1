"""COMODO: cross-modal distillation by matching similarity distributions over a teacher queue.

Chen et al. "COMODO: Cross-Modal Video-to-IMU Distillation for Efficient Egocentric Human
Activity Recognition", 2025 (arXiv:2503.07259). A frozen video teacher and an IMU student embed
the same clip; a FIFO queue holds past teacher clip embeddings. With ŝ, t̂, ê the L2-normalised
student, teacher and entry embeddings, both models describe the clip by how similar it is to
every entry, and the student matches the teacher's description:

    p_t = softmax(t̂ êᵀ / τ_t)   (constant),   p_s = softmax(ŝ êᵀ / τ_s),
    L = mean_b H(p_t, p_s) = mean_b [H(p_t) + KL(p_t ‖ p_s)].

The student embedding must already be projected to the teacher's dimension (the projection
head belongs to training, not to this loss). Only the student receives gradients.

Entries — a choice of this implementation: the entries are the queue followed by the CURRENT
teacher batch (``include_batch=True``, the default), one entry set shared by the whole batch as
in MoCo-style queues; SEED (Fang et al., ICLR 2021) likewise appends each sample's own teacher
embedding to the queue. Row b's own teacher embedding then has cosine 1 with t̂_b, so p_t
peaks on it and the loss also pulls ŝ_b towards t̂_b, not only towards the teacher's relative
geometry; it also makes a loss with an empty queue (the first steps of training) well defined. :class:`ComodoLoss` pushes the detached teacher batch
AFTER computing the loss, so no sample appears twice among its own entries.

Temperatures: the paper uses τ_t = 0.1, τ_s = 0.05 (the defaults here). A feasibility study on
our data found the reverse — a sharper teacher, τ_t = 0.05, τ_s = 0.1 — worked better; both are
plain arguments, so pick per dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgedistill.distill.crossmodal import EmbeddingTerm
from edgedistill.distill.infonce import EmbeddingQueue, check_embedding_pair
from edgedistill.distill.terms import TermConfig, register_term


def _check_temperature(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def comodo_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    queue: torch.Tensor,
    *,
    teacher_temperature: float,
    student_temperature: float,
    include_batch: bool = True,
) -> torch.Tensor:
    """COMODO cross-entropy between teacher and student similarity distributions.

    Args:
        student_emb: [B, D] projected student embeddings (any scale: L2-normalised here).
        teacher_emb: [B, D] teacher embeddings of the same clips; treated as a constant.
        queue: [Q, D] past teacher embeddings (e.g. :meth:`EmbeddingQueue.tensor`); Q may be 0
            when ``include_batch``. L2-normalised here and treated as a constant.
        teacher_temperature: τ_t > 0 of the teacher distribution p_t.
        student_temperature: τ_s > 0 of the student distribution p_s.
        include_batch: Append the current teacher batch to the entries, giving [Q + B] entries
            (see the module docstring); otherwise the entries are the queue alone.

    Returns:
        Scalar tensor: mean_b −Σ_k p_t[b, k] · log p_s[b, k]. Its minimum over the student is
        the teacher entropy mean_b H(p_t), reached when p_s = p_t.
    """
    _check_temperature("teacher_temperature", teacher_temperature)
    _check_temperature("student_temperature", student_temperature)
    check_embedding_pair(student_emb, teacher_emb, "COMODO")
    if queue.dim() != 2:
        raise ValueError(f"queue must be 2-D [Q, D], got shape {tuple(queue.shape)}")
    if queue.shape[1] != teacher_emb.shape[1]:
        raise ValueError(
            f"queue has dimension {queue.shape[1]}, embeddings have {teacher_emb.shape[1]}"
        )
    s = F.normalize(student_emb, dim=-1)
    t = F.normalize(teacher_emb.detach().to(s), dim=-1)
    entries = F.normalize(queue.detach().to(s), dim=-1)
    if include_batch:
        entries = torch.cat([entries, t])  # [Q + B, D]
    if entries.shape[0] == 0:
        raise ValueError("COMODO needs at least one queue entry when include_batch is False")
    p_teacher = F.softmax(t @ entries.T / teacher_temperature, dim=-1)  # [B, E], constant
    log_p_student = F.log_softmax(s @ entries.T / student_temperature, dim=-1)  # [B, E]
    return -(p_teacher * log_p_student).sum(dim=-1).mean()


class ComodoLoss(nn.Module):
    """Module form of :func:`comodo_loss` owning the FIFO queue of teacher embeddings.

    ``forward(student_emb [B, dim], teacher_emb [B, dim])`` computes the loss against the queue
    (plus the current teacher batch when ``include_batch``; with an empty queue, against the
    current teacher batch alone whatever ``include_batch`` says), THEN pushes the detached
    teacher batch. The queue (``self.queue``, an :class:`EmbeddingQueue`) is made of buffers, so
    it follows ``.to(device)`` and is saved and restored by ``state_dict`` (resume).

    Args:
        dim: Embedding dimension D (the teacher's; the student is projected to it).
        queue_size: Number of past teacher embeddings kept.
        teacher_temperature: τ_t; paper default 0.1 (0.05 worked better on our data).
        student_temperature: τ_s; paper default 0.05 (0.1 worked better on our data).
        include_batch: See :func:`comodo_loss`.
    """

    def __init__(
        self,
        dim: int,
        queue_size: int,
        teacher_temperature: float = 0.1,
        student_temperature: float = 0.05,
        *,
        include_batch: bool = True,
    ) -> None:
        super().__init__()
        _check_temperature("teacher_temperature", teacher_temperature)
        _check_temperature("student_temperature", student_temperature)
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.include_batch = include_batch
        self.queue = EmbeddingQueue(dim, queue_size)

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        empty = len(self.queue) == 0
        loss = comodo_loss(
            student_emb,
            teacher_emb,
            self.queue.tensor(),
            teacher_temperature=self.teacher_temperature,
            student_temperature=self.student_temperature,
            include_batch=self.include_batch or empty,
        )
        self.queue.push(teacher_emb)
        return loss

    def extra_repr(self) -> str:
        return (
            f"teacher_temperature={self.teacher_temperature}, "
            f"student_temperature={self.student_temperature}, include_batch={self.include_batch}"
        )


class ComodoConfig(TermConfig):
    """Options of the ``comodo`` term (``temperature`` is the teacher's)."""

    queue_size: int = Field(default=4096, ge=1, description="queue of teacher embeddings")
    student_temperature: float = Field(default=0.05, gt=0, description="the student's temperature")


@register_term("comodo")
class ComodoTerm(EmbeddingTerm[ComodoConfig]):
    """``comodo``: :class:`ComodoLoss` on the projected student features."""

    config = ComodoConfig

    def embedding_loss(self, teacher_dim: int) -> nn.Module:
        return ComodoLoss(
            teacher_dim,
            self.options.queue_size,
            teacher_temperature=self.options.temperature,
            student_temperature=self.options.student_temperature,
        )
