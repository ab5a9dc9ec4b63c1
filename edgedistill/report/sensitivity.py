"""The per-layer quantization sensitivity table of a run (``quantize/sensitivity.json``) as a
Markdown and an HTML section of the report.

The table comes from :func:`edgedistill.compress.nncf_quantize.layer_sensitivity`: one row
per quantized layer, most sensitive first, measured with only that layer quantized.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from edgedistill.artifacts import read_json

TOP_ROWS = 10  # layers shown per model; the JSON file holds them all


def _rows(table: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(model, rows[:TOP_ROWS]) for model, rows in table.get("models", {}).items()]


def _cells(row: dict[str, Any]) -> list[str]:
    drop = row.get("metric_drop")
    return [
        str(row["rank"]),
        str(row["layer"]),
        str(row["op"]),
        "" if drop is None else f"{drop:.2f}",
        f"{row['output_error']:.4f}",
    ]


def _headers(table: dict[str, Any]) -> list[str]:
    return ["rank", "layer", "op", f"{table.get('metric', 'metric')} drop", "rel. output error"]


def sensitivity_markdown(table: dict[str, Any]) -> str:
    """The Markdown section for a sensitivity table ("" when it has no rows)."""
    sections = _rows(table)
    if not any(rows for _, rows in sections):
        return ""
    lines = [
        "## INT8 sensitivity per layer",
        "",
        f"{table.get('method', '')} ({table.get('samples', 0)} samples).",
    ]
    for model, rows in sections:
        lines += ["", f"### {model}", "", "| " + " | ".join(_headers(table)) + " |"]
        lines.append("|" + "---|" * len(_headers(table)))
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def sensitivity_html(table: dict[str, Any]) -> str:
    """The HTML section for a sensitivity table ("" when it has no rows)."""
    sections = _rows(table)
    if not any(rows for _, rows in sections):
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _headers(table))
    parts = [
        "<h2>INT8 sensitivity per layer</h2>",
        f"<p>{html.escape(str(table.get('method', '')))} ({table.get('samples', 0)} samples).</p>",
    ]
    for model, rows in sections:
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>"
            for r in rows
        )
        parts.append(f"<h3>{html.escape(model)}</h3><table><tr>{head}</tr>{body}</table>")
    return "\n".join(parts) + "\n"


def add_sensitivity(markdown: str, page: str, path: Path) -> tuple[str, str]:
    """``markdown`` and ``page`` (an HTML document) with the sensitivity section of the table
    at ``path`` appended (before ``</body>``); unchanged when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return markdown, page
    table = read_json(path)
    section = sensitivity_html(table)
    if section:
        page = page.replace("</body>", section + "</body>") if "</body>" in page else page + section
    extra = sensitivity_markdown(table)
    return (markdown + "\n" + extra if extra else markdown), page


__all__ = ["add_sensitivity", "sensitivity_html", "sensitivity_markdown"]
