"""``edgedistill doctor`` (what this machine can do) and ``edgedistill --version``.

The checks themselves are pure functions in :mod:`edgedistill.bench.doctor`; this file only
prints them, as one rich table or (``--json``) one JSON object for CI.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

STYLE = {"ok": "green", "missing": "red", "warn": "yellow"}
STRICT_EXIT = 4  # the exit code of MissingDependencyError: something to install


def _default_cards() -> Path:
    """``teachers/`` of the working folder, else the one next to the package (a checkout)."""
    here = Path("teachers")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "teachers"


def doctor(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder whose free disk is checked.")
    ] = Path("runs"),
    teachers: Annotated[
        Path | None,
        typer.Option("--teachers", help="Folder of teacher cards (default: ./teachers)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    no_hash: Annotated[
        bool, typer.Option("--no-hash", help="Locate the teachers' weights without hashing them.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help=f"Exit {STRICT_EXIT} when something required is missing."),
    ] = False,
) -> None:
    """Check what this machine has: Python, torch, runtimes, CPU, GPU, teachers, data, disk.

    Each row is ok, missing (with what to install) or warn. Exits 0 unless --strict and a
    required row is missing.
    """
    from edgedistill.bench.doctor import collect, report_dict, required_missing

    start = time.perf_counter()
    rows = collect(out, teachers or _default_cards(), hash_weights=not no_hash)
    seconds = time.perf_counter() - start
    if as_json:
        typer.echo(json.dumps(report_dict(rows, seconds), indent=2))
    else:
        table = Table(title=f"edgedistill doctor ({seconds:.1f} s)")
        for column in ("section", "check", "status", "found", "to fix"):
            table.add_column(column, overflow="fold")
        for i, row in enumerate(rows):
            colour = STYLE[row.status]
            last = i + 1 == len(rows) or rows[i + 1].section != row.section
            first = i == 0 or rows[i - 1].section != row.section
            table.add_row(
                row.section if first else "",
                row.name + (" *" if row.required else ""),
                f"[{colour}]{row.status}[/]",
                escape(row.detail),
                escape(row.fix or ""),
                end_section=last,
            )
        console = Console()
        console.print(table)
        console.print("* required by the default chain", style="dim")
    missing = required_missing(rows)
    if strict and missing:
        names = ", ".join(row.name for row in missing)
        Console(stderr=True).print(f"[red]error:[/] required but missing: {escape(names)}")
        raise typer.Exit(STRICT_EXIT)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgedistill {importlib.metadata.version('edgedistill')}")
        raise typer.Exit(0)


def version_option(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Options of ``edgedistill`` itself (the typer callback of the main app)."""
