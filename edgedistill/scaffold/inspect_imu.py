"""IMU recordings with a labels file (the ``imu`` source).

Layout found::

    folder/labels.csv            header with ``recording`` and ``label`` (or spans:
                                 ``recording,start_s,end_s,label``), optionally a group column
    folder/<recording>.csv|.npy  the recordings, beside the labels file or in one sub-folder

The labels file and every recording it names are read with the ``imu`` source's own readers
(:mod:`edgedistill.tasks.sources.imu_folder`), so a problem init reports is the one a run would
hit. The sample rate comes from a time column (seconds) when the CSV recordings have one;
otherwise it must be given (``--sample-rate``). The window is at most 2 s and fits the shorter
labelled recordings or spans; the stride is half a window.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.errors import DataError, EdgeDistillError, RecipeError
from edgedistill.scaffold.findings import Findings, spread
from edgedistill.tasks.sources._common import read_table
from edgedistill.tasks.sources.imu_folder import (
    ImuFolderConfig,
    _Labels,
    _read_labels,
    _read_recording,
)

TIME_COLUMNS = ("time", "time_s", "t", "timestamp", "timestamp_s", "seconds", "sec", "elapsed_s")
GROUP_COLUMNS = ("subject", "user", "participant", "person", "group", "session", "patient")
LABEL_KEYS = ("recording", "label")
MAX_WINDOW_S = 2.0
MIN_WINDOW_SAMPLES = 8
TEST_FRACTION = 0.2


def _header(path: Path) -> list[str]:
    """The first row of a CSV file, stripped ([] when unreadable or empty)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [c.strip() for c in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def find_labels_file(folder: Path) -> tuple[Path, Path] | None:
    """(labels file, folder of recordings) of an IMU layout, or None when ``folder`` has no
    CSV whose header holds ``recording`` and ``label``.

    Raises:
        DataError: two labels files, or no recordings beside the labels file nor in exactly
            one sub-folder.
    """
    candidates = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() == ".csv" and set(LABEL_KEYS) <= set(_header(p))
    ]
    if not candidates:
        return None
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DataError(f"{folder}: several labels files ({names}); keep one")
    labels = candidates[0]

    def recordings(where: Path) -> list[Path]:
        return [
            p
            for p in where.iterdir()
            if p.is_file() and p.suffix.lower() in (".csv", ".npy") and p != labels
        ]

    if recordings(folder):
        return labels, folder
    subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    with_data = [d for d in subs if recordings(d)]
    if len(with_data) == 1:
        return labels, with_data[0]
    raise DataError(
        f"{folder}: found the labels file {labels.name} but "
        + (
            f"recordings in several sub-folders ({', '.join(d.name for d in with_data)}); keep one"
            if with_data
            else "no recordings (<recording>.csv or .npy) beside it or in one sub-folder"
        )
    )


def _config(**values: object) -> ImuFolderConfig:
    """An unvalidated section for the source's readers (they use only the fields given)."""
    base: dict[str, Any] = {"group_column": None, "labels": None, "time_column": None}
    return ImuFolderConfig.model_construct(None, **{**base, **values})


def _rate_from_times(path: Path, column: str) -> float:
    """1 / the median step of a recording's time column, rounded to a whole Hz when within
    2 % of one."""
    table = read_table(path)
    index = [c.strip() for c in table[0][1]].index(column)
    try:
        times = np.array([float(cells[index]) for _, cells in table[1:]])
    except (ValueError, IndexError):
        raise DataError(f"{path}: column {column!r} holds something that is not a number") from None
    steps = np.diff(times)
    if len(steps) == 0 or not np.all(np.isfinite(steps)) or np.median(steps) <= 0:
        raise DataError(f"{path}: column {column!r} does not increase; pass --sample-rate HZ")
    rate = 1.0 / float(np.median(steps))
    whole = round(rate)
    return float(whole) if whole and abs(rate - whole) <= 0.02 * rate else round(rate, 3)


def _channels(first: Path, time_column: str | None, group_like: set[str]) -> list[str]:
    """The numeric columns of the first CSV recording, minus the time column."""
    table = read_table(first)
    header = [c.strip() for c in table[0][1]] if table else []
    rows = [cells for _, cells in table[1:6]]
    numeric = []
    for i, name in enumerate(header):
        if name == time_column or name.lower() in group_like or not name:
            continue
        try:
            [float(r[i]) for r in rows]
        except (ValueError, IndexError):
            continue
        numeric.append(name)
    if not numeric:
        raise DataError(f"{first}: no numeric channel columns (columns: {header})")
    return numeric


