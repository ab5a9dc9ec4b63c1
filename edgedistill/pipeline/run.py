"""The ordered list of stages and :func:`run_pipeline`, the one module importing every stage.

Every recipe, whatever its modality, runs through the same stages; a stage with nothing to do
for a recipe (``pretrain`` without a ``pretrain`` section, ``prune`` disabled) records that in
its manifest and costs nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from edgedistill.artifacts import remove_stale_temporaries
from edgedistill.config import Recipe
from edgedistill.distill.ddp import DataParallelContext
from edgedistill.errors import EdgeDistillError, RecipeError, StageError
from edgedistill.pipeline.context import RunContext, write_failure
from edgedistill.pipeline.stages.bundle import stage_bundle
from edgedistill.pipeline.stages.compress import stage_prune, stage_quantize
from edgedistill.pipeline.stages.distill import build_student, stage_distill
from edgedistill.pipeline.stages.export import stage_export
from edgedistill.pipeline.stages.pretrain import stage_pretrain
from edgedistill.pipeline.stages.profile import stage_profile
from edgedistill.pipeline.stages.report import stage_report
from edgedistill.pipeline.stages.verify import stage_verify

StageFn = Callable[[RunContext], dict[str, Any]]

PIPELINE: tuple[tuple[str, StageFn], ...] = (
    ("pretrain", stage_pretrain),
    ("distill", stage_distill),
    ("prune", stage_prune),
    ("export", stage_export),
    ("quantize", stage_quantize),
    ("verify", stage_verify),
    ("profile", stage_profile),
    ("bundle", stage_bundle),
    ("report", stage_report),
)
STAGES: tuple[str, ...] = tuple(name for name, _ in PIPELINE)


def run_pipeline(
    recipe: Recipe,
    out_dir: Path,
    *,
    until: str = "report",
    console: Console | None = None,
    force: bool = False,
    allow_unverified_teacher: bool = False,
) -> RunContext:
    """Run every stage up to and including ``until``; returns the context with manifests.

    Args:
        recipe: The validated recipe.
        out_dir: The run folder.
        until: The last stage to run.
        console: Where progress goes.
        force: Re-run stages even when their inputs are unchanged.
        allow_unverified_teacher: Accept a teacher card without ``sha256`` (research use):
            a warning is printed and ``summary.json`` records ``teacher_verified: false``. A
            card whose hash does not match its weights is refused regardless.
    """
    from importlib.metadata import PackageNotFoundError, version

    if until not in STAGES:
        raise StageError(f"unknown stage '{until}'; stages: {', '.join(STAGES)}")
    try:
        package_version = version("edgedistill")
    except PackageNotFoundError:  # running from a source tree without installing
        package_version = "0+unknown"
    ctx = RunContext(
        recipe,
        out_dir,
        console=console,
        force=force,
        version=package_version,
        allow_unverified_teacher=allow_unverified_teacher,
    )
    torch.set_num_threads(ctx.threads())
    if DataParallelContext.current().is_main:  # ranks on other hosts have other pids
        remove_stale_temporaries(ctx.out)  # left behind by a run killed mid-write
    check_models(ctx)  # what `edgedistill validate` checks, before any stage works
    for name, stage in PIPELINE[: STAGES.index(until) + 1]:
        try:
            stage(ctx)
        except EdgeDistillError:
            raise
        except Exception as exc:
            # A full disk or an unwritable folder is one line naming the path; the stage has no
            # manifest, so the same command resumes there once the cause is fixed.
            failure = write_failure(exc, ctx.stage_dir(name))
            if failure is None:
                raise
            raise failure from None
    return ctx


# ---- what `edgedistill validate` checks (and every run, before its first stage) ------------
@dataclass(frozen=True)
class ModelCheck:
    """What :func:`check_models` found.

    Attributes:
        task: One line on the data (:meth:`Task.summary`).
        student: The student's architecture and parameter count, e.g. "convnet, 6,851 params".
        teacher: The teacher's name and how it was checked, or None without a teacher card.
        classes: The number of classes every model must output.
    """

    task: str
    student: str
    teacher: str | None
    classes: int


def check_models(ctx: RunContext) -> ModelCheck:
    """Every check a run makes before it trains, at the cost of a few forward passes.

    Loads the data with its source's own loader (labels checked against the class names),
    builds the student and runs it on two training samples, and loads the teacher (weights
    hash checked, model built) and runs it on the same two samples; the student and (unless
    ``teacher.adapt`` trains a head for this task) the teacher must output one score per
    class of the data. The global torch RNG is left as it was, so a run that checks first
    trains exactly as one that does not.

    Raises:
        RecipeError: a model cannot be built, fails on the data's input, or outputs another
            number of classes than the data has (one line: which, what it got, what to do).
        DataError: the data cannot be loaded or its labels do not fit ``data.labels``.
    """
    task = ctx.task
    recipe = ctx.recipe
    classes = task.num_classes
    sample = task.x_train[:2]
    shape = f"{list(task.input.shape)} {task.input.dtype}"
    with torch.random.fork_rng(devices=[]):
        student = build_student(ctx)
        width = _output_width(
            student,
            task.input.prepare(sample),
            f"student '{recipe.student.arch}' (student.config "
            f"{recipe.student.config}) fails on the data's input {shape}",
        )
    if width != classes:
        raise RecipeError(
            f"student '{recipe.student.arch}' outputs {width} classes but the data has "
            f"{classes} ({', '.join(task.labels[:5])}{', ...' if classes > 5 else ''}): "
            f"remove num_classes from student.config or fix data.labels"
        )
    params = sum(p.numel() for p in student.parameters())
    teacher_line = None
    cfg = recipe.teacher
    if cfg is not None and cfg.card is not None:
        teacher, card = ctx.base_teacher_and_card
        where = f"teacher {card.name} ({cfg.card})"
        if cfg.adapt is None:
            width = _output_width(
                teacher,
                ctx.teacher_input.prepare(sample),
                f"{where} fails on the data's input {shape}",
            )
            if width != classes:
                raise RecipeError(
                    f"{where} outputs {width} classes but the data has {classes}: use data "
                    "whose labels are the card's, or add teacher.adapt to train a head for "
                    "these labels"
                )
        elif not hasattr(teacher.model, "forward_features"):
            raise RecipeError(
                f"teacher.adapt: {where} has no forward_features(); adaptation needs a feature "
                "extractor"
            )
        verified = "sha256 checked" if card.verified else "UNVERIFIED (no sha256)"
        teacher_line = f"{card.name}, {card.arch}, weights {verified}"
    return ModelCheck(
        task=task.summary(),
        student=f"{recipe.student.arch}, {params:,} params, {classes} classes",
        teacher=teacher_line,
        classes=classes,
    )


def _output_width(model: nn.Module, x: torch.Tensor, failure: str) -> int:
    """The last dimension of ``model``'s output on ``x`` (eval mode, no gradients).

    A model whose forward raises is the recipe's problem (a student config that does not
    fit the data, a teacher for another input): one line with the first line of the error.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except EdgeDistillError:
        raise
    except Exception as exc:  # any failure of a user-configured model's forward
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"{failure}: {reason[:200]}") from None
    finally:
        model.train(was_training)
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise RecipeError(f"{failure}: it returned {type(out).__name__}, not [batch, classes]")
    return int(out.shape[-1])


