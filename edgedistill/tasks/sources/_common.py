"""Helpers the data sources share: class-folder discovery, stratified seeded splits, label
ordering, CSV tables with line numbers, durations as whole samples."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationInfo

from edgedistill.data.imu import samples_of
from edgedistill.errors import DataError

Files = list[tuple[Path, int]]  # (file, class index), in class then file-name order
Table = list[tuple[int, list[str]]]  # (line where the row starts, cells), blank rows skipped


# ---- class folders, splits, label order ----


def label_order(found: Iterable[str]) -> tuple[str, ...]:
    """Sorted names; numerically when every name is an integer ("2" before "10")."""
    names = sorted(set(found))
    if names and all(n.lstrip("-").isdecimal() for n in names):
        names.sort(key=int)
    return tuple(names)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices holding out ``round(fraction * n_k)`` rows of every
    class k (at least 1 when the class has 2 rows or more, never all of them), drawn with
    ``np.random.default_rng(seed)`` class by class in label order."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        n_test = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        test.append(rng.permutation(rows)[:n_test])
    held = np.zeros(len(y), dtype=bool)
    held[np.concatenate(test).astype(np.int64)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name[0] != "."}


def class_files(
    root: Path, suffixes: Sequence[str], labels: Sequence[str] | None, kind: str
) -> tuple[tuple[str, ...], Files, Files | None]:
    """Class names and the files of a folder-per-class dataset.

    Returns:
        (class names, training files, test files or None when there is no ``test/`` folder).

    Raises:
        DataError: for a folder without class sub-folders, a single class, a class folder
            without ``suffixes`` files, a ``labels`` entry without a folder (or a folder not
            in ``labels``), a test class unknown to training, or ``test/`` without ``train/``.
    """
    wanted = "/".join(f"*{s}" for s in suffixes)
    test_dir = root / "test"
    split = (root / "train").is_dir()
    if test_dir.is_dir() and not split:
        raise DataError(f"{root}: has test/ but no train/; add train/<class>/ or drop test/")
    train_root = root / "train" if split else root
    found = _class_dirs(train_root)
    if not found:
        raise DataError(
            f"{train_root}: no class sub-folders; expected {train_root}/<class>/{wanted}"
        )
    if len(found) < 2:
        raise DataError(
            f"{train_root}: needs at least 2 class sub-folders, found only {list(found)}"
        )
    if labels is None:
        names = label_order(found)
    else:
        names = tuple(labels)
        missing = [n for n in names if n not in found]
        extra = [n for n in found if n not in names]
        if missing or len(set(names)) != len(names):
            raise DataError(
                f"{train_root}: data.labels names {missing or 'a class twice'} with no class "
                f"folder; the folders are {list(found)}"
            )
        if extra:
            raise DataError(f"{train_root}: folders {extra} are not in data.labels; list them")

    def files_of(folder: Path, k: int) -> Files:
        files = [
            (f, k) for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in suffixes
        ]
        if not files:
            raise DataError(f"{folder}: class folder has no {kind} ({wanted})")
        return files

    train = [pair for k, n in enumerate(names) for pair in files_of(found[n], k)]
    if not split or not test_dir.is_dir():
        return names, train, None
    tests = _class_dirs(test_dir)
    unknown = [n for n in tests if n not in names]
    if unknown:
        raise DataError(f"{test_dir}: classes {unknown} have no folder in {train_root}")
    test = [pair for k, n in enumerate(names) if n in tests for pair in files_of(tests[n], k)]
    if not test:
        raise DataError(f"{test_dir}: no class sub-folders; expected {test_dir}/<class>/{wanted}")
    return names, train, test


def split_files(
    train: Files, test: Files | None, fraction: float, seed: int
) -> tuple[Files, Files]:
    """(train, test) files: the given test folder, else a stratified share of ``train``."""
    if test is not None:
        return train, test
    tr, te = stratified_split(np.array([k for _, k in train], dtype=np.int64), fraction, seed)
    return [train[i] for i in tr], [train[i] for i in te]


# ---- CSV tables ----


def read_table(path: Path) -> Table:
    """The non-blank rows of a UTF-8 CSV file (a leading byte-order mark is allowed), each
    with the line it starts on (quoted cells may span lines). Shared with the ``imu`` source.

    Raises:
        DataError: for an unreadable file, bytes that are not UTF-8 (byte offset and line),
            or malformed CSV (line).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        content = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = data.count(b"\n", 0, at) + 1
        raise DataError(
            f"{path}: not UTF-8 at byte offset {at} (line {line}); save it as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(content, newline=""))
    rows: Table = []
    line = 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((line, cells))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def column(path: Path, table: Table, name: str, hint: str) -> int:
    """Index of column ``name`` in the header (first) row of ``table``; else a DataError
    listing the columns found, with ``hint`` (the recipe key that names the column)."""
    line, cells = table[0] if table else (1, [])
    header = [c.strip() for c in cells]
    if name not in header:
        raise DataError(
            f"{path} line {line}: no column {name!r}; the columns found are {header} ({hint})"
        )
    return header.index(name)


# ---- durations ----


def whole_samples(seconds: float, info: ValidationInfo) -> float:
    """Validator: ``seconds`` is a whole number of samples at the section's ``sample_rate_hz``
    (declared before it)."""
    rate = info.data.get("sample_rate_hz")
    if rate is not None:
        try:
            samples_of(seconds, rate, str(info.field_name))
        except DataError as exc:
            raise ValueError(str(exc)) from None
    return seconds
