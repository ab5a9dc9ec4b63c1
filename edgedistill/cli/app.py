"""The ``edgedistill`` command line: one sub-command per stage, plus ``run``.

Every stage command runs the chain up to and including that stage; stages whose inputs are
unchanged are skipped, so ``edgedistill export r.yaml`` after ``edgedistill distill r.yaml``
only does the new work. Errors are one line on stderr with a non-zero exit code; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgedistill.cli.help import examples, show_flags_as_flags
from edgedistill.errors import EdgeDistillError

if TYPE_CHECKING:
    from edgedistill.config import Recipe

show_flags_as_flags()  # `--force`, not `--force <bool>` (typer 0.29); see cli/help.py
app = typer.Typer(
    add_completion=True,  # edgedistill --install-completion (docs/cli.md)
    no_args_is_help=True,
    help="Distill, prune, quantize, export, verify, profile and bundle a student model.",
    epilog=examples(""),
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run directory (default: runs/<recipe name>).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-run stages even if unchanged.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
UnverifiedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unverified-teacher",
        help="Research use: accept a teacher card without sha256 (warns; summary.json records "
        "teacher_verified: false). A hash that does not match is refused regardless.",
    ),
]
TargetOpt = Annotated[
    Path | None,
    typer.Option(
        "--target", "-t", help="Target profile YAML (export/*.yaml) overriding export/profile."
    ),
]


@contextmanager
def _user_errors(debug: bool) -> Iterator[None]:
    """Errors of ours become one line and their exit code (traceback with ``--debug``)."""
    try:
        yield
    except EdgeDistillError as exc:
        if debug:
            raise
        console.print("[red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        raise typer.Exit(130) from None
    except OSError as exc:
        # The file system said no (permissions, a full disk, a vanished file) somewhere no
        # check of ours anticipated: still one line naming the file.
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
        console.print("[red]error:[/]", escape(message), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _load(recipe_path: Path, target: Path | None, command: str) -> Recipe:
    """The recipe of ``command``; a target profile, teacher card, run folder or model given in
    the wrong place is refused with the command that takes it (exit 2)."""
    from edgedistill.cli.inputs import check_has_pretrain, check_recipe_path, check_target_path
    from edgedistill.config import load_recipe

    check_recipe_path(recipe_path, command)
    if target is not None:
        check_target_path(target)
    recipe = load_recipe(recipe_path, target=target)
    if command == "pretrain":
        check_has_pretrain(recipe.pretrain is not None, recipe_path)
    return recipe


def _execute(
    recipe_path: Path,
    out: Path | None,
    until: str,
    force: bool,
    debug: bool,
    target: Path | None = None,
    allow_unverified_teacher: bool = False,
    command: str | None = None,
) -> Path:
    from edgedistill.distill.ddp import init_from_environment, shutdown
    from edgedistill.pipeline.context import prepare_run_folder
    from edgedistill.pipeline.run import run_pipeline

    # Under torchrun (WORLD_SIZE > 1) join the process group; only rank 0 prints.
    ddp = init_from_environment()
    if not ddp.is_main:
        console.quiet = True
    with _user_errors(debug):
        recipe = _load(recipe_path, target, command or until)
        out_dir = out or Path("runs") / recipe.name
        prepare_run_folder(out_dir)  # a bad --out is one line before anything else is printed
        console.print(
            f"[bold]edgedistill[/] {until}: recipe [cyan]{recipe_path}[/] → [cyan]{out_dir}[/]"
        )
        ctx = run_pipeline(
            recipe,
            out_dir,
            until=until,
            console=console,
            force=force,
            allow_unverified_teacher=allow_unverified_teacher,
        )
        shutdown()  # every process reaches here before any leaves (DDP)
    if until == "report" and ddp.is_main:
        _print_summary(ctx.out)
    return ctx.out


def _print_summary(out_dir: Path) -> None:
    from edgedistill.artifacts import read_json
    from edgedistill.report.render import pretrain_rows, summary_table

    summary = read_json(out_dir / "summary.json")
    header, rows = summary_table(summary)
    table = Table(title=f"{summary['recipe']} — {summary['accuracy_metric']}")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in rows:
        table.add_row(*r)
    # Wide enough for the whole table when stdout is a file or a CI log (rich defaults to 80).
    out = Console() if sys.stdout.isatty() else Console(width=200)
    out.print(table)
    for what, top1 in pretrain_rows(summary):
        out.print(f"  linear probe, {what}: {top1}%")
    for k, v in summary.get("speedups", {}).items():
        out.print(f"  {k}: [bold]{v:.1f}×[/]")
    rec = summary.get("recommended") or {}
    if rec:
        out.print(f"ship {rec['file']} ({rec['model']}): {rec['reason']}")
    # This folder's paths, not the ones recorded when the run was made (it may have moved).
    out.print(f"bundle:  {out_dir.resolve() / 'bundle' / 'app'}")
    out.print(f"report:  {out_dir.resolve() / 'report' / 'report.html'}")
    out.print(f"summary: {out_dir / 'summary.json'}")


def _stage_command(stage: str, doc: str) -> None:
    def command(
        recipe: RecipeArg,
        out: OutOpt = None,
        target: TargetOpt = None,
        force: ForceOpt = False,
        debug: DebugOpt = False,
        allow_unverified_teacher: UnverifiedOpt = False,
    ) -> None:
        _execute(recipe, out, stage, force, debug, target, allow_unverified_teacher)

    command.__doc__ = doc
    app.command(name=stage, epilog=examples(stage))(
        _profile_command if stage == "profile" else command
    )


# ---- profile on a device agent too (edgedistill profile RECIPE --device URL) ---------------
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Device agent URL (edgedistill agent serve): after the local profile, measure the "
        "run's ONNX models there and refresh the report. Default: the target's device.url.",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the agent's token (default: $EDGEDISTILL_AGENT_TOKEN, or the "
        "variable the target's device.token_env names).",
    ),
]


def _profile_command(
    recipe: RecipeArg,
    out: OutOpt = None,
    target: TargetOpt = None,
    device: DeviceOpt = None,
    token_file: TokenFileOpt = None,
    force: ForceOpt = False,
    debug: DebugOpt = False,
    allow_unverified_teacher: UnverifiedOpt = False,
) -> None:
    """…then measure latency on every runtime and batch size (and on a device agent)."""
    run_dir = _execute(recipe, out, "profile", force, debug, target, allow_unverified_teacher)
    with _user_errors(debug):
        _profile_on_device(recipe, run_dir, target, device, token_file, allow_unverified_teacher)


def _profile_on_device(
    recipe_path: Path,
    run_dir: Path,
    target: Path | None,
    url: str | None,
    token_file: Path | None,
    allow_unverified_teacher: bool = False,
) -> None:
    """Measure the run's models on the agent at ``url`` (or the target's), then re-render the
    report with that device's table and plot."""
    from edgedistill.agent.client import read_token
    from edgedistill.config import load_target
    from edgedistill.pipeline.device import profile_run_on_device
    from edgedistill.pipeline.stages.report import refresh_report
    from edgedistill.runtime.registry import RUNTIMES

    target_device = load_target(target).device if target is not None else None
    url = url or (target_device.url if target_device is not None else None)
    if url is None:
        return
    # --token-file, else the target's token_env, else $EDGEDISTILL_AGENT_TOKEN (read_token).
    token_env = target_device.token_env if target_device is not None else ""
    env_token = os.environ.get(token_env, "").strip() if token_env else ""
    token = env_token if token_file is None and env_token else read_token(token_file)
    recipe = _load(recipe_path, target, "profile")
    cfg = recipe.profile
    # The agent measures ONNX files: runtimes that take a torch module stay local. INT8 is the
    # quantize stage's QDQ models; keep only precisions one of the runtimes offers.
    runtimes = [r for r in cfg.runtimes if RUNTIMES[r].takes == "onnx"] or ["onnxruntime"]
    offered = {p for r in runtimes for p in RUNTIMES[r].precisions}
    precisions = [p for p in (*cfg.precisions, "int8") if p in offered]
    console.print(f"[bold]edgedistill[/] profile on device [cyan]{url}[/]")
    results = profile_run_on_device(
        run_dir,
        url,
        token,
        runtimes=runtimes,
        precisions=precisions,
        batch_sizes=cfg.batch_sizes,
        threads=(cfg.threads,),
        warmup=cfg.warmup,
        runs=cfg.runs,
        store=cfg.store,  # None: <run>/results.sqlite, where the report reads it
    )
    console.print(
        f"[green]✓[/] {results.device_name}: {len(results.measurements)} measurements"
        + (f", {len(results.errors)} failed" if results.errors else "")
    )
    for failed in results.errors:
        console.print(
            f"  [yellow]{escape(str(failed.get('item')))}[/]: {escape(str(failed.get('error')))}"
        )
    refresh_report(
        run_dir,
        recipe=recipe,
        console=console,
        allow_unverified_teacher=allow_unverified_teacher,
    )
    console.print(f"report: {run_dir / 'report' / 'report.html'}")