def inspect_imu(
    labels_file: Path, recordings: Path, *, sample_rate: float | None = None
) -> Findings:
    """Read the labels file and every labelled recording; propose the ``imu`` section.

    Args:
        labels_file: The CSV naming each recording's label (or labelled spans).
        recordings: The folder of ``<recording>.csv`` / ``.npy`` files.
        sample_rate: The recordings' rate in Hz; required when they have no time column
            (with one, the resampling rate; default: the rate the timestamps show).

    Raises:
        RecipeError: no time column and no ``sample_rate``.
        DataError: an unreadable labels file, fewer than 2 classes, no labelled recording.
    """
    header = _header(labels_file)
    extra = [c for c in header if c not in ("recording", "label", "start_s", "end_s")]
    groups = [c for c in extra if c.lower() in GROUP_COLUMNS]
    group_column = groups[0] if groups else None
    labels = _read_labels(_config(labels_file=labels_file, group_column=group_column))
    names = sorted(labels.label)
    files = {
        n: [recordings / f"{n}{s}" for s in (".csv", ".npy") if (recordings / f"{n}{s}").is_file()]
        for n in names
    }
    present = [n for n in names if files[n]]
    if not present:
        raise DataError(
            f"{labels_file}: names {len(names)} recordings but none of them is in {recordings} "
            f"as <recording>.csv or .npy (e.g. {names[0]}.csv)"
        )
    first = files[present[0]][0]
    csv_first = first.suffix.lower() == ".csv"
    first_header = _header(first) if csv_first else []
    times = [c for c in first_header if c.lower() in TIME_COLUMNS]
    time_column = times[0] if times else None
    if time_column is not None:
        measured = _rate_from_times(first, time_column)
        rate = float(sample_rate) if sample_rate else measured
        rate_line = f"{measured:g} Hz from column {time_column!r}" + (
            f"; resampled to {rate:g} Hz (--sample-rate)" if sample_rate else ""
        )
    elif sample_rate:
        rate = float(sample_rate)
        rate_line = f"{rate:g} Hz (--sample-rate)"
    else:
        what = f"columns {first_header}" if csv_first else "a .npy array"
        raise RecipeError(
            f"{first}: no time column ({what}) to read the sample rate from; pass "
            "--sample-rate HZ (the rate the recordings were sampled at)"
        )
    if csv_first:
        channels = _channels(first, time_column, {g.lower() for g in GROUP_COLUMNS})
    else:
        width = np.load(first, mmap_mode="r", allow_pickle=False).shape[-1]
        channels = [f"ch{i}" for i in range(width)]
    cfg = _config(
        path=recordings,
        labels_file=labels_file,
        channels=tuple(channels),
        sample_rate_hz=rate,
        time_column=time_column,
        group_column=group_column,
    )
    corrupt: list[str] = []
    missing: list[str] = []
    lengths: dict[str, int] = {}
    grids: dict[str, np.ndarray] = {}
    for name in names:
        if not files[name]:
            missing.append(f"{labels.where[name]}: recording {name!r} has no {name}.csv/.npy")
            continue
        try:
            grid, values = _read_recording(cfg, name, labels.where[name])
        except EdgeDistillError as exc:
            corrupt.append(str(exc))
            continue
        lengths[name], grids[name] = len(values), grid
    segments = _segment_seconds(labels, lengths, rate)
    window = _window_samples(segments, rate)
    stride = max(1, window // 2)
    window_s, stride_s = round(window / rate, 9), round(stride / rate, 9)
    counts = _window_counts(labels, grids, window, stride, rate)
    classes = {n: counts.get(n, 0) for n in labels.names}
    kind = f"{group_column!r} group" if group_column else "recording"
    holders = {labels.group[n] if group_column else n for n, g in grids.items() if len(g) >= window}
    if not corrupt and not missing and len(holders) < 2:
        raise DataError(
            f"{labels_file}: {len(holders)} {kind} has windows of {window_s:g} s; the test split "
            f"holds out whole {kind}s, so it needs at least 2"
        )
    found = Findings(
        modality="imu",
        path=recordings,
        layout=(
            f"{len(lengths)} recordings in {recordings}, labels in {labels_file.name}"
            + (" (labelled time spans)" if labels.spans else " (one label per recording)")
            + "; whole "
            + (f"{group_column!r} groups" if group_column else "recordings")
            + f" are held out for testing (a seeded {TEST_FRACTION:.0%})"
        ),
        classes=classes,
        unit="windows",
        held_out=round(TEST_FRACTION * sum(classes.values())),
        corrupt=missing + corrupt,
    )
    per_class = Counter(t for n, t in labels.label.items() if t is not None and n in lengths)
    found.facts += [
        ("channels", ", ".join(channels)),
        ("sample rate", rate_line),
        ("recording lengths", spread([n / rate for n in lengths.values()], "s", 1)),
        ("window / stride", f"{window_s:g} s ({window} samples) / {stride_s:g} s"),
    ]
    if per_class:
        found.facts.append(
            ("recordings per class", ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())))
        )
    if group_column is not None:
        found.facts.append(("groups", f"{len(set(labels.group.values()))} in {group_column!r}"))
    unused = sorted(
        p.stem
        for p in recordings.iterdir()
        if p.suffix.lower() in (".csv", ".npy") and p != labels_file and p.stem not in labels.label
    )
    if unused:
        found.notes.append(
            f"{len(unused)} recording(s) not in {labels_file.name} are not used: "
            + ", ".join(unused[:5])
            + (" ..." if len(unused) > 5 else "")
        )
    found.data = {
        "source": "imu",
        "path": recordings,
        "labels_file": labels_file,
        "channels": channels,
        "units": ["unknown"] * len(channels),
        "sample_rate_hz": rate if rate != int(rate) else int(rate),
        "window_s": window_s,
        "stride_s": stride_s,
    }
    if time_column is not None:
        found.data["time_column"] = time_column
    if group_column is not None:
        found.data["group_column"] = group_column
    found.comments = {
        "source": "recordings + a labels file (edgedistill/tasks/sources/imu_folder.py)",
        "path": "folder of <recording>.csv / .npy, relative to this recipe file",
        "labels_file": "recording,label (or recording,start_s,end_s,label) per row",
        "channels": "model-input order",
        "units": "TODO: the unit of each channel (e.g. m/s^2, rad/s, g); written into the bundle",
        "sample_rate_hz": "resampled onto this uniform grid"
        if time_column
        else "as given by --sample-rate",
        "window_s": "seconds per window (a whole number of samples)",
        "stride_s": "hop between windows; half a window",
        "time_column": "timestamps in seconds",
        "group_column": "whole groups are held out: the test split never shares a "
        f"{group_column} with training",
    }
    found.input = {
        "channels": len(channels),
        "channel_names": channels,
        "sample_rate_hz": rate,
        "window_s": window_s,
        "timed": time_column is not None,
    }
    return found


