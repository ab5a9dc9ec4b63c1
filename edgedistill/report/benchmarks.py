"""Helpers for the scripts in ``benchmarks/``: raw results files and BENCHMARKS.md sections."""

from __future__ import annotations

import re
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgedistill.artifacts import atomic_write_json, atomic_write_text
from edgedistill.bench.env import environment


def command_line() -> str:
    """The command that is running, for the record."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def write_results(path: Path, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Write raw rows plus machine, command and date as JSON; returns the document."""
    doc = {
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        **extra,
        "rows": rows,
    }
    atomic_write_json(path, doc)
    return doc


def update_section(markdown: Path, key: str, body: str) -> None:
    """Replace (or append) the block between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    atomic_write_text(markdown, text)