for _stage, _doc in (
    ("pretrain", "Pre-train the student without labels (cross-modal or DINO), if asked."),
    ("distill", "…then train the student (loss terms of the recipe, teacher outputs cached)."),
    ("prune", "…then prune channels structurally and recover accuracy with KD."),
    ("export", "…then export ONNX (and OpenVINO IR when installed)."),
    ("quantize", "…then quantize the students to INT8 (ONNX Runtime QDQ)."),
    ("verify", "…then check exports against torch and INT8 against FP32 (gates)."),
    ("profile", "…then measure latency on every runtime and batch size."),
    ("bundle", "…then write the app-ready bundle."),
    ("report", "…then write summary.json, report.md/html and the plot."),
):
    _stage_command(_stage, _doc)


@app.command(epilog=examples("run"))
def run(
    recipe: RecipeArg,
    out: OutOpt = None,
    target: TargetOpt = None,
    force: ForceOpt = False,
    debug: DebugOpt = False,
    allow_unverified_teacher: UnverifiedOpt = False,
) -> None:
    """Run the whole chain, from pretrain to report.

    pretrain → distill → prune → export → quantize → verify → profile → bundle → report;
    stages whose inputs are unchanged are skipped, so a second run resumes where one stopped.
    """
    _execute(recipe, out, "report", force, debug, target, allow_unverified_teacher, "run")


