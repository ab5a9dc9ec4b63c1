"""Progressive Self-Knowledge Distillation (PS-KD).

Kim, Ji, Yoon, Hwang. "Self-Knowledge Distillation with Progressive Refinement of Targets",
ICCV 2021 (arXiv:2006.12000). The model is its own teacher: the target of a sample mixes its
one-hot label with the model's own softmax prediction for that sample from the previous epoch,
with a weight growing linearly over training (official code, lgcnsai/PS-KD-Pytorch):

    α_t = α_T · (epoch + 1) / total_epochs          (epoch counted from 0)
    y_soft = (1 − α_t) · onehot(y) + α_t · p_prev
    L = mean_b −Σ_k y_soft[b, k] · log softmax(z_b)_k

First epoch: the official code writes the one-hot labels into the memory at epoch 0, so the
epoch-0 target is the plain label although α_0 = α_T / total_epochs > 0. :class:`PredictionMemory`
starts uniform instead; to reproduce the official behaviour pass ``alpha=0`` at epoch 0 (then the
memory content does not matter and the loss is plain cross-entropy). The memory is updated with
the softmax of the training forward pass of each batch (detached), as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from edgedistill.distill.terms import Term, TermBatch, TermConfig, TermContext, register_term


def pskd_alpha(epoch: int, total_epochs: int, *, alpha_T: float = 0.8) -> float:
    """Weight of the previous predictions at ``epoch`` (0-based): α_T · (epoch + 1) / total."""
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
    if not 0 <= epoch < total_epochs:
        raise ValueError(f"epoch must be in [0, {total_epochs}), got {epoch}")
    if not 0.0 <= alpha_T <= 1.0:
        raise ValueError(f"alpha_T must be in [0, 1], got {alpha_T}")
    return alpha_T * (epoch + 1) / total_epochs


def pskd_loss(
    logits: torch.Tensor, targets: torch.Tensor, prev_probs: torch.Tensor, *, alpha: float
) -> torch.Tensor:
    """Cross-entropy against labels softened by the model's previous-epoch predictions.

    Args:
        logits: [B, K] current raw scores of the model.
        targets: [B] integer class labels in [0, K).
        prev_probs: [B, K] the model's softmax predictions for these samples from the previous
            epoch (e.g. :meth:`PredictionMemory.get`); treated as a constant (no gradient).
        alpha: mixing weight α_t in [0, 1] (see :func:`pskd_alpha`); 0 gives plain CE.

    Returns:
        Scalar tensor: mean_b −Σ_k ((1 − α)·onehot + α·p_prev)[b, k] · log softmax(logits_b)_k.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [B, K], got shape {tuple(logits.shape)}")
    if prev_probs.shape != logits.shape:
        raise ValueError(
            f"prev_probs {tuple(prev_probs.shape)} and logits {tuple(logits.shape)} differ in shape"
        )
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    num_classes = logits.shape[1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes})")
    one_hot = F.one_hot(targets, num_classes).to(logits.dtype)
    soft = (1.0 - alpha) * one_hot + alpha * prev_probs.detach().to(logits)
    return -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


