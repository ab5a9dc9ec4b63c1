"""``edgedistill init DATA_FOLDER``: inspect a data folder and write a commented recipe.

Registered in :mod:`edgedistill.cli.app` as ``app.command(name="init")(init_command)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgedistill.errors import DataError, EdgeDistillError, RecipeError


def init_command(
    data_folder: Annotated[
        Path,
        typer.Argument(
            help="Folder of data: <class>/*.png|jpg, <class>/*.wav, IMU recordings with a "
            "labels CSV, or a CSV of texts (a .csv file also works).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Recipe file to write (default: ./<name>.yaml)."),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="Teacher card: a file, or a card in teachers/ by file stem or name. "
            "Default: the offline card that fits the data, if any.",
        ),
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            "--target", "-t", help="Target profile (export/*.yaml) the student is sized for."
        ),
    ] = "desktop-cpu",
    name: Annotated[
        str | None, typer.Option("--name", help="Recipe name (default: the folder's name).")
    ] = None,
    sample_rate: Annotated[
        float | None,
        typer.Option(
            "--sample-rate",
            min=0.001,
            help="IMU recordings without a time column: their sample rate in Hz.",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            max=10_000,
            help="Training epochs (default: 10, more for a small data set).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the recipe file if it exists.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Inspect a data folder, report what is in it, and write a commented recipe for it."""
    console = Console(stderr=True)  # per call: the terminal width of this call
    try:
        _init(console, data_folder, out, teacher, target, name, sample_rate, epochs, force)
    except EdgeDistillError as exc:
        if debug:
            raise
        console.print("[red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _init(
    console: Console,
    folder: Path,
    out: Path | None,
    teacher: str | None,
    target_name: str,
    name: str | None,
    sample_rate: float | None,
    epochs: int | None,
    force: bool,
) -> Path:
    from edgedistill.scaffold import (
        choose_teacher,
        default_cards_dir,
        describe,
        inspect_data,
        propose,
        recipe_name,
        render_recipe,
        resolve_target,
    )
    from edgedistill.scaffold.findings import listed

    recipe = recipe_name(name or folder.expanduser().resolve().stem)
    path = out if out is not None else Path.cwd() / f"{recipe}.yaml"
    if path.is_dir():
        raise RecipeError(
            f"--out {path} is a folder; name the recipe file, e.g. {path}/{recipe}.yaml"
        )
    if path.exists() and not force:
        raise RecipeError(f"{path} exists; pass --force to overwrite it, or --out another file")
    target = resolve_target(target_name)
    found = inspect_data(folder, sample_rate=sample_rate, tier=target.tier)
    _print_findings(console, describe(found), found.corrupt, found.notes)
    if found.corrupt:
        raise DataError(
            f"{len(found.corrupt)} unreadable file(s): {listed(found.corrupt)}. A run reads every "
            "file, so remove or repair these, then run init again"
        )
    chosen, judged = choose_teacher(found, cards_dir=default_cards_dir(), requested=teacher)
    proposal = propose(found, target, chosen, name=recipe, epochs=epochs)
    student = proposal.sections["student"]
    lines = [
        f"teacher: {chosen.name} - {chosen.reason}" if chosen else _no_teacher(judged),
        f"student: {student['arch']} {student['config']} ({target.tier}, for target "
        f"{target.profile.name})",
        *(f"note: {n}" for n in proposal.notes),
    ]
    for line in lines:
        console.print(escape(line), highlight=False, soft_wrap=True)
    command = f"edgedistill init {folder}" + (f" --teacher {teacher}" if teacher else "")
    text = render_recipe(proposal, path, command=command, judged=judged)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    console.print(f"[green]wrote[/] {escape(str(path))}", highlight=False, soft_wrap=True)
    console.print(
        f"next:  edgedistill run {escape(str(path))}   "
        f"(check first: edgedistill validate {escape(str(path))})",
        highlight=False,
        soft_wrap=True,
    )
    return path


def _no_teacher(judged: Sequence[object]) -> str:
    return (
        f"teacher: none fits ({len(judged)} card(s) checked; see the recipe's teacher comment); "
        "training uses the labels alone"
    )


def _print_findings(
    console: Console, rows: list[tuple[str, str]], corrupt: list[str], notes: list[str]
) -> None:
    table = Table(title="edgedistill init: what the folder holds", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(escape(key), escape(value))
    if corrupt:
        table.add_row("[red]unreadable[/]", escape("\n".join(corrupt)))
    for note in notes:
        table.add_row("note", escape(note))
    console.print(table)
