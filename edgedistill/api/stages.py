"""The command line's commands as functions: :func:`run`, one function per stage, and
:func:`validate` (see :mod:`edgedistill.api`)."""

from __future__ import annotations

import copy
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch
from rich.console import Console

from edgedistill.api.results import RunResult, StageResult, Validation
from edgedistill.artifacts import read_json
from edgedistill.config import Recipe, load_recipe, load_target
from edgedistill.errors import RecipeError
from edgedistill.pipeline.context import RunContext, prepare_run_folder
from edgedistill.pipeline.run import STAGES, run_pipeline

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

PathLike = str | os.PathLike[str]
RecipeSource = PathLike | Recipe | Mapping[str, Any]
"""A recipe YAML path, a validated :class:`~edgedistill.config.Recipe`, or a mapping of
sections as in the YAML (relative paths in a mapping resolve against the working folder)."""


class StageOptions(TypedDict, total=False):
    """The options every stage function shares with :func:`run` (the command line's flags).

    Keys:
        target: A target profile YAML (``export/*.yaml``) overriding export, profile,
            quantize and gates (``--target``).
        force: Re-run stages even when their inputs are unchanged (``--force``).
        allow_unverified_teacher: Accept a teacher card without sha256 (research use; a
            warning, and ``teacher_verified: false`` in the summary).
        progress: Print progress and stage lines on stderr as the command line does.
    """

    target: PathLike | None
    force: bool
    allow_unverified_teacher: bool
    progress: bool


def run(
    recipe: RecipeSource,
    out: PathLike | None = None,
    *,
    target: PathLike | None = None,
    force: bool = False,
    allow_unverified_teacher: bool = False,
    until: str = "report",
    progress: bool = False,
) -> RunResult:
    """Run the chain up to and including ``until`` (``edgedistill run`` / a stage command).

    Args:
        recipe: A recipe YAML path, a :class:`~edgedistill.config.Recipe` or a mapping.
        out: The run folder; default ``runs/<recipe name>`` as on the command line.
        target: A target profile YAML whose sections override the recipe's.
        force: Re-run stages even when their inputs are unchanged.
        allow_unverified_teacher: Accept a teacher card without sha256 (research use).
        until: The last stage to run, one of :data:`~edgedistill.pipeline.run.STAGES`.
        progress: Print progress on stderr (default: quiet).

    Returns:
        The run folder, every stage's result and, when the report ran, the summary.

    Raises:
        RecipeError: a missing or invalid recipe, an unknown ``until``, ``out`` is a file.
        EdgeDistillError: any other failure, with the command line's exit code.
    """
    from edgedistill.distill.ddp import init_from_environment, shutdown

    if until not in STAGES:
        raise RecipeError(f"until='{until}' is not a stage: use one of {', '.join(STAGES)}")
    parsed = _recipe(recipe, target)
    ddp = init_from_environment()
    console = _console(progress and ddp.is_main)
    out_dir = prepare_run_folder(Path(out) if out is not None else Path("runs") / parsed.name)
    console.print(
        f"[bold]edgedistill[/] {until}: recipe [cyan]{parsed.name}[/] → [cyan]{out_dir}[/]"
    )
    threads = torch.get_num_threads()
    try:
        ctx = run_pipeline(
            parsed,
            out_dir,
            until=until,
            console=console,
            force=force,
            allow_unverified_teacher=allow_unverified_teacher,
        )
        shutdown()  # every process reaches here before any leaves (DDP)
    finally:
        torch.set_num_threads(threads)  # run_pipeline set the recipe's; leave the caller's
    if ctx.teacher_verified is False and not progress:
        warnings.warn(
            f"recipe '{parsed.name}': the teacher card has no sha256, its weights were used "
            "unverified (allow_unverified_teacher=True)",
            stacklevel=2,
        )
    summary_path = ctx.out / "summary.json"
    summary = read_json(summary_path) if until == "report" and summary_path.is_file() else None
    return RunResult(
        out=ctx.out,
        recipe=parsed.name,
        until=until,
        stages=_stage_results(ctx, until),
        summary=summary,
    )