class PredictionMemory:
    """Per-sample class probabilities from the previous epoch, in RAM or on disk.

    Without ``path`` the table is a float32 tensor in RAM. With ``path`` it is a numpy ``.npy``
    memmap (``np.lib.format.open_memmap``) in float16, half the size of float32 (resolution about
    5e-4 near 1, ample for soft targets), so large datasets do not fill memory; an existing file
    of the same shape is re-opened (contents kept), otherwise a new one is created. Rows start
    uniform (1/K); see the module docstring for the first epoch.

    Args:
        num_samples: N, the size of the training set (indices are dataset indices).
        num_classes: K.
        path: optional file for the on-disk table.
    """

    def __init__(self, num_samples: int, num_classes: int, path: Path | None = None) -> None:
        if num_samples <= 0 or num_classes <= 0:
            raise ValueError(
                f"num_samples and num_classes must be > 0, got {num_samples}, {num_classes}"
            )
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.path = None if path is None else Path(path)
        self._ram: torch.Tensor | None = None
        self._disk: np.memmap | None = None
        shape = (num_samples, num_classes)
        if self.path is None:
            self._ram = torch.full(shape, 1.0 / num_classes, dtype=torch.float32)
        elif self.path.exists():
            disk = np.lib.format.open_memmap(self.path, mode="r+")
            if disk.shape != shape or disk.dtype != np.float16:
                raise ValueError(
                    f"{self.path} holds a {disk.dtype} table of shape {disk.shape}, "
                    f"expected float16 {shape}"
                )
            self._disk = disk
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            disk = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=shape)
            disk[:] = 1.0 / num_classes
            disk.flush()
            self._disk = disk

    def __len__(self) -> int:
        return self.num_samples

    def _index(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(indices).cpu()
        if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(f"indices must be a 1-D integer sequence, got {tuple(idx.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples})")
        return idx.long()

    def get(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """[B, K] float32 probabilities of the given samples (on ``indices``' device if a tensor)."""
        idx = self._index(indices)
        if self._ram is not None:
            out = self._ram[idx]
        elif self._disk is not None:
            out = torch.from_numpy(np.asarray(self._disk[idx.numpy()], dtype=np.float32))
        else:  # pragma: no cover - one of the two is always set
            raise RuntimeError("PredictionMemory has no storage")
        device = indices.device if isinstance(indices, torch.Tensor) else torch.device("cpu")
        return out.to(device)

    def update(self, indices: torch.Tensor | Sequence[int], probs: torch.Tensor) -> None:
        """Store [B, K] probabilities (detached, moved to CPU) for the given samples."""
        idx = self._index(indices)
        if probs.shape != (idx.numel(), self.num_classes):
            raise ValueError(
                f"probs must have shape ({idx.numel()}, {self.num_classes}), "
                f"got {tuple(probs.shape)}"
            )
        values = probs.detach().to("cpu", torch.float32)
        if self._ram is not None:
            self._ram[idx] = values
        elif self._disk is not None:
            self._disk[idx.numpy()] = values.numpy().astype(np.float16)

    def flush(self) -> None:
        """Write pending on-disk changes to the file (no-op in RAM)."""
        if self._disk is not None:
            self._disk.flush()


class PSKDConfig(TermConfig):
    """Options of the ``pskd`` term."""

    alpha_T: float = Field(default=0.8, ge=0, le=1, description="final mixing weight")


@register_term("pskd")
class PSKDTerm(Term[PSKDConfig]):
    """``pskd``: :func:`pskd_loss` against the model's own previous-epoch predictions, kept in
    a :class:`PredictionMemory` of the training set (checkpointed as ``pskd_memory``)."""

    config = PSKDConfig
    needs = frozenset({"logits", "labels"})

    def __init__(self, options: PSKDConfig, context: TermContext | None = None) -> None:
        super().__init__(options, context)
        ctx = self.context
        self.memory = PredictionMemory(ctx.num_samples, ctx.num_classes, ctx.memory_path)

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.logits is not None
        # Epoch 0 has no previous predictions: plain labels, as in the official code.
        alpha_T = self.options.alpha_T
        alpha = 0.0 if epoch == 0 else pskd_alpha(epoch, total_epochs, alpha_T=alpha_T)
        value = pskd_loss(batch.logits, batch.targets, self.memory.get(batch.indices), alpha=alpha)
        self.memory.update(batch.indices, F.softmax(batch.logits.detach(), dim=-1))
        return value

    def state(self) -> dict[str, torch.Tensor]:
        return {"pskd_memory": self.memory.get(torch.arange(len(self.memory)))}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if "pskd_memory" in state:
            probs = state["pskd_memory"]
            self.memory.update(torch.arange(probs.shape[0]), probs)
