"""Data-parallel training with ``torchrun`` (PyTorch DDP; gloo on CPU, nccl on GPU).

The trainer does not change shape under DDP: every process sees the same data order (the
order generator is seeded identically), takes every ``world_size``-th row of each global
batch, and DDP averages the gradients, so with equal shards a step equals the one-process
step on the whole batch (up to float summation order). Batch-norm statistics are per process
(``SyncBatchNorm`` needs a GPU), which is the one source of difference on CPU.

Process 0 alone writes checkpoints, logs and stage outputs; the other processes read the same
checkpoint to resume and the same teacher cache (process 0 fills it, the others wait at a
barrier and memory-map it).

Launch::

    torchrun --nproc_per_node 2 -m edgedistill.cli.app distill students/fashion_mnist.yaml
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DataParallelContext:
    """Where this process stands in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DataParallelContext:
        """The context of the initialised default process group, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: :class:`TrainingForward`, DDP-wrapped if needed."""
        runner: nn.Module = TrainingForward(model)
        if self.world_size == 1:
            return runner
        # Multi-exit students leave their auxiliary heads unused in a plain forward.
        unused = hasattr(model, "forward_exits")
        return nn.parallel.DistributedDataParallel(runner, find_unused_parameters=unused)

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (every ``world_size``-th, from ``rank``)."""
        return rows if self.world_size == 1 else rows[self.rank :: self.world_size]

    def mean(self, value: float) -> float:
        """Mean of a number over the processes (for logged losses)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process (pickled between our own processes only)."""
        if self.world_size == 1:
            return obj
        box: list[Any] = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def barrier(self) -> None:
        """Wait for every process (no-op for one process)."""
        if self.world_size > 1:
            dist.barrier()

    def main_first(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0, then on the others (e.g. fill a cache, then read it)."""
        if self.is_main:
            result = work()
            self.barrier()
            return result
        self.barrier()
        return work()


class TrainingForward(nn.Module):
    """One forward entry point for every output a loss reads, so DDP sees each call.

    DDP synchronises gradients for what passes through its ``forward``; calling
    ``model.forward_intermediates`` directly would bypass it. ``outputs`` selects the method:
    "logits" (``forward``), "features" (``forward_features``), "intermediates" (``forward_intermediates``), "exits"
    (``forward_exits``), "exit_features" (``forward_exit_features``), "exits_and_features"
    (``forward_exits_and_features``).
    """

    METHODS: ClassVar[dict[str, str]] = {
        "logits": "forward",
        "features": "forward_features",
        "intermediates": "forward_intermediates",
        "exits": "forward_exits",
        "exit_features": "forward_exit_features",
        "exits_and_features": "forward_exits_and_features",
    }

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, outputs: str = "logits") -> Any:
        try:
            method = getattr(self.model, self.METHODS[outputs])
        except KeyError:
            raise ValueError(
                f"outputs must be one of {sorted(self.METHODS)}, got {outputs!r}"
            ) from None
        except AttributeError:
            raise ValueError(
                f"{type(self.model).__name__} has no {self.METHODS[outputs]}() "
                f"(needed for '{outputs}')"
            ) from None
        return method(x)


def init_from_environment() -> DataParallelContext:
    """Join the process group ``torchrun`` describes in the environment, if any.

    ``WORLD_SIZE`` > 1 starts the default group (nccl when CUDA is available, else gloo);
    otherwise nothing happens and a single-process context is returned.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return DataParallelContext.current()


def shutdown() -> None:
    """Leave the process group cleanly: wait for every process, then destroy the group.

    Without it a process that finishes first (e.g. when every stage is skipped) can exit while
    another is still inside a gloo collective, and the C++ runtime aborts ("terminate called
    without an active exception"; seen in about 1 of 3 launches of an all-skipped run).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
