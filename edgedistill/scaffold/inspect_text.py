"""A text CSV (the ``text_csv`` source): which column is the text, which the label.

The columns are chosen by name when a header says so (``text``, ``sentence``, ``review``, ...
and ``label``, ``class``, ``sentiment``, ...), otherwise the text is the column with the
longest cells and the label the column with the fewest distinct values (at least 2). The rows
are then read with the source's own reader, so a bad row is reported as a run would report it.
``max_length`` (UTF-8 bytes the student reads) covers 95 % of the texts, in steps of 16.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path

from edgedistill.errors import DataError
from edgedistill.scaffold.findings import Findings, held_out_share, spread
from edgedistill.tasks.sources._common import label_order, read_table
from edgedistill.tasks.sources.text_csv import read_rows

TEXT_NAMES = ("text", "sentence", "review", "content", "body", "comment", "message", "utterance")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "intent", "y")
TEST_FRACTION = 0.2
MAX_LENGTH = 512


def text_csv_of(folder: Path) -> tuple[Path, Path | None] | None:
    """(training CSV, test CSV or None) of a folder: ``train.csv`` + ``test.csv``, or the one
    CSV file it holds; None when it holds no CSV or several others."""
    csvs = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".csv"]
    by_name = {p.stem.lower(): p for p in csvs}
    if "train" in by_name and "test" in by_name and len(csvs) == 2:
        return by_name["train"], by_name["test"]
    if len(csvs) == 1:
        return csvs[0], None
    return None


def _pick_columns(path: Path, header: list[str], rows: list[list[str]]) -> tuple[str, str]:
    lower = [h.lower() for h in header]
    text = next((header[lower.index(n)] for n in TEXT_NAMES if n in lower), None)
    label = next((header[lower.index(n)] for n in LABEL_NAMES if n in lower), None)
    width = len(header)
    cells = [[r[i] if i < len(r) else "" for r in rows] for i in range(width)]
    if text is None:
        mean_len = [statistics.fmean(len(c) for c in col) if col else 0.0 for col in cells]
        text = header[max(range(width), key=lambda i: mean_len[i])]
    if label is None:
        options = [
            (len(set(col)), i)
            for i, col in enumerate(cells)
            if header[i] != text and len(set(col)) >= 2
        ]
        if not options:
            raise DataError(
                f"{path}: no label column (a column with 2 or more distinct values besides "
                f"{text!r}); the columns are {header}"
            )
        label = header[min(options)[1]]
    if text == label:
        raise DataError(f"{path}: the text and the label would be the same column {text!r}")
    return text, label


def inspect_text(path: Path, test_path: Path | None = None) -> Findings:
    """Read a text CSV (and its test CSV): columns, classes, text lengths; propose
    ``text_csv``.

    Raises:
        DataError: an unreadable file, a missing label column, a bad row (file and line),
            fewer than 2 classes.
    """
    table = read_table(path)
    if len(table) < 2:
        raise DataError(f"{path}: needs a header row and at least 2 rows of text and label")
    header = [c.strip() for c in table[0][1]]
    text_column, label_column = _pick_columns(path, header, [c for _, c in table[1:201]])
    rows = read_rows(path, text_column, label_column)
    test_rows = read_rows(test_path, text_column, label_column) if test_path else []
    names = label_order(label for _, label, _ in rows + test_rows)
    if len(names) < 2:
        raise DataError(
            f"{path}: needs at least 2 classes in column {label_column!r}, found {list(names)}"
        )
    found_counts = Counter(label for _, label, _ in rows + test_rows)
    counts = {n: found_counts[n] for n in names}
    train_counts = Counter(label for _, label, _ in rows)
    held = len(test_rows) or held_out_share(dict(train_counts), TEST_FRACTION)
    lengths = [len(t.encode("utf-8")) for t, _, _ in rows + test_rows]
    p95 = sorted(lengths)[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    max_length = min(MAX_LENGTH, max(16, 16 * math.ceil(p95 / 16)))
    cut = sum(n > max_length for n in lengths)
    found = Findings(
        modality="text",
        path=path,
        layout=(
            f"texts in {path.name}"
            + (
                f", held-out texts in {test_path.name}"
                if test_path
                else f"; a seeded {TEST_FRACTION:.0%} of each class (~{held}) is held out"
            )
        ),
        classes=counts,
        unit="texts",
        held_out=held,
    )
    found.facts += [
        ("columns", f"text {text_column!r}, label {label_column!r} (of {header})"),
        ("text lengths", spread(lengths, "bytes")),
        ("max_length", f"{max_length} bytes ({cut} text(s) longer are cut)"),
    ]
    found.data = {
        "source": "text_csv",
        "path": path,
        "text_column": text_column,
        "label_column": label_column,
        "max_length": max_length,
    }
    if test_path is not None:
        found.data["test_path"] = test_path
    found.comments = {
        "source": "a CSV of texts and labels (edgedistill/tasks/sources/text_csv.py)",
        "path": "relative to this recipe file",
        "test_path": "the held-out texts (same columns)",
        "max_length": "UTF-8 bytes the student reads per text (95% of the texts fit)",
    }
    found.input = {"max_length": max_length}
    return found
