"""``imu``: a folder of IMU recordings and a labels file, cut into windows.

Layout::

    path/<recording>.csv   a header row, then one row per sample; the ``channels`` columns
                           (and ``time_column``) are read, every other column is ignored
    path/<recording>.npy   or a float array [L, C]: the channels in ``channels`` order (with
                           ``time_column`` set: [L, 1 + C], timestamps first)
    labels_file            a CSV with a header row, either one row per recording
                               recording,label[,<group_column>]
                           or one row per labelled time span
                               recording,start_s,end_s,label[,<group_column>]

``recording`` is the file name without its suffix; recordings not in the labels file are not
used. Without ``time_column`` sample i is at i / ``sample_rate_hz`` seconds; with it the
timestamps (seconds, strictly increasing, jitter allowed) are linearly interpolated onto a
uniform ``sample_rate_hz`` grid starting at the first timestamp, and spans are on that clock.

Windows: a recording of L samples gives windows of W = window_s * rate samples starting at
0, S, 2S, ... (S = stride_s * rate; the tail shorter than a window is dropped). A span-labelled
window takes the label of the span that contains all of it; windows that cross a span border
or lie outside every span are dropped. Windows are float32 [N, C, T], raw values in ``units``.

The split never cuts a recording: ``test_groups`` holds out whole groups (e.g. subjects);
otherwise a seeded ``test_fraction`` of the groups (or, without ``group_column``, of the
recordings, stratified by label when recordings carry one) is held out. Group names are
numbered in sorted order (numerically when every name is an integer); without
``group_column`` each recording is its own group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from edgedistill.data.imu import samples_of
from edgedistill.errors import DataError
from edgedistill.schema import existing_dir, existing_file
from edgedistill.tasks.inputs import imu_input
from edgedistill.tasks.sources._common import (
    Table,
    column,
    label_order,
    read_table,
    stratified_split,
    whole_samples,
)
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task

_EPS = 1e-9
Span = tuple[float, float, str, str]  # start_s, end_s, label, "<file> line <n>"


class ImuFolderConfig(SourceConfig):
    """The ``data`` section of an IMU folder.

    Attributes:
        path: The folder of recordings.
        labels_file: The labels CSV (see the module docstring).
        channels: Column names to read, in model-input order.
        units: The unit of each channel (e.g. ``m/s^2``, ``rad/s``), written to the bundle.
        sample_rate_hz: Sample rate of the recordings (the resampling rate with
            ``time_column``).
        window_s, stride_s: Window length and hop in seconds (whole numbers of samples).
        time_column: CSV column of timestamps in seconds; resample onto a uniform grid.
        group_column: Column of the labels file naming each recording's group (subject).
        test_groups: Hold out exactly these groups (needs ``group_column``).
        test_fraction: Otherwise hold out this seeded share of groups or recordings.
        labels: Class names in label order (default: the sorted labels found).
    """

    source: str = "imu"
    path: Path = Field(description="folder of <recording>.csv / .npy files")
    labels_file: Path
    channels: tuple[str, ...] = Field(min_length=1)
    units: tuple[str, ...] = Field(min_length=1)
    sample_rate_hz: float = Field(gt=0)
    window_s: float = Field(gt=0)
    stride_s: float = Field(gt=0)
    time_column: str | None = None
    group_column: str | None = None
    test_groups: tuple[str | int, ...] | None = Field(default=None, min_length=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    labels: tuple[str, ...] | None = Field(default=None, min_length=2)

    _path = field_validator("path")(existing_dir)
    _labels_file = field_validator("labels_file")(existing_file)
    _whole = field_validator("window_s", "stride_s")(whole_samples)

    @field_validator("units")
    @classmethod
    def _one_unit_per_channel(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        channels = info.data.get("channels")
        if channels is not None and len(value) != len(channels):
            raise ValueError(f"{len(value)} units for {len(channels)} channels; give one each")
        return value

    @field_validator("test_groups")
    @classmethod
    def _groups_need_column(cls, value: tuple[str | int, ...] | None, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("group_column") is None:
            raise ValueError("test_groups needs group_column (the labels-file column of groups)")
        return value

    @field_validator("test_fraction")
    @classmethod
    def _not_both(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("test_groups") is not None:  # runs only when test_fraction is given
            raise ValueError("give test_groups or test_fraction, not both")
        return value


@dataclass(frozen=True)
class _Labels:
    """The labels file: per recording its label (None when span-labelled), spans, group and
    first line; the class names."""

    label: dict[str, str | None]
    spans: dict[str, list[Span]]
    group: dict[str, str]
    where: dict[str, str]
    names: tuple[str, ...]


def _read_labels(cfg: ImuFolderConfig) -> _Labels:
    path = cfg.labels_file
    table = [(line, [c.strip() for c in cells]) for line, cells in read_table(path)]
    if len(table) < 2:
        raise DataError(
            f"{path}: has no rows; expected a header recording,label or "
            "recording,start_s,end_s,label and one row per recording or span"
        )
    header = table[0][1]
    spanned = "start_s" in header or "end_s" in header
    keys = ("recording", "start_s", "end_s", "label") if spanned else ("recording", "label")
    cols = [column(path, table, k, "the labels file") for k in keys]
    if cfg.group_column is not None:
        cols.append(column(path, table, cfg.group_column, "data.group_column"))
    out = _Labels({}, {}, {}, {}, ())
    for line, cells in table[1:]:
        where = f"{path} line {line}"
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} cells but the header has {len(header)}")
        values = [cells[c] for c in cols]
        name, tag = values[0], values[len(keys) - 1]
        if not name or not tag:
            raise DataError(f"{where}: recording and label must not be empty")
        if cfg.group_column is not None:
            if not values[-1]:
                raise DataError(f"{where}: empty {cfg.group_column!r}")
            if out.group.setdefault(name, values[-1]) != values[-1]:
                raise DataError(f"{where}: recording {name!r} is in two groups")
        if not spanned and name in out.label:
            raise DataError(f"{where}: recording {name!r} is listed twice")
        out.where.setdefault(name, where)
        if not spanned:
            out.label[name] = tag
            continue
        try:
            a, b = float(values[1]), float(values[2])
        except ValueError:
            raise DataError(f"{where}: start_s and end_s must be numbers") from None
        if not (math.isfinite(a) and math.isfinite(b) and a < b):
            raise DataError(f"{where}: need finite start_s < end_s, got {a} and {b}")
        out.label[name] = None
        out.spans.setdefault(name, []).append((a, b, tag, where))
    for name, items in out.spans.items():
        items.sort()
        for (_, b, _, _), (a, _, _, where) in pairwise(items):
            if a < b - _EPS:
                raise DataError(f"{where}: span overlaps another span of recording {name!r}")
    found = {t for t in out.label.values() if t is not None}
    found |= {s[2] for v in out.spans.values() for s in v}
    names = label_order(found) if cfg.labels is None else cfg.labels
    unknown = sorted(found - set(names))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not in data.labels {list(names)}")
    if len(names) < 2:
        raise DataError(f"{path}: needs at least 2 classes, found {list(names)}")
    return replace(out, names=names)


def _numbers(path: Path, table: Table, wanted: list[str]) -> np.ndarray:
    """float64 [rows, len(wanted)] of a CSV table; a bad cell is named by line and column."""
    header = table[0][1] if table else []
    cols = [column(path, table, c, "data.channels / data.time_column") for c in wanted]
    for line, cells in table[1:]:
        if len(cells) != len(header):
            raise DataError(f"{path} line {line}: {len(cells)} cells but {len(header)} columns")
    rows = [[cells[c] for c in cols] for _, cells in table[1:]]
    try:
        data = np.array(rows, dtype=np.float64).reshape(-1, len(wanted))
        if np.isfinite(data).all():
            return data
    except ValueError:
        pass
    for (line, _), row in zip(table[1:], rows, strict=True):
        for name, cell in zip(wanted, row, strict=True):
            if not _finite(cell):
                raise DataError(f"{path} line {line}, column {name!r}: {cell!r} is not a number")
    raise AssertionError("unreachable: some cell did not parse")  # pragma: no cover


def _finite(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def _read_recording(cfg: ImuFolderConfig, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(times [L] in s, values [L, C] float64) of one recording on the uniform grid."""
    csv_path, npy_path = cfg.path / f"{name}.csv", cfg.path / f"{name}.npy"
    if csv_path.is_file() == npy_path.is_file():
        state = "both exist; keep one" if csv_path.is_file() else "neither exists"
        raise DataError(f"{where}: recording {name!r} needs {csv_path} or .npy ({state})")
    timed = cfg.time_column is not None
    width = len(cfg.channels) + timed
    if npy_path.is_file():
        path = npy_path
        try:
            data = np.load(npy_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{npy_path}: cannot read as a .npy array ({exc})") from None
        if data.ndim != 2 or data.shape[1] != width or not np.issubdtype(data.dtype, np.number):
            columns = ", ".join((["time"] if timed else []) + list(cfg.channels))
            raise DataError(
                f"{npy_path}: need a numeric [L, {width}] array ({columns}), got {data.dtype} "
                f"{list(data.shape)}"
            )
        data = data.astype(np.float64)
        bad = np.argwhere(~np.isfinite(data))
        if len(bad):
            raise DataError(f"{path}: row {bad[0][0]}, column {bad[0][1]} is not a finite number")
        row_name = [f"row {i}" for i in range(len(data))]
    else:
        path = csv_path
        table = [(line, [c.strip() for c in cells]) for line, cells in read_table(path)]
        wanted = ([cfg.time_column] if cfg.time_column else []) + list(cfg.channels)
        data = _numbers(path, table, wanted)
        row_name = [f"line {line}" for line, _ in table[1:]]
    if not timed:
        return np.arange(len(data)) / cfg.sample_rate_hz, data
    times = data[:, 0]
    if len(times) < 2:
        raise DataError(f"{path}: needs at least 2 timestamps, has {len(times)}")
    steps = np.flatnonzero(np.diff(times) <= 0)
    if len(steps):
        raise DataError(
            f"{path} {row_name[int(steps[0]) + 1]}, column {cfg.time_column!r}: timestamp is "
            "not after the previous one; timestamps must strictly increase"
        )
    return resample_uniform(times, data[:, 1:], cfg.sample_rate_hz)


def resample_uniform(
    times: np.ndarray, values: np.ndarray, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of [L, C] ``values`` at increasing ``times`` onto the uniform grid
    ``times[0] + k / rate`` up to the last timestamp (as :mod:`edgedistill.data.paired_io`)."""
    count = math.floor((times[-1] - times[0]) * rate + 1e-6) + 1
    grid = times[0] + np.arange(count) / rate
    return grid, np.stack([np.interp(grid, times, values[:, c]) for c in range(values.shape[1])], 1)


def _span_label(spans: list[Span], start: float, length: float) -> str | None:
    """The label of the span containing [start, start + length], or None."""
    for a, b, tag, _ in spans:
        if a <= start + _EPS and b >= start + length - _EPS:
            return tag
    return None


def _held_out(cfg: ImuFolderConfig, labels: _Labels, groups: np.ndarray, seed: int) -> list[int]:
    """The group ids of the test split."""
    group_names = _group_names(cfg, labels)
    kind = "group" if cfg.group_column else "recording"
    if cfg.test_groups is not None:
        held = sorted({str(t) for t in cfg.test_groups})
        unknown = [t for t in held if t not in group_names]
        if unknown:
            raise DataError(
                f"{cfg.labels_file}: data.test_groups {unknown} are not in column "
                f"{cfg.group_column!r} (groups: {list(group_names)})"
            )
        return [group_names.index(t) for t in held]
    present = np.unique(groups)
    strata = np.zeros(len(present), dtype=np.int64)
    if cfg.group_column is None and not labels.spans:  # stratify recordings by their label
        strata = np.array([labels.names.index(str(labels.label[group_names[i]])) for i in present])
    if len(present) < 2:
        raise DataError(
            f"{cfg.labels_file}: only one {kind} has windows; holding out whole {kind}s needs "
            "at least 2"
        )
    test = stratified_split(strata, cfg.test_fraction, seed)[1]
    if not len(test):  # every label has a single recording: split them unstratified
        test = stratified_split(np.zeros_like(strata), cfg.test_fraction, seed)[1]
    return [int(t) for t in present[test]]


def _group_names(cfg: ImuFolderConfig, labels: _Labels) -> tuple[str, ...]:
    return label_order(labels.group.values() if cfg.group_column else labels.label)


@register_source("imu", ImuFolderConfig)
def load_imu_folder(cfg: ImuFolderConfig, context: SourceContext) -> Task:
    """Read, resample and window every labelled recording, then split by group."""
    rate = cfg.sample_rate_hz
    size = samples_of(cfg.window_s, rate, "data.window_s")
    stride = samples_of(cfg.stride_s, rate, "data.stride_s")
    labels = _read_labels(cfg)
    group_names = _group_names(cfg, labels)
    xs, ys, gs, longest = [], [], [], (0, "")
    for name in sorted(labels.label):
        times, values = _read_recording(cfg, name, labels.where[name])
        longest = max(longest, (len(values), name))
        if len(values) < size:
            continue  # shorter than one window
        cut = np.lib.stride_tricks.sliding_window_view(values, size, axis=0)[::stride]
        tag = labels.label[name]
        found = [
            tag if tag is not None else _span_label(labels.spans[name], t, cfg.window_s)
            for t in times[np.arange(len(cut)) * stride]
        ]
        keep = [i for i, f in enumerate(found) if f is not None]
        xs.append(cut[keep].astype(np.float32))
        ys.append(np.array([labels.names.index(str(found[i])) for i in keep], dtype=np.int64))
        group = labels.group[name] if cfg.group_column else name
        gs.append(np.full(len(keep), group_names.index(group), dtype=np.int64))
    if not xs:
        raise DataError(
            f"{cfg.path}: data.window_s = {cfg.window_s} s ({size} samples) is longer than every "
            f"recording (the longest, {longest[1]!r}, has {longest[0]} samples)"
        )
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    if not len(x):
        raise DataError(f"{cfg.labels_file}: no window lies inside a labelled span")
    test = np.isin(g, _held_out(cfg, labels, g, context.seed))
    if test.all():
        raise DataError(f"{cfg.labels_file}: data.test_groups hold out every window")
    return Task(
        name=cfg.name or cfg.path.name,
        input=imu_input(
            x[~test],
            channels=cfg.channels,
            units=cfg.units,
            sample_rate_hz=rate,
            window_s=cfg.window_s,
            stride_s=cfg.stride_s,
        ),
        labels=labels.names,
        x_train=np.ascontiguousarray(x[~test]),
        y_train=y[~test],
        x_test=np.ascontiguousarray(x[test]),
        y_test=y[test],
        groups_train=g[~test],
        groups_test=g[test],
        source=str(cfg.path),
    )
