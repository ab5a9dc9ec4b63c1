"""InfoNCE (contrastive) distillation between student and teacher embeddings.

van den Oord, Li, Vinyals. "Representation Learning with Contrastive Predictive Coding", 2018
(arXiv:1807.03748). Used for cross-modal distillation into a frozen teacher's embedding space as
in IMU2CLIP (Moon et al., 2022, arXiv:2210.14395). With ŝ, t̂ the L2-normalised embeddings, the
positive for student row i is teacher row i; the other teacher rows (and an optional memory
queue of past teacher embeddings, as in MoCo) are the negatives:

    logits = [ŝ t̂ᵀ | ŝ n̂ᵀ] / τ,   L = mean_i CE(logits_i, i).

``symmetric=True`` averages with the teacher→student direction CE((ŝ t̂ᵀ)ᵀ / τ, i) as in CLIP
(in-batch only: the queue holds teacher embeddings, so it has no role in that direction).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgedistill.distill.crossmodal import EmbeddingTerm
from edgedistill.distill.terms import TermConfig, register_term


def _check_2d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")


def check_embedding_pair(student_emb: torch.Tensor, teacher_emb: torch.Tensor, loss: str) -> None:
    """Raise ValueError unless both are non-empty [B, D] tensors of one shape (row = pair)."""
    _check_2d("student_emb", student_emb)
    _check_2d("teacher_emb", teacher_emb)
    if student_emb.shape != teacher_emb.shape:
        raise ValueError(
            f"student embeddings {tuple(student_emb.shape)} and teacher embeddings "
            f"{tuple(teacher_emb.shape)} differ in shape (project the student first)"
        )
    if student_emb.shape[0] == 0:
        raise ValueError(f"{loss} needs a non-empty batch")


def info_nce_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    *,
    temperature: float = 0.07,
    negatives: torch.Tensor | None = None,
    symmetric: bool = False,
) -> torch.Tensor:
    """InfoNCE loss with in-batch negatives and an optional queue of extra negatives.

    Args:
        student_emb: [B, D] student embeddings (any scale: they are L2-normalised here).
        teacher_emb: [B, D] teacher embeddings; row i is the positive of student row i.
            Treated as a constant (no gradient).
        temperature: τ > 0 dividing the cosine similarities.
        negatives: optional [Q, D] extra negatives (e.g. :meth:`EmbeddingQueue.tensor`);
            L2-normalised and treated as constants. Only used in the student→teacher direction.
        symmetric: also compute the teacher→student direction (in-batch) and average the two.

    Returns:
        Scalar tensor: mean over the batch of the cross-entropy with targets ``arange(B)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_embedding_pair(student_emb, teacher_emb, "InfoNCE")
    s = F.normalize(student_emb, dim=-1)
    t = F.normalize(teacher_emb.detach(), dim=-1)
    in_batch = s @ t.T / temperature  # [B, B], positives on the diagonal
    logits = in_batch
    if negatives is not None:
        _check_2d("negatives", negatives)
        if negatives.shape[1] != s.shape[1]:
            raise ValueError(
                f"negatives have dimension {negatives.shape[1]}, embeddings have {s.shape[1]}"
            )
        n = F.normalize(negatives.detach().to(s), dim=-1)
        logits = torch.cat([in_batch, s @ n.T / temperature], dim=1)  # [B, B + Q]
    targets = torch.arange(s.shape[0], device=s.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(in_batch.T, targets))
    return loss


class EmbeddingQueue(nn.Module):
    """FIFO memory queue of detached, L2-normalised embeddings.

    Stored as buffers (``embeddings`` [size, dim], ``ptr``, ``count``), so the queue travels
    with ``.to(device)`` and is saved/restored by ``state_dict``. Note that ``len(queue)`` is
    the number of stored rows, so an empty queue is falsy: test ``queue is not None``.
    """

    embeddings: torch.Tensor
    ptr: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got {dim}")
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        self.dim = dim
        self.size = size
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled rows

    def __len__(self) -> int:
        return int(self.count.item())

    @property
    def is_full(self) -> bool:
        """True once ``size`` embeddings have been pushed."""
        return len(self) == self.size

    @torch.no_grad()
    def push(self, emb: torch.Tensor) -> None:
        """Append a [N, dim] batch, overwriting the oldest rows first (any N ≥ 0)."""
        _check_2d("emb", emb)
        if emb.shape[1] != self.dim:
            raise ValueError(
                f"queue has dimension {self.dim}, got embeddings of shape {tuple(emb.shape)}"
            )
        emb = F.normalize(emb.detach(), dim=-1).to(self.embeddings)
        n = emb.shape[0]
        if n == 0:
            return
        if n >= self.size:  # only the newest `size` rows survive
            self.embeddings.copy_(emb[-self.size :])
            self.ptr.zero_()
            self.count.fill_(self.size)
            return
        start = int(self.ptr.item())
        first = min(n, self.size - start)
        self.embeddings[start : start + first] = emb[:first]
        self.embeddings[: n - first] = emb[first:]  # wrap-around part (may be empty)
        self.ptr.fill_((start + n) % self.size)
        self.count.fill_(min(self.size, len(self) + n))

    def tensor(self) -> torch.Tensor:
        """The filled part, [len(self), dim], oldest first (a copy, detached)."""
        if not self.is_full:
            return self.embeddings[: len(self)].clone()
        start = int(self.ptr.item())
        return torch.cat([self.embeddings[start:], self.embeddings[:start]])


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce_loss`, optionally with a queue of past teacher embeddings.

    With ``queue_size > 0`` the queued teacher embeddings from previous calls serve as extra
    negatives; the current teacher batch is pushed AFTER the loss is computed, so a sample is
    never its own negative. The queue (``self.queue``, an :class:`EmbeddingQueue`) is created
    at once when ``dim`` is given, otherwise from the first batch or from a loaded state_dict.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        queue_size: int = 0,
        *,
        symmetric: bool = False,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self.temperature = temperature
        self.queue_size = queue_size
        self.symmetric = symmetric
        self.queue: EmbeddingQueue | None = None
        if queue_size > 0 and dim is not None:
            self.queue = EmbeddingQueue(dim, queue_size)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "queue.embeddings"
        if self.queue is None and self.queue_size > 0 and key in state_dict:
            self.queue = EmbeddingQueue(state_dict[key].shape[1], self.queue_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        if self.queue_size > 0 and self.queue is None:
            _check_2d("teacher_emb", teacher_emb)
            self.queue = EmbeddingQueue(teacher_emb.shape[1], self.queue_size)
            self.queue.to(teacher_emb.device)
        negatives = None
        if self.queue is not None and len(self.queue) > 0:
            negatives = self.queue.tensor()
        loss = info_nce_loss(
            student_emb,
            teacher_emb,
            temperature=self.temperature,
            negatives=negatives,
            symmetric=self.symmetric,
        )
        if self.queue is not None:
            self.queue.push(teacher_emb)
        return loss


class InfoNCEConfig(TermConfig):
    """Options of the ``infonce`` term."""

    queue_size: int = Field(default=4096, ge=0, description="extra negatives (0 = in-batch)")


@register_term("infonce")
class InfoNCETerm(EmbeddingTerm[InfoNCEConfig]):
    """``infonce``: :class:`InfoNCELoss` on the projected student features."""

    config = InfoNCEConfig

    def embedding_loss(self, teacher_dim: int) -> nn.Module:
        return InfoNCELoss(self.options.temperature, self.options.queue_size, dim=teacher_dim)
