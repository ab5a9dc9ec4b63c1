"""``text_csv``: labelled texts in a UTF-8 CSV file.

Layout::

    path        a CSV file with a header row and one row per text, e.g.
                    text,label
                    "The battery lasts all day",positive
                    "Stopped working after a week",negative
    test_path   optional second CSV with the same columns: the held-out texts (otherwise a
                seeded, class-stratified ``test_fraction`` of ``path`` is held out)

Cells are read with Python's ``csv`` module (quote texts that contain commas or line breaks);
other columns are ignored. Labels are any non-empty strings, at least 2 distinct ones; class
order is ``labels`` or the sorted label names (numerically when every label is an integer).
Texts become ``ByteTokenizer(max_length, lowercase)`` ids: UTF-8 bytes + 1, cut or padded with
0 to ``max_length``, stored as int64 [N, max_length] (an app tokenises the same way).

Example recipe section::

    data:
      source: text_csv
      path: reviews.csv
      text_column: review
      label_column: stars
      max_length: 256
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from edgedistill.errors import DataError
from edgedistill.schema import existing_file
from edgedistill.students.text import ByteTokenizer
from edgedistill.tasks.inputs import text_input
from edgedistill.tasks.sources._common import column, label_order, read_table, stratified_split
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task

MAX_TEXT_BYTES = 65536  # far beyond a text the student reads (max_length bytes)
Rows = list[tuple[str, str, str]]  # (text, label, "<file> line <n>")


class TextCsvConfig(SourceConfig):
    """The ``data`` section of a text CSV.

    Attributes:
        path: The CSV file (see the module docstring).
        text_column, label_column: Header names of the text and the label columns.
        test_path: A second CSV of held-out texts (same columns).
        test_fraction: Otherwise hold out this seeded, class-stratified share of ``path``.
        max_length: Token ids per text (UTF-8 bytes; longer texts are cut).
        lowercase: Map ASCII A-Z to a-z before tokenising.
        labels: Class names in label order (default: the sorted label names).
    """

    source: str = "text_csv"
    path: Path = Field(description="CSV file with a header row")
    text_column: str = "text"
    label_column: str = "label"
    test_path: Path | None = None
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_length: int = Field(default=128, gt=0)
    lowercase: bool = False
    labels: tuple[str, ...] | None = Field(default=None, min_length=2)

    _path = field_validator("path")(existing_file)

    @field_validator("test_path")
    @classmethod
    def _test_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else existing_file(value, info)


def read_rows(path: Path, text_column: str, label_column: str) -> Rows:
    """(text, label, where) of every non-blank row of a UTF-8 CSV file.

    Raises:
        DataError: for a file that is not UTF-8 (byte offset and line), a missing column (the
            columns found are listed), a row with the wrong number of cells, an empty text or
            an empty label (file and line).
    """
    table = read_table(path)
    hint = "set data.text_column / data.label_column"
    t, k = (column(path, table, c, hint) for c in (text_column, label_column))
    rows: Rows = []
    for line, cells in table[1:]:
        where = f"{path} line {line}"
        if len(cells) != len(table[0][1]):
            raise DataError(f"{where}: {len(cells)} cells but the header has {len(table[0][1])}")
        text, label = cells[t], cells[k].strip()
        if not text.strip():
            raise DataError(f"{where}: empty text in column {text_column!r}")
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise DataError(
                f"{where}: a text of {len(text.encode('utf-8')):,} bytes in column "
                f"{text_column!r}; an unclosed quote makes the csv module read the rest of "
                "the file as one cell"
            )
        if not label:
            raise DataError(f"{where}: empty label in column {label_column!r}")
        rows.append((text, label, where))
    return rows


def _label_ids(rows: Rows, names: tuple[str, ...]) -> np.ndarray:
    index = {n: k for k, n in enumerate(names)}
    for _, label, where in rows:
        if label not in index:
            raise DataError(f"{where}: label {label!r} is not one of the classes {list(names)}")
    return np.array([index[label] for _, label, _ in rows], dtype=np.int64)


@register_source("text_csv", TextCsvConfig)
def load_text_csv(cfg: TextCsvConfig, context: SourceContext) -> Task:
    """Read and tokenise the texts, then split (stratified) or use ``test_path``."""
    rows = read_rows(cfg.path, cfg.text_column, cfg.label_column)
    names = cfg.labels or label_order(label for _, label, _ in rows)
    if len(names) < 2:
        raise DataError(
            f"{cfg.path}: needs at least 2 classes in column {cfg.label_column!r}, found "
            f"{list(names)}"
        )
    if cfg.test_path is not None:
        train, test = rows, read_rows(cfg.test_path, cfg.text_column, cfg.label_column)
        if not test:
            raise DataError(f"{cfg.test_path}: has no texts")
    else:
        if len(rows) < 2:
            raise DataError(f"{cfg.path}: needs at least 2 texts to hold some out")
        tr, te = stratified_split(_label_ids(rows, names), cfg.test_fraction, context.seed)
        train, test = [rows[i] for i in tr], [rows[i] for i in te]
    tokenizer = ByteTokenizer(cfg.max_length, cfg.lowercase)
    return Task(
        name=cfg.name or cfg.path.stem,
        input=text_input(cfg.max_length, tokenizer.spec()),
        labels=names,
        x_train=tokenizer.encode_batch([t for t, _, _ in train]),
        y_train=_label_ids(train, names),
        x_test=tokenizer.encode_batch([t for t, _, _ in test]),
        y_test=_label_ids(test, names),
        source=str(cfg.path) if cfg.test_path is None else f"{cfg.path} + {cfg.test_path}",
    )
