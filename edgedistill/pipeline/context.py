"""The run directory, its manifests, skip/resume, and what every stage shares (the task).

Layout of a run directory::

    RUN/
      cache/                 data and teacher outputs (memory-mapped .npy, keyed by hashes)
      pretrain/ distill/  prune/  export/  quantize/  verify/  profile/  bundle/  report/
        manifest.json        written last: config, input hashes, outputs + sha256, metrics,
                             timings, library versions
      summary.json           one row per model: params, MACs, size, accuracy, latency

A stage is skipped when its manifest exists, its fingerprint (a hash of the stage's config
and of every upstream output it reads) is unchanged, and all its outputs still have the
recorded sha256. A stage interrupted half-way has no manifest and runs again; training
stages resume from their per-epoch checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from edgedistill.artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    no_space,
    read_json,
    sha256_file,
    sha256_json,
)
from edgedistill.bench.env import environment
from edgedistill.config import Recipe
from edgedistill.distill.ddp import DataParallelContext
from edgedistill.errors import EdgeDistillError, RecipeError, StageError
from edgedistill.tasks import InputSpec, Task
from edgedistill.tasks.sources import build_task
from edgedistill.teachers import FrozenTeacher, TeacherCard, load_teacher

MANIFEST = "manifest.json"
TRAINING_STAGES = frozenset({"pretrain", "distill", "prune"})  # every DDP process joins these


@dataclass
class StageOutcome:
    """What a stage body returns: its output files (relative to the stage dir) and metrics."""

    outputs: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


class RunContext:
    """Everything the stages share: recipe, run directory, console and lazily loaded inputs.

    Args:
        recipe: The validated recipe.
        out_dir: Run directory (created).
        console: Where progress and results are printed.
        force: Re-run stages even when their inputs are unchanged.
        version: The package version, part of every stage fingerprint.
        allow_unverified_teacher: Load a teacher card without ``sha256`` (research use; a
            warning is printed and the summary says ``teacher_verified: false``). A card
            whose hash does not match its file is refused regardless.
    """

    def __init__(
        self,
        recipe: Recipe,
        out_dir: Path,
        *,
        console: Console | None = None,
        force: bool = False,
        version: str = "0",
        allow_unverified_teacher: bool = False,
    ) -> None:
        self.recipe = recipe
        self.allow_unverified_teacher = allow_unverified_teacher
        self.version = version
        self.out = prepare_run_folder(out_dir)
        self.console = console or Console(stderr=True)
        self.force = force
        self.manifests: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.skipped: list[str] = []

    # ---- shared inputs -------------------------------------------------------------------
    @cached_property
    def task(self) -> Task:
        """The recipe's task (data source -> splits, labels, input contract)."""
        with self.console.status(f"loading data ({self.recipe.data.source})"):
            task = build_task(self.recipe.data, cache_dir=self.out / "cache", seed=self.recipe.seed)
        self.console.print(f"[dim]data: {task.summary()}[/]")
        return task

    @property
    def data_sha256(self) -> str:
        return self.task.fingerprint

    @property
    def has_teacher(self) -> bool:
        """Whether the run has a teacher over the task's own input (a card)."""
        return self.recipe.teacher is not None and self.recipe.teacher.card is not None

    @cached_property
    def teacher_and_card(self) -> tuple[FrozenTeacher, TeacherCard]:
        """The run's teacher (with its ``teacher.adapt`` head when the recipe asks for one)."""
        teacher, card = self.base_teacher_and_card
        cfg = self.recipe.teacher
        if cfg is not None and cfg.adapt is not None:
            teacher = self._adapted(teacher, card)
        return teacher, card

    @cached_property
    def base_teacher_and_card(self) -> tuple[FrozenTeacher, TeacherCard]:
        """The card's teacher as loaded (weights hash checked), before any adaptation."""
        cfg = self.recipe.teacher
        if cfg is None or cfg.card is None:
            raise StageError("this recipe has no teacher card (teacher.card)")
        teacher, card = load_teacher(cfg.card, allow_unverified=self.allow_unverified_teacher)
        if not card.verified:
            self.console.print(
                f"[yellow]warning:[/] teacher card {escape(str(cfg.card))} has no sha256: its "
                f"weights {escape(str(card.weights))} (sha256 {teacher.weights_sha256}) are used "
                "unverified (--allow-unverified-teacher); the summary records "
                "teacher_verified: false",
                highlight=False,
                soft_wrap=True,
            )
        return teacher, card

    def _adapted(self, teacher: FrozenTeacher, card: TeacherCard) -> FrozenTeacher:
        """The teacher with a head for this task's labels, trained on its frozen features.

        Cached in ``cache/`` (features memory-mapped, head as safetensors), so a second run
        neither recomputes features nor retrains the head.
        """
        from edgedistill.teachers.adapt import adapt_teacher

        cfg = self.recipe.teacher.adapt if self.recipe.teacher is not None else None
        assert cfg is not None
        model = teacher.model
        if not hasattr(model, "forward_features"):
            raise StageError(
                f"teacher.adapt: teacher {card.name} ({card.arch}) has no forward_features(); "
                "adaptation needs a feature extractor"
            )
        task, spec = self.task, self.teacher_input
        labelled = task.labelled
        return adapt_teacher(
            teacher,
            features_fn=_ForwardFeatures(model),
            x_train=task.x_train[labelled],
            y_train=task.y_train[labelled],
            num_classes=task.num_classes,
            cache_dir=self.out / "cache",
            data_key=self.data_sha256,
            method=cfg.method,
            transform=spec.prepare,
            transform_key={"normalization": spec.normalization()},
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            seed=self.recipe.seed,
            blocks=cfg.blocks,
            unfreeze_blocks=cfg.unfreeze_blocks,
            finetune_epochs=cfg.finetune_epochs,
            finetune_lr=cfg.finetune_lr,
        )

    @cached_property
    def teacher_verified(self) -> bool | None:
        """Whether the teacher card pins its weights' sha256 (None: no teacher card).

        A loaded teacher always matched a pinned hash; False only with
        ``allow_unverified_teacher`` and a card without one.
        """
        cfg = self.recipe.teacher
        if cfg is None or cfg.card is None:
            return None
        if "base_teacher_and_card" in self.__dict__:
            return self.base_teacher_and_card[1].verified
        card = TeacherCard.load(cfg.card, allow_unverified=self.allow_unverified_teacher)
        return card.verified

    @property
    def teacher(self) -> FrozenTeacher:
        return self.teacher_and_card[0]

    @property
    def card(self) -> TeacherCard:
        return self.teacher_and_card[1]

    @cached_property
    def teacher_input(self) -> InputSpec:
        """The task's input contract with the teacher's own standardisation from its card
        (``input.normalization.mean/std``), else the student's."""
        cfg = self.recipe.teacher
        if cfg is None or cfg.card is None:
            return self.task.input
        # Read from the card file, not self.card: adapting the teacher needs this spec while
        # the teacher itself is still being built.
        card_raw = TeacherCard.load(cfg.card, allow_unverified=self.allow_unverified_teacher).raw
        spec = (card_raw.get("input") or {}).get("normalization") or {}
        if "mean" in spec and "std" in spec and self.task.input.mean is not None:
            return self.task.input.with_normalization(tuple(spec["mean"]), tuple(spec["std"]))
        return self.task.input

    @property
    def x_test(self) -> torch.Tensor:
        """Model inputs of the held-out split."""
        return self.task.test_inputs

    @property
    def y_test(self) -> Any:
        return self.task.y_test

    def threads(self) -> int:
        return self.recipe.threads or max(1, torch.get_num_threads())

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def output(self, stage: str, name: str) -> Path:
        """Path of an upstream output; fails clearly if that stage has not produced it."""
        manifest = self.manifests.get(stage)
        if manifest is None or name not in manifest["outputs"]:
            raise StageError(
                f"stage '{stage}' has no output '{name}'; run `edgedistill {stage}` first"
            )
        return self.stage_dir(stage) / name

    def output_hashes(self, *stages: str) -> dict[str, str]:
        """sha256 of every output of the given (finished) stages: inputs of a fingerprint."""
        hashes: dict[str, str] = {}
        for stage in stages:
            for name, digest in self.manifests[stage]["outputs"].items():
                hashes[f"{stage}/{name}"] = digest
        return hashes

    # ---- stage execution -----------------------------------------------------------------
    def run_stage(
        self,
        name: str,
        inputs: dict[str, Any],
        body: Callable[[Path, str], StageOutcome],
    ) -> dict[str, Any]:
        """Run ``body(stage_dir, fingerprint)`` unless an identical finished run exists.

        Under ``torchrun`` (DDP), rank 0 decides and writes everything. The other processes
        join the training stages (distill, prune) with a scratch folder for their copies of the
        outputs, skip the rest, and receive rank 0's manifest.
        """
        stage_dir = self.stage_dir(name)
        fingerprint = sha256_json({"stage": name, "inputs": inputs, "edgedistill": self.version})
        ddp = DataParallelContext.current()
        unchanged = ddp.broadcast(self._unchanged(stage_dir, fingerprint) if ddp.is_main else None)
        if unchanged is not None:
            self.manifests[name] = unchanged
            self.skipped.append(name)
            self.console.print(f"[dim]• {name:<9} unchanged, skipped[/]")
            return unchanged
        if not ddp.is_main:
            if name in TRAINING_STAGES:
                scratch = stage_dir / f".rank{ddp.rank}"
                scratch.mkdir(parents=True, exist_ok=True)
                try:
                    body(scratch, fingerprint)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            received: dict[str, Any] | None = ddp.broadcast(None)
            manifest = received or {}
            self.manifests[name] = manifest
            self.executed.append(name)
            return manifest
        executed = self._execute(name, inputs, body, stage_dir, fingerprint)
        ddp.broadcast(executed)
        return executed

    def _unchanged(self, stage_dir: Path, fingerprint: str) -> dict[str, Any] | None:
        """The manifest of an identical finished run whose outputs are intact, else None."""
        manifest_path = stage_dir / MANIFEST
        if self.force or not manifest_path.is_file():
            return None
        manifest = read_json(manifest_path)
        if manifest.get("fingerprint") == fingerprint and self._outputs_intact(stage_dir, manifest):
            return manifest
        return None

    def _execute(
        self,
        name: str,
        inputs: dict[str, Any],
        body: Callable[[Path, str], StageOutcome],
        stage_dir: Path,
        fingerprint: str,
    ) -> dict[str, Any]:
        manifest_path = stage_dir / MANIFEST
        ensure_writable(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if manifest_path.exists():
            manifest_path.unlink()  # an outdated manifest must not vouch for new outputs
        started = time.perf_counter()
        outcome = body(stage_dir, fingerprint)
        seconds = time.perf_counter() - started
        manifest: dict[str, Any] = {
            "stage": name,
            "fingerprint": fingerprint,
            "recipe": self.recipe.name,
            "inputs": inputs,
            "outputs": {out: sha256_file(stage_dir / out) for out in outcome.outputs},
            "metrics": outcome.metrics,
            "timings": {"seconds": round(seconds, 3)},
            "environment": environment(self.threads()),
        }
        atomic_write_json(manifest_path, manifest)
        self.manifests[name] = manifest
        self.executed.append(name)
        self.console.print(f"[green]✓[/] {name:<9} {seconds:6.1f} s  {_headline(outcome.metrics)}")
        return manifest

    @staticmethod
    def _outputs_intact(stage_dir: Path, manifest: dict[str, Any]) -> bool:
        for out, digest in manifest.get("outputs", {}).items():
            path = stage_dir / out
            if not path.is_file() or sha256_file(path) != digest:
                return False
        return True


# ---- the run folder: where it may be, whether it can be written ------------------------------
def prepare_run_folder(out_dir: Path) -> Path:
    """The run folder, resolved and created if missing.

    An existing folder that this process cannot write is accepted when it holds something: an
    unchanged re-run of a finished run made read-only writes nothing (the first stage that
    must write says so, :func:`ensure_writable`). An empty one is refused at once, since
    every stage will write to it.

    Raises:
        RecipeError: ``out_dir`` is a file, cannot be created, or is an empty folder this
            process may not write to (one line naming it and what to do).
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RecipeError(
            f"run folder {out} is a file, not a folder: choose another --out (or move the file)"
        )
    if not out.exists():
        try:
            out.mkdir(parents=True)
        except FileExistsError:  # a concurrent process made it (or a parent is a file)
            if not out.is_dir():
                raise RecipeError(
                    f"run folder {out} cannot be created (a parent is a file): choose another --out"
                ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise RecipeError(
                f"run folder {out} cannot be created ({reason}): choose a writable --out"
            ) from None
    elif not any(out.iterdir()):
        ensure_writable(out)
    return out


def ensure_writable(folder: Path) -> None:
    """Refuse, in one line, a folder (or the nearest existing parent it would be created in)
    that this process may not create files in.

    Uses ``os.access`` with the effective ids (so a root process passes wherever the kernel
    would let it write, and an ordinary user is refused on a ``chmod a-w`` folder or a
    read-only mount).

    Raises:
        RecipeError: the folder cannot be written.
    """
    target = Path(folder)
    while not target.exists() and target.parent != target:
        target = target.parent
    effective = os.access in os.supports_effective_ids
    if not os.access(target, os.W_OK | os.X_OK, effective_ids=effective):
        raise RecipeError(
            f"run folder {target} is not writable: make it writable (chmod u+w) or choose "
            "another --out"
        )


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless the file already holds exactly these bytes.

    An unchanged re-run must write nothing (a finished run folder may be read-only, and
    mtimes are what backup and sync tools go by).

    Returns:
        Whether the file was written.
    """
    try:
        if path.is_file() and path.read_bytes() == data:
            return False
    except OSError:
        pass  # unreadable: overwrite it
    ensure_writable(path.parent)
    atomic_write_bytes(path, data)
    return True


def write_json_if_changed(path: Path, obj: Any) -> bool:
    """:func:`write_if_changed` with the JSON text :func:`atomic_write_json` writes."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return write_if_changed(path, text.encode("utf-8"))


_NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def write_failure(exc: BaseException, where: Path) -> EdgeDistillError | None:
    """The one-line error for a failure to write in the run folder, or None for other errors.

    Args:
        exc: What a stage raised.
        where: The folder it was writing in (named when the error names no file).

    Returns:
        :class:`StageError` for a full disk or a file over the size limit (the run resumes
        once there is space), :class:`RecipeError` for a folder that may not be written.
    """
    full = no_space(exc)
    if full is not None:
        return StageError(
            f"cannot write {full.filename or where}: {full.strerror or 'no space'} (disk full "
            "or over the file-size limit): free space and run the same command again; finished "
            "stages are kept"
        )
    if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE_ERRNOS:
        return RecipeError(
            f"{exc.filename or where}: {exc.strerror}: fix its permissions (a run folder must "
            "be writable: or choose another --out)"
        )
    return None


class _ForwardFeatures(torch.nn.Module):
    """A module whose forward is ``model.forward_features`` (pooled features [B, D])."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.forward_features(x)  # type: ignore[operator]
        return out


def _headline(metrics: dict[str, Any]) -> str:
    if metrics.get("enabled") is False:
        return "(not in this recipe)"
    shown = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    ]
    return "  ".join(shown[:5])