def pretrain(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """Pre-train the student without labels when the recipe has a ``pretrain`` section
    (``edgedistill pretrain``)."""
    return run(recipe, out, until="pretrain", **options)


def distill(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then train the student with the recipe's loss terms (``edgedistill distill``)."""
    return run(recipe, out, until="distill", **options)


def prune(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then prune channels and recover accuracy with KD (``edgedistill prune``)."""
    return run(recipe, out, until="prune", **options)


def export(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then export ONNX, and OpenVINO IR when installed (``edgedistill export``)."""
    return run(recipe, out, until="export", **options)


def quantize(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then quantize the students to INT8 (``edgedistill quantize``)."""
    return run(recipe, out, until="quantize", **options)


def verify(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then check exports against torch and INT8 against FP32 (``edgedistill verify``)."""
    return run(recipe, out, until="verify", **options)


def profile(
    recipe: RecipeSource,
    out: PathLike | None = None,
    *,
    device: str | None = None,
    token_file: PathLike | None = None,
    **options: Unpack[StageOptions],
) -> RunResult:
    """…then measure latency on every runtime and batch size (``edgedistill profile``).

    Args:
        device: A device agent's URL (``edgedistill agent serve``): after the local profile,
            measure the run's ONNX models there and refresh the report. Default: the
            target profile's ``device.url``, if any.
        token_file: The agent's token (default: the target's ``device.token_env`` variable,
            else ``$EDGEDISTILL_AGENT_TOKEN``).
    """
    result = run(recipe, out, until="profile", **options)
    target = options.get("target")
    target_device = load_target(Path(target)).device if target is not None else None
    url = device or (target_device.url if target_device is not None else None)
    if url is None:
        return result
    from dataclasses import replace

    from edgedistill.agent.client import read_token
    from edgedistill.pipeline.device import profile_run_on_device
    from edgedistill.pipeline.stages.report import refresh_report
    from edgedistill.runtime.registry import RUNTIMES

    token_env = target_device.token_env if target_device is not None else ""
    env_token = os.environ.get(token_env, "").strip() if token_env else ""
    token = env_token if token_file is None and env_token else read_token(_path(token_file))
    cfg = _recipe(recipe, target).profile
    # The agent measures ONNX files (as on the command line): INT8 is the QDQ models.
    runtimes = [r for r in cfg.runtimes if RUNTIMES[r].takes == "onnx"] or ["onnxruntime"]
    offered = {p for r in runtimes for p in RUNTIMES[r].precisions}
    measured = profile_run_on_device(
        result.out,
        url,
        token,
        runtimes=runtimes,
        precisions=[p for p in (*cfg.precisions, "int8") if p in offered],
        batch_sizes=cfg.batch_sizes,
        threads=(cfg.threads,),
        warmup=cfg.warmup,
        runs=cfg.runs,
        store=cfg.store,
    )
    refresh_report(
        result.out,
        recipe=_recipe(recipe, target),
        console=_console(options.get("progress", False)),
        allow_unverified_teacher=options.get("allow_unverified_teacher", False),
    )
    return replace(result, device=measured)


def bundle(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then write the app-ready bundle (``edgedistill bundle``)."""
    return run(recipe, out, until="bundle", **options)


def report(
    recipe: RecipeSource, out: PathLike | None = None, **options: Unpack[StageOptions]
) -> RunResult:
    """…then write summary.json, report.md/html and the plot: the whole chain, as
    :func:`run` (``edgedistill report``)."""
    return run(recipe, out, until="report", **options)


def validate(
    recipe: RecipeSource,
    *,
    target: PathLike | None = None,
    allow_unverified_teacher: bool = False,
    progress: bool = False,
) -> Validation:
    """Check a recipe as a run would before training, without training (``edgedistill
    validate``): loads the data, builds the student and the teacher (hash checked), runs each
    on two samples and estimates the training time. Nothing is written outside a scratch
    folder that is removed.

    Raises:
        RecipeError: the recipe, a model or the teacher card is wrong (one line says what).
        DataError: the data cannot be loaded or its labels do not fit.
        UnsafeFileError: the teacher's weights do not match the card's sha256.
    """
    from edgedistill.pipeline.run import check_models, estimate_training
    from edgedistill.teachers.base import verify_teacher_card

    parsed = _recipe(recipe, target)
    console = _console(progress)
    card_path = parsed.teacher.card if parsed.teacher is not None else None
    if card_path is not None:
        card, digest = verify_teacher_card(card_path, allow_unverified=allow_unverified_teacher)
        if not card.verified:
            console.print(f"[yellow]warning:[/] teacher card {card_path} has no sha256 ({digest})")
    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="edgedistill-validate-") as scratch:
            ctx = RunContext(
                parsed,
                Path(scratch),
                console=Console(file=io.StringIO()),
                allow_unverified_teacher=allow_unverified_teacher,
            )
            torch.set_num_threads(ctx.threads())
            found = check_models(ctx)
            estimate = estimate_training(ctx)
    finally:
        torch.set_num_threads(threads)
    console.print(f"[green]ok[/]: recipe '{parsed.name}'", highlight=False)
    return Validation(
        recipe=parsed.name,
        task=found.task,
        student=found.student,
        teacher=found.teacher,
        classes=found.classes,
        estimate=estimate,
    )


# ---- helpers -----------------------------------------------------------------------------------
def _recipe(recipe: RecipeSource, target: PathLike | None) -> Recipe:
    """``recipe`` validated, with ``target``'s sections merged in key by key (as
    :func:`~edgedistill.config.load_recipe` does for a file)."""
    if isinstance(recipe, str | os.PathLike):
        return load_recipe(Path(recipe), target=_path(target))
    if isinstance(recipe, Recipe):
        if target is None:
            return recipe
        raw: dict[str, Any] = recipe.model_dump(mode="json")
        source = f"recipe '{recipe.name}'"
    elif isinstance(recipe, Mapping):
        raw = copy.deepcopy(dict(recipe))
        source = f"recipe '{raw.get('name', 'recipe')}' (a mapping)"
    else:
        raise TypeError(
            f"recipe must be a YAML path, a Recipe or a mapping, not {type(recipe).__name__}"
        )
    if target is not None:
        for key, section in load_target(Path(target)).overrides().items():
            raw[key] = {**(raw.get(key) or {}), **section}
    return Recipe.from_dict(raw, source=source)


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def _console(progress: bool) -> Console:
    """stderr as on the command line, or a console that prints nothing."""
    return Console(stderr=True) if progress else Console(quiet=True)


def _stage_results(ctx: RunContext, until: str) -> tuple[StageResult, ...]:
    results = []
    for name in STAGES[: STAGES.index(until) + 1]:
        manifest = ctx.manifests.get(name, {})
        seconds = manifest.get("timings", {}).get("seconds")
        results.append(
            StageResult(
                name=name,
                skipped=name in ctx.skipped,
                metrics=dict(manifest.get("metrics", {})),
                outputs=tuple(ctx.stage_dir(name) / o for o in manifest.get("outputs", {})),
                seconds=None if seconds is None else float(seconds),
            )
        )
    return tuple(results)


__all__ = [
    "RecipeSource",
    "StageOptions",
    "bundle",
    "distill",
    "export",
    "pretrain",
    "profile",
    "prune",
    "quantize",
    "report",
    "run",
    "validate",
    "verify",
]