def _segment_seconds(labels: _Labels, lengths: dict[str, int], rate: float) -> list[float]:
    """Seconds of every labelled stretch: whole recordings, or spans (cut to the recording)."""
    spans: dict[str, list[tuple[float, float, str, str]]] = labels.spans
    out = []
    for name, n in lengths.items():
        if name in spans:
            out += [min(b, n / rate) - a for a, b, _, _ in spans[name] if b > a]
        else:
            out.append(n / rate)
    return [s for s in out if s > 0]


def _window_samples(segments: list[float], rate: float) -> int:
    """At most 2 s; at most the lower quartile of the labelled stretches; >= 8 samples."""
    if not segments:
        return max(MIN_WINDOW_SAMPLES, round(MAX_WINDOW_S * rate))
    quartile = statistics.quantiles(segments, n=4)[0] if len(segments) > 1 else segments[0]
    seconds = min(MAX_WINDOW_S, quartile)
    return max(MIN_WINDOW_SAMPLES, math.floor(seconds * rate + 1e-6))


def _window_counts(
    labels: _Labels, grids: dict[str, np.ndarray], window: int, stride: int, rate: float
) -> Counter[str]:
    """Windows per class, counted as the ``imu`` source cuts them."""
    label: dict[str, str | None] = labels.label
    spans: dict[str, list[tuple[float, float, str, str]]] = labels.spans
    counts: Counter[str] = Counter()
    eps = 1e-9
    for name, grid in grids.items():
        if len(grid) < window:
            continue
        starts = grid[np.arange((len(grid) - window) // stride + 1) * stride]
        tag = label.get(name)
        if tag is not None:
            counts[tag] += len(starts)
            continue
        for t in starts:
            for a, b, span_tag, _ in spans.get(name, []):
                if a <= t + eps and b >= t + window / rate - eps:
                    counts[span_tag] += 1
                    break
    return counts
