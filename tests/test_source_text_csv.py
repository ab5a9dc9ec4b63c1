"""The ``text_csv`` source: byte tokens, label order, split, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedistill.errors import DataError
from edgedistill.students.text import ByteTokenizer
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.tasks.task import Task

ROWS = [
    ("Great phone, works well", "pos"),
    ("Broke after a day", "neg"),
    ("Love it", "pos"),
    ("Terrible support", "neg"),
    ("Battery lasts, screen is bright", "pos"),
    ("Returned it", "neg"),
    ("Five stars", "pos"),
    ("Would not buy again", "neg"),
    ("Excellent value", "pos"),
    ("Stopped charging", "neg"),
]


def _write(path: Path, rows: list[tuple[str, str]], header: str = "id,text,label") -> None:
    lines = [header] + [f'{i},"{t}",{lab}' for i, (t, lab) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _load(tmp_path: Path, seed: int = 0, **data: Any) -> Task:
    raw = {"source": "text_csv", "path": "reviews.csv", **data}
    cfg = parse_data_section(raw, base_dir=tmp_path, source="recipe.yaml")
    return build_task(cfg, cache_dir=tmp_path / "cache", seed=seed)


def test_tokens_labels_and_split(tmp_path: Path) -> None:
    _write(tmp_path / "reviews.csv", ROWS)
    task = _load(tmp_path, max_length=16)
    assert task.name == "reviews" and task.modality == "text"
    assert task.labels == ("neg", "pos")
    assert task.x_train.dtype == np.int64 and task.x_train.shape == (8, 16)
    assert task.x_test.shape == (2, 16) and np.bincount(task.y_test).tolist() == [1, 1]
    assert task.input.dtype == "int64" and task.input.raw["tokenizer"]["max_len"] == 16
    # Rows keep file order within the split; ids are UTF-8 bytes + 1, cut to 16.
    tokenizer = ByteTokenizer(16)
    expected = {t: tokenizer.encode(t) for t, _ in ROWS}
    decoded = [tokenizer.decode(ids) for ids in task.x_train]
    train_texts = [t for t, _ in ROWS if t[:16] in decoded]
    assert [expected[t] for t in train_texts] == task.x_train.tolist()
    assert task.x_train[0, :5].tolist() == [ord(c) + 1 for c in "Great"]
    again = _load(tmp_path, max_length=16)
    assert again.fingerprint == task.fingerprint


def test_label_order_lowercase_and_test_path(tmp_path: Path) -> None:
    _write(tmp_path / "reviews.csv", ROWS)
    _write(tmp_path / "held.csv", [("GOOD Stuff", "pos"), ("bad", "neg"), ("ok", "pos")])
    task = _load(tmp_path, test_path="held.csv", lowercase=True, labels=["pos", "neg"])
    assert task.labels == ("pos", "neg")
    assert task.y_train.tolist() == [0, 1] * 5 and task.y_test.tolist() == [0, 1, 0]
    assert task.x_test.shape == (3, 128)
    assert ByteTokenizer(128).decode(task.x_test[0]) == "good stuff"


def test_quoted_fields_numeric_labels_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"a, b",10\n"two\nlines",2\nfine,10\n"",2\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews\.csv line 6: empty text in column 'text'"):
        _load(tmp_path)
    path.write_text('text,label\n"a, b",10\n"two\nlines",2\nfine,10\nok,2\n', encoding="utf-8")
    task = _load(tmp_path, test_fraction=0.5)
    assert task.labels == ("2", "10")  # numeric order when every label is an integer
    assert sorted(np.concatenate([task.y_train, task.y_test]).tolist()) == [0, 0, 1, 1]


def test_missing_column_lists_found_columns(tmp_path: Path) -> None:
    _write(tmp_path / "reviews.csv", ROWS)
    with pytest.raises(
        DataError, match=r"reviews\.csv line 1: no column 'review'.*\['id', 'text', 'label'\]"
    ):
        _load(tmp_path, text_column="review")


def test_empty_text_names_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "reviews.csv", [*ROWS[:3], ("   ", "pos"), *ROWS[3:]])
    with pytest.raises(DataError, match=r"reviews\.csv line 5: empty text"):
        _load(tmp_path)


def test_not_utf8_gives_byte_offset(tmp_path: Path) -> None:
    (tmp_path / "reviews.csv").write_bytes(b"text,label\ncaf\xe9,pos\nok,neg\n")
    with pytest.raises(DataError, match=r"reviews\.csv: not UTF-8 at byte offset 14 \(line 2\)"):
        _load(tmp_path)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    _write(tmp_path / "reviews.csv", [(t, "pos") for t, _ in ROWS])
    with pytest.raises(
        DataError, match=r"reviews\.csv: needs at least 2 classes in column 'label'"
    ):
        _load(tmp_path)


def test_unknown_label_in_test_file(tmp_path: Path) -> None:
    _write(tmp_path / "reviews.csv", ROWS)
    _write(tmp_path / "held.csv", [("fine", "pos"), ("meh", "neutral")])
    with pytest.raises(DataError, match=r"held\.csv line 3: label 'neutral' is not one of"):
        _load(tmp_path, test_path="held.csv")


def test_a_megabyte_cell_is_refused_with_its_line(tmp_path: Path) -> None:
    from edgedistill.errors import DataError
    from edgedistill.tasks.sources.text_csv import read_rows

    path = tmp_path / "t.csv"
    path.write_text('text,label\nfine,a\n"' + "x" * 70_000 + '",b\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t.csv line 3: a text of 70,000 bytes"):
        read_rows(path, "text", "label")
