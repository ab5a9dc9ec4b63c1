"""Readers behind :func:`edgedistill.data.paired_io.load_paired_folder`.

Label tables, IMU files (``.npy`` with a timestamp column, or CSV with a timestamp header in
seconds or milliseconds), frames (a folder of images with ``timestamps.csv``, or an mp4 decoded
with PyAV), mono PCM16 WAV audio, and the small CSV helpers; every problem is a one-line
:class:`~edgedistill.errors.DataError` naming the file.
"""

from __future__ import annotations

import csv
import math
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.data.packaged import import_optional
from edgedistill.data.paired import IMU_CHANNELS_6AXIS
from edgedistill.errors import DataError

# IMU CSV timestamp columns in order of preference, with their factor to seconds.
_TIME_COLUMNS = {"timestamp_s": 1.0, "canonical_timestamp_ms": 1e-3, "timestamp_ms": 1e-3}
_NOT_CHANNELS = {*_TIME_COLUMNS, "component_timestamp_ms", "component_idx"}
_EPS = 1e-9
Row = tuple[str, dict[str, str]]  # ("<file> line <n>", cells by column name)


def _read_labels(
    root: Path, classes: Sequence[str] | None
) -> tuple[
    list[tuple[str, str, str | None]], dict[str, list[tuple[float, float, str]]], tuple[str, ...]
]:
    """(name, subject, label) per recording, segments per recording, and the class names."""
    path = root / "recordings.csv"
    _, rows = _read_csv(path, ("recording", "subject"))
    entries = [(row["recording"], row["subject"], row.get("label") or None) for _, row in rows]
    for (where, _), (name, subject, _) in zip(rows, entries, strict=True):
        _check_name(name, where)
        if not subject:
            raise DataError(f"{where}: recording {name} has no subject")
    names = [e[0] for e in entries]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: needs at least one row and no repeated recording: {names}")
    segments: dict[str, list[tuple[float, float, str]]] = {}
    if (root / "annotations.csv").exists():
        for where, row in _read_csv(
            root / "annotations.csv", ("recording", "start_s", "end_s", "label")
        )[1]:
            try:
                a, b = float(row["start_s"]), float(row["end_s"])
            except ValueError:
                raise DataError(f"{where}: start_s and end_s must be numbers") from None
            name = row["recording"]
            if name not in names:
                raise DataError(f"{where}: recording {name!r} is not in recordings.csv")
            if entries[names.index(name)][2] is not None:
                raise DataError(f"{where}: {name!r} also has a label in recordings.csv; keep one")
            if not (math.isfinite(a) and math.isfinite(b) and a < b and row["label"]):
                raise DataError(f"{where}: need start_s < end_s and a non-empty label")
            segments.setdefault(name, []).append((a, b, row["label"]))
    found = {e[2] for e in entries if e[2]} | {s[2] for v in segments.values() for s in v}
    if classes is None:
        return entries, segments, tuple(sorted(found))
    class_names = tuple(str(c) for c in classes)
    unknown = sorted(found - set(class_names))
    if unknown or len(set(class_names)) != len(class_names):
        raise DataError(
            f"{root}: labels {unknown} are not in classes {list(class_names)} (or classes "
            "repeats a name); list every label once"
        )
    return entries, segments, class_names