@app.command(epilog=examples("validate"))
def validate(
    recipe: RecipeArg,
    target: TargetOpt = None,
    debug: DebugOpt = False,
    allow_unverified_teacher: UnverifiedOpt = False,
) -> None:
    """Check a recipe (and target profile) as a run would before training, without training.

    Loads the data, builds the student and the teacher (hash checked) and runs each on two
    samples, then estimates how long training takes on this machine.
    """
    with _user_errors(debug):
        parsed = _load(recipe, target, "validate")
        _check_teacher_card(parsed, allow_unverified_teacher)
        lines = _check_run(parsed, allow_unverified_teacher)
    console.print(
        f"[green]ok[/]: {escape(str(recipe))} (recipe '{escape(parsed.name)}')",
        highlight=False,
        soft_wrap=True,
    )
    for line in lines:
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def _check_run(recipe: Recipe, allow_unverified: bool) -> list[str]:
    """What ``run`` checks before training (data, student, teacher), in a scratch folder that
    is deleted afterwards; returns the lines ``validate`` prints, the estimate last."""
    import io
    import tempfile

    import torch

    from edgedistill.pipeline.context import RunContext
    from edgedistill.pipeline.run import check_models, estimate_training

    with tempfile.TemporaryDirectory(prefix="edgedistill-validate-") as scratch:
        quiet = Console(file=io.StringIO())  # the teacher-card warning was printed already
        ctx = RunContext(
            recipe, Path(scratch), console=quiet, allow_unverified_teacher=allow_unverified
        )
        torch.set_num_threads(ctx.threads())
        found = check_models(ctx)
        estimate = estimate_training(ctx)
    lines = [f"data: {found.task}", f"student: {found.student}"]
    if found.teacher is not None:
        lines.append(f"teacher: {found.teacher}")
    lines.append(
        f"estimate: ~{_duration(estimate.seconds)} of training on this machine "
        f"({estimate.steps:,} steps at {estimate.seconds_per_step * 1e3:.1f} ms, timed over a "
        "few student steps; an estimate: teacher pass, export and profiling come on top)"
    )
    return lines


def _duration(seconds: float) -> str:
    """``seconds`` in words: "40 s", "12 min", "3.5 h", "2.1 days"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _check_teacher_card(recipe: Recipe, allow_unverified: bool) -> None:
    """Check the recipe's teacher card and hash its weights (no model is built)."""
    from edgedistill.teachers.base import verify_teacher_card

    card_path = recipe.teacher.card if recipe.teacher is not None else None
    if card_path is None:
        return
    card, digest = verify_teacher_card(card_path, allow_unverified=allow_unverified)
    if not card.verified:
        console.print(
            f"[yellow]warning:[/] teacher card {escape(str(card_path))} has no sha256: its "
            f"weights {escape(str(card.weights))} (sha256 {digest}) would run unverified",
            highlight=False,
            soft_wrap=True,
        )


# Kept for the cross-modal recipe's old command line: the same command as ``run``.
app.command(name="crossmodal", help="Alias of run.", epilog=examples("crossmodal"))(run)

# The device agent (edgedistill agent serve) and its client (edgedistill device ...).
from edgedistill.cli.agent import agent_app, device_app  # noqa: E402

app.add_typer(agent_app, name="agent", epilog=examples("agent"))
app.add_typer(device_app, name="device", epilog=examples("device"))

from edgedistill.cli.doctor import doctor, version_option  # noqa: E402

app.command(epilog=examples("doctor"))(doctor)

from edgedistill.cli.init import init_command  # noqa: E402

app.command(name="init", epilog=examples("init"))(init_command)
app.callback()(version_option)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="edgedistill")


if __name__ == "__main__":
    main()
