"""The student trainer: cross-entropy + logit KD from cached teacher outputs, resumable.

Every epoch ends with an atomic checkpoint (model, optimiser, scheduler, data order generator
and the global torch RNG). A run killed at any point and started again resumes from the last
finished epoch and, on CPU, ends with the same weights as an uninterrupted run: the data order
of epoch e depends only on the generator state saved after epoch e-1.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.artifacts import (
    atomic_save,
    atomic_write_text,
    discard_checkpoint,
    resume_checkpoint,
    warn_stderr,
)
from edgedistill.distill.ddp import DataParallelContext
from edgedistill.distill.objective import LossTermSpec, Objective
from edgedistill.faults import maybe_die

SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and loss weights of one training run.

    Schedules (stepped per batch): ``onecycle`` (warm-up to ``lr`` then anneal), ``cosine``
    (from ``lr`` to 0), ``constant``. ``grad_clip`` clips the global gradient norm.
    ``early_stopping_patience`` stops after that many epochs without a held-out improvement
    of more than ``min_delta`` points and restores the best epoch's weights.

    The objective is ``ce_weight · CE(z_s, y) + kd_weight · KD(z_s, z_t; T)``, or, when
    ``terms`` is given, the sum of those weighted, scheduled terms
    (:class:`~edgedistill.distill.objective.LossTermSpec`: ce, kd, dkd, pskd).
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    ce_weight: float = 1.0
    kd_weight: float = 0.0
    temperature: float = 4.0
    seed: int = 0
    terms: tuple[LossTermSpec, ...] = ()
    schedule: str = "onecycle"
    grad_clip: float | None = None
    early_stopping_patience: int | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists and plain dicts (e.g. settings read back from JSON) as terms.
        terms = tuple(t if isinstance(t, LossTermSpec) else LossTermSpec(**t) for t in self.terms)
        object.__setattr__(self, "terms", terms)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(
                f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}"
            )

    def loss_terms(self) -> tuple[LossTermSpec, ...]:
        """The effective terms (``terms``, else CE + KD from the simple weights)."""
        if self.terms:
            return self.terms
        return (
            LossTermSpec("ce", self.ce_weight),
            LossTermSpec("kd", self.kd_weight, temperature=self.temperature),
        )


@dataclass
class TrainResult:
    """Per-epoch history and whether the run resumed from a checkpoint."""

    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    best_epoch: int | None = None
    stopped_early: bool = False


ProgressFn = Callable[[int, int, str], None]
"""Called as ``progress(step, total_steps, description)`` after each batch."""


def train_student(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    settings: TrainSettings,
    *,
    teacher_logits: np.ndarray | None = None,
    teacher_features: dict[str, np.ndarray] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    checkpoint_path: Path | None = None,
    fingerprint: str = "",
    log_csv: Path | None = None,
    progress: ProgressFn | None = None,
    stop_after_epoch: int | None = None,
    tensorboard_dir: Path | None = None,
    warn: Callable[[str], None] = warn_stderr,
) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: The student; left in eval mode with the weights of the last epoch.
        x_train: [N, C, ...] normalised inputs.
        y_train: [N] int64 labels.
        settings: Optimiser, schedule and loss weights.
        teacher_logits: [N, K] cached teacher outputs aligned with ``x_train`` (needed when
            ``settings.kd_weight > 0``); a memory-mapped array is fine.
        teacher_features: tap name -> [N, ...] cached teacher features (FitNets hints).
        evaluate: Returns held-out accuracy (%) of the model; logged each epoch.
        checkpoint_path: Where the per-epoch checkpoint lives; resumed from when its
            ``fingerprint`` matches.
        fingerprint: Identifies the run's inputs, so a stale checkpoint is never resumed.
        log_csv: Per-epoch metrics as CSV, rewritten atomically each epoch.
        progress: Progress callback.
        stop_after_epoch: Return early after this epoch (used by tests to simulate a crash).
        tensorboard_dir: Also write per-epoch scalars for TensorBoard here (when the
            ``tensorboard`` package is installed; silently skipped otherwise).
        warn: Receives the one-line warning when the checkpoint is corrupt, truncated,
            refused by ``weights_only`` or does not fit this model: it is then moved aside
            (``checkpoint.pt.corrupt-<time>``) and training starts from scratch.
    """
    if settings.early_stopping_patience is not None and evaluate is None:
        raise ValueError("early stopping needs an evaluate function")
    num_classes = teacher_logits.shape[1] if teacher_logits is not None else int(y_train.max()) + 1
    objective = Objective(settings.loss_terms(), num_samples=len(y_train), num_classes=num_classes)
    if objective.needs_teacher and teacher_logits is None:
        raise ValueError("kd_weight > 0 (or a kd/dkd term) needs teacher_logits")
    if teacher_logits is not None and len(teacher_logits) != len(y_train):
        raise ValueError(
            f"teacher logits cover {len(teacher_logits)} samples, data has {len(y_train)}"
        )
    teacher_features = dict(teacher_features or {})
    missing = [tap for tap in objective.teacher_taps if tap not in teacher_features]
    if missing:
        raise ValueError(f"loss terms need cached teacher features {missing}")
    n = len(y_train)
    steps_per_epoch = (n + settings.batch_size - 1) // settings.batch_size
    total = settings.epochs * steps_per_epoch
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    extra_params = objective.setup(model, x_train[:2], teacher_features)
    ddp = DataParallelContext.current()
    trained = ddp.wrap(model)
    if ddp.world_size > 1 and objective.memory is not None:
        raise ValueError("pskd keeps per-sample memory and is not supported under DDP yet")
    optimizer = torch.optim.SGD(
        [*model.parameters(), *extra_params],
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.momentum > 0,
        weight_decay=settings.weight_decay,
    )
    scheduler = _scheduler(optimizer, settings, total)
    result = TrainResult()
    start_epoch = 0
    best: dict[str, Any] = {"score": None, "epoch": None, "state": None, "bad_epochs": 0}
    state = None
    if ddp.is_main and checkpoint_path is not None:
        state = resume_checkpoint(checkpoint_path, warn)  # unreadable: set aside, None
    state = ddp.broadcast(state)  # every process resumes from rank 0's checkpoint
    if (
        state is not None
        and state.get("fingerprint") == fingerprint
        and state.get("settings") == asdict(settings)
    ):
        assert checkpoint_path is not None
        stateful = _Stateful(model, optimizer, scheduler, generator, objective)
        pristine = stateful.snapshot()
        try:
            stateful.restore(state)
            best = dict(state.get("best", best))
            start_epoch = int(state["epoch"])
            result.history = list(state["history"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            # From another model (or damaged inside a readable file): start from scratch.
            stateful.restore(pristine)
            best = {"score": None, "epoch": None, "state": None, "bad_epochs": 0}
            start_epoch, result.history = 0, []
            if ddp.is_main:
                why = _first_line(exc)
                discard_checkpoint(
                    checkpoint_path,
                    f"checkpoint {checkpoint_path}: does not fit this model ({why})",
                    warn,
                )
        result.resumed_from_epoch = start_epoch
        if best.get("stopped"):
            start_epoch = settings.epochs  # it had already stopped early: train no more
    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        objective.train(True)
        order = torch.randperm(n, generator=generator)
        totals: dict[str, float] = {"loss": 0.0}
        epoch_lr = float(scheduler.get_last_lr()[0])  # LR at the start of the epoch
        for step, begin in enumerate(range(0, n, settings.batch_size)):
            # Under DDP each process takes every world_size-th row of the global batch.
            idx = ddp.shard(order[begin : begin + settings.batch_size])
            teacher: dict[str, torch.Tensor] = {}
            if objective.needs_teacher and teacher_logits is not None:
                rows = np.asarray(teacher_logits[idx.numpy()], dtype=np.float32)
                teacher["logits"] = torch.from_numpy(rows)
            for tap in objective.teacher_taps:
                hint = np.asarray(teacher_features[tap][idx.numpy()], dtype=np.float32)
                teacher[tap] = torch.from_numpy(hint)
            loss, parts = objective.batch_loss(
                trained, x_train[idx], y_train[idx], idx, teacher, epoch, settings.epochs
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(
                    [*model.parameters(), *extra_params], settings.grad_clip
                )
            optimizer.step()
            scheduler.step()
            rows_in_batch = min(settings.batch_size, n - begin)  # global, for the epoch means
            totals["loss"] += ddp.mean(loss.item()) * rows_in_batch
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + ddp.mean(value) * rows_in_batch
            if progress is not None:
                progress(
                    epoch * steps_per_epoch + step + 1,
                    total,
                    f"epoch {epoch + 1}/{settings.epochs} loss {loss.item():.3f}",
                )
            maybe_die("train_batch", epoch * steps_per_epoch + step + 1)  # tests only
        row: dict[str, float] = {"epoch": epoch + 1, **{k: v / n for k, v in totals.items()}}
        row["lr"] = epoch_lr
        if evaluate is not None:
            row["val_top1"] = evaluate(model)
        result.history.append(row)
        if ddp.is_main:
            _log_tensorboard(tensorboard_dir, row)
        if settings.early_stopping_patience is not None:
            score = row["val_top1"]
            if best["score"] is None or score > best["score"] + settings.min_delta:
                best = {
                    "score": score,
                    "epoch": epoch + 1,
                    "bad_epochs": 0,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
            else:
                best["bad_epochs"] += 1
            best["stopped"] = best["bad_epochs"] >= settings.early_stopping_patience
        if log_csv is not None and ddp.is_main:
            _write_history(log_csv, result.history)
        if checkpoint_path is not None and ddp.is_main:
            state = {
                "fingerprint": fingerprint,
                "settings": asdict(settings),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": result.history,
                "objective": objective.state(),
                "best": best,
            }
            atomic_save(checkpoint_path, functools.partial(save_checkpoint, state))
        maybe_die("train_epoch", epoch + 1)  # tests only
        objective.train(False)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
        if best.get("stopped"):
            break
    if best.get("state") is not None and (
        best.get("stopped") or len(result.history) == settings.epochs
    ):
        model.load_state_dict(best["state"])
        result.best_epoch = best["epoch"]
        result.stopped_early = bool(best.get("stopped"))
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


class _Stateful:
    """Everything a checkpoint restores, so a failed resume can be undone exactly."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        generator: torch.Generator,
        objective: Objective,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generator, self.objective = generator, objective

    def snapshot(self) -> dict[str, Any]:
        """The current state, in the checkpoint's layout (deep copies)."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "objective": self.objective.state(),
            }
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's (or a snapshot's) state; raises when it does not fit."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.objective.load_state(state.get("objective", {}))


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception (torch's load errors span many)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and text.endswith(":"):
        text = f"{text} {lines[1]}"
    return text[:200]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a file object, so equal checkpoints are equal bytes.

    Given a path, torch.save names the zip archive's top folder after the file, and
    ``atomic_save`` writes to a randomly named temporary file: identical checkpoints of two
    runs differed byte-wise. Through a file object the folder is always ``archive``.
    """
    with open(path, "wb") as fh:
        torch.save(state, fh)
    maybe_die("checkpoint_write", state.get("epoch"))  # tests only: a torn write


def _scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=total_steps, pct_start=0.15
        )
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _log_tensorboard(folder: Path | None, row: dict[str, float]) -> None:
    if folder is None:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return
    with SummaryWriter(str(folder)) as writer:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, int(row["epoch"]))


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())