def _read_imu(
    root: Path, name: str, channels: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(times [T] in s, values [T, C] float64, channel names) of ``imu/<name>.{npy,csv}``."""
    npy, path = root / "imu" / f"{name}.npy", root / "imu" / f"{name}.csv"
    if npy.exists() == path.exists():
        state = "both exist; keep one" if npy.exists() else "neither exists"
        raise DataError(f"{root}: recording {name} needs imu/{name}.npy or .csv ({state})")
    if npy.exists():
        path = npy
        try:
            data = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{npy}: cannot read as a .npy array ({exc})") from None
        if data.ndim != 2 or data.shape[1] < 2 or not np.issubdtype(data.dtype, np.number):
            raise DataError(
                f"{npy}: need a numeric [T, 1 + C] array, got {data.shape} {data.dtype}"
            )
        count = data.shape[1] - 1
        default = IMU_CHANNELS_6AXIS if count == 6 else tuple(f"ch{i}" for i in range(count))
        names = default if channels is None else tuple(channels)
        if len(names) != count:
            raise DataError(f"{npy}: has {count} channels but channels names {len(names)}")
    else:
        header, rows = _read_csv(path, ())
        time_col = next((c for c in _TIME_COLUMNS if c in header), None)
        names = (
            tuple(c for c in header if c not in _NOT_CHANNELS)
            if channels is None
            else tuple(channels)
        )
        missing = [c for c in names if c not in header]
        if time_col is None or missing or not names:
            raise DataError(
                f"{path}: need a timestamp column (one of {list(_TIME_COLUMNS)}) and channel "
                f"columns; missing {missing or 'channels'}, the header has {header}"
            )
        try:
            data = np.array([[row[c] for c in (time_col, *names)] for _, row in rows], dtype=float)
        except ValueError as exc:
            raise DataError(f"{path}: every cell must be a number ({exc})") from None
        data = data.reshape(-1, 1 + len(names))
        data[:, 0] *= _TIME_COLUMNS[time_col]
    times, values = data[:, 0].astype(np.float64), data[:, 1:].astype(np.float64)
    _check_times(times, f"{path} (recording {name})")
    if not np.isfinite(values).all():
        raise DataError(f"{path}: IMU values contain NaN or infinity; fill or drop those rows")
    return times, values, names


def _check_times(times: np.ndarray, where: str) -> None:
    """Refuse fewer than 2, non-finite, backwards or repeated timestamps (first bad index)."""
    if len(times) < 2:
        raise DataError(f"{where}: needs at least 2 timestamps, has {len(times)}")
    bad = np.flatnonzero(~np.isfinite(times))
    if len(bad):
        raise DataError(f"{where}: timestamp {int(bad[0])} is not a finite number")
    steps = np.flatnonzero(np.diff(times) <= 0)
    if len(steps):
        i = int(steps[0]) + 1
        raise DataError(
            f"{where}: timestamp {i} ({times[i]:.6f} s) is not after timestamp {i - 1} "
            f"({times[i - 1]:.6f} s); timestamps must strictly increase (sort, drop duplicates)"
        )


@dataclass(frozen=True)
class _Frames:
    """Frame timestamps [F] and a reader of the RGB uint8 [H, W, 3] frames at given indices."""

    times: np.ndarray
    read: Callable[[list[int]], list[np.ndarray]]


def _frame_source(root: Path, name: str) -> _Frames:
    """The frames of ``frames/<name>/`` or ``video/<name>.mp4`` (exactly one must exist)."""
    folder, video = root / "frames" / name, root / "video" / f"{name}.mp4"
    if folder.is_dir() == video.exists():
        state = "both exist; keep one" if video.exists() else "neither exists"
        raise DataError(
            f"{root}: recording {name} needs video/{name}.mp4 or frames/{name}/ ({state})"
        )
    return _folder_frames(folder) if folder.is_dir() else _video_frames(video)


def _folder_frames(folder: Path) -> _Frames:
    path = folder / "timestamps.csv"
    _, rows = _read_csv(path, ("frame", "timestamp_s"))
    try:
        numbers = [int(row["frame"]) for _, row in rows]
        times = np.array([float(row["timestamp_s"]) for _, row in rows])
    except ValueError:
        raise DataError(f"{path}: frame must be integers and timestamp_s numbers") from None
    _check_times(times, str(path))
    present = {p.name for p in folder.iterdir()}
    files = []
    for n in numbers:
        found = [f"frame_{n:06d}.{e}" for e in ("png", "jpg") if f"frame_{n:06d}.{e}" in present]
        if not found:
            raise DataError(
                f"{folder}: frame_{n:06d}.png/.jpg is listed in timestamps.csv but missing"
            )
        files.append(folder / found[0])

    def read(indices: list[int]) -> list[np.ndarray]:
        image, out = _import("PIL.Image", "pillow", "reading frames"), []
        for i in indices:
            try:
                with image.open(files[i]) as picture:
                    out.append(np.asarray(picture.convert("RGB")))
            except OSError as exc:
                raise DataError(f"{files[i]}: cannot read the image ({exc})") from None
        return out

    return _Frames(times, read)


def _video_frames(path: Path) -> _Frames:
    """Frame times from the packets (no decoding); frames decoded only when read."""
    av = _import("av", "av", f"decoding {path}")
    errors = (av.error.FFmpegError, OSError, ValueError, IndexError)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pts = np.sort([p.pts for p in container.demux(stream) if p.pts is not None])
            times = pts * stream.time_base.numerator / stream.time_base.denominator
    except errors as exc:
        raise DataError(f"{path}: cannot read a video stream ({exc})") from None
    _check_times(times, str(path))

    def read(indices: list[int]) -> list[np.ndarray]:
        wanted, found = {int(pts[i]) for i in indices}, {}
        try:
            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    if frame.pts in wanted:
                        found[frame.pts] = frame.to_ndarray(format="rgb24")
                    if len(found) == len(wanted):
                        break
        except errors as exc:
            raise DataError(f"{path}: cannot decode ({exc})") from None
        if len(found) != len(wanted):
            raise DataError(
                f"{path}: frames with pts {sorted(wanted - set(found))[:5]} did not decode"
            )
        return [found[int(pts[i])] for i in indices]

    return _Frames(times, read)


def _read_audio(path: Path, rate: float) -> np.ndarray:
    """A mono 16-bit PCM wav at ``rate`` as float32 in [-1, 1)."""
    if not path.is_file():
        raise DataError(f"{path} is missing (with_audio needs one wav per recording)")
    try:
        with wave.open(str(path), "rb") as wav:
            form = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
            data = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise DataError(f"{path}: cannot read as a wav file ({exc})") from None
    if form[:2] != (1, 2) or abs(form[2] - rate) > 1e-6:
        raise DataError(
            f"{path}: is {form[0]}-channel {8 * form[1]}-bit at {form[2]} Hz; convert it to "
            f"mono 16-bit PCM at {rate:g} Hz"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


# ---- small helpers ------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[Row]]:
    """(header, rows) of a CSV file with a header row; checks the required columns."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            table = [[cell.strip() for cell in row] for row in csv.reader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from None
    header = table[0] if table else []
    missing = [c for c in required if c not in header]
    if missing or not header:
        raise DataError(f"{path}: the header row {header} lacks the columns {missing}")
    rows: list[Row] = []
    for n, cells in enumerate(table[1:], start=2):
        if cells and len(cells) != len(header):
            raise DataError(f"{path} line {n}: {len(cells)} cells but {len(header)} columns")
        if cells:
            rows.append((f"{path} line {n}", dict(zip(header, cells, strict=True))))
    return header, rows


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def _check_name(name: str, where: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DataError(f"{where}: recording name {name!r} must be a plain file name")


def _import(module: str, package: str, purpose: str) -> Any:
    """Import an optional module of the ``video`` extra."""
    return import_optional(module, package=package, extra="video", purpose=purpose)
