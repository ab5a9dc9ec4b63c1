"""Rich progress bars and console output shared by the stages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Advance(Protocol):
    """Moves a progress bar ``n`` steps, optionally changing its description."""

    def __call__(self, n: int = 1, description: str | None = None) -> None: ...


@contextlib.contextmanager
def progress_bar(console: Console, label: str, total: int) -> Iterator[Advance]:
    """A transient progress bar; yields ``advance(n, description=None)``.

    Disabled (no output) when the console is not a terminal and not forced, so logs and CI
    output stay readable; the stage still prints one line when it finishes.
    """
    progress = Progress(
        TextColumn("[bold]{task.fields[label]}[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("", total=total, label=label)

        def advance(n: int = 1, description: str | None = None) -> None:
            if description is None:
                progress.advance(task, n)
            else:
                progress.update(task, advance=n, description=description)

        yield advance