@dataclass(frozen=True)
class TrainingEstimate:
    """How long the training stages should take on this machine: an estimate.

    Attributes:
        steps: Optimiser steps of pretrain + distill + prune recovery (samples / batch size,
            rounded up, times epochs).
        seconds_per_step: The median of a few timed student steps at the recipe's batch
            size.
        seconds: ``steps * seconds_per_step``; the teacher's one pass over the data, export,
            quantization and profiling come on top.
    """

    steps: int
    seconds_per_step: float
    seconds: float


def estimate_training(ctx: RunContext, *, timed_steps: int = 3) -> TrainingEstimate:
    """Time ``timed_steps`` SGD steps of the student at the recipe's batch size (after one
    warm-up step) and scale their median by the run's number of steps.

    A plain cross-entropy step stands in for the recipe's loss terms (the teacher's outputs
    are cached, so they add little per step); the RNG is restored afterwards.
    """
    task, recipe = ctx.task, ctx.recipe
    samples = len(task.y_train)
    batch = min(recipe.distill.batch_size, samples)
    per_epoch = -(-samples // recipe.distill.batch_size)
    steps = recipe.distill.epochs * per_epoch
    if recipe.prune.enabled:
        steps += recipe.prune.finetune_epochs * per_epoch
    if recipe.pretrain is not None:
        steps += recipe.pretrain.epochs * -(-samples // recipe.pretrain.batch_size)
    with torch.random.fork_rng(devices=[]):
        student = build_student(ctx).train()
        x = task.input.prepare(task.x_train[:batch])
        y = torch.as_tensor(task.y_train[:batch]).clamp(min=0).long()
        optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
        timings: list[float] = []
        for step in range(timed_steps + 1):
            started = time.perf_counter()
            out = student(x)
            logits = out[0] if isinstance(out, tuple | list) else out
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up allocators and kernels
                timings.append(time.perf_counter() - started)
    per_step = statistics.median(timings) if timings else 0.0
    return TrainingEstimate(steps=steps, seconds_per_step=per_step, seconds=steps * per_step)
