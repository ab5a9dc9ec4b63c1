"""Time-synchronised video + IMU (+ audio) recordings on disk, cut into :class:`PairedWindows`.

Folder layout (COMODO / Ego4D style); ``<rec>`` is a name listed in ``recordings.csv``::

    root/
      recordings.csv     header ``recording,subject[,label]``, one row per recording. subject:
                         an integer id or any name (names are numbered 0.. in sorted order and
                         kept in ``extra["subject_names"]``). label (optional column; an empty
                         cell = none): the activity of the whole recording.
      annotations.csv    optional, header ``recording,start_s,end_s,label``: labelled segments.
                         A window takes the label of the segment covering its whole span, else
                         -1. A recording is labelled here or in recordings.csv, not both.
      imu/<rec>.npy      numeric array [T, 1 + C]: column 0 = timestamp in seconds, then C
                         channels (named by ``channels``; default acc_x..gyro_z for C = 6,
                         else ch0, ch1, ...).
      imu/<rec>.csv      or a CSV with a header: a timestamp column (``timestamp_s``, else
                         ``canonical_timestamp_ms`` or ``timestamp_ms``, divided by 1000) and
                         channel columns (``channels`` in that order, default every column but
                         those and ``component_timestamp_ms`` / ``component_idx``).
      video/<rec>.mp4    decoded with PyAV (``pip install av``); frame time = pts x time_base.
      frames/<rec>/      or pre-extracted frames ``frame_%06d.png`` / ``.jpg`` (read with
                         Pillow) and ``timestamps.csv`` with header ``frame,timestamp_s``, where
                         frame is the number in the file name.
      audio/<rec>.wav    only with ``with_audio``: mono 16-bit PCM at ``audio_rate_hz``;
                         sample k is at k / rate seconds.

All streams of a recording share one clock in seconds. Timestamps must strictly increase.
Each recording needs exactly one IMU file and exactly one of video/<rec>.mp4 or frames/<rec>/.

Windows, per recording: the IMU is linearly interpolated onto a uniform ``imu_rate_hz`` grid;
each point of a uniform ``fps`` grid takes the nearest frame (one more than a source-frame
interval away is a gap, refused); audio samples are taken as stored. Window starts run from the
latest stream start in steps of ``stride_s``; a window is kept when every grid point of every
stream lies within that stream's time range (the overlap of the streams).
"""

from __future__ import annotations

import math
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgedistill.data.imu import samples_of
from edgedistill.data.paired import PairedWindows
from edgedistill.errors import DataError

if TYPE_CHECKING:
    from edgedistill.progress import Advance

from edgedistill.data.paired_readers import (
    _EPS,
    _check_name,
    _frame_source,
    _Frames,
    _import,
    _read_audio,
    _read_imu,
    _read_labels,
    _write_csv,
)


@dataclass(frozen=True)
class PairedRecording:
    """One synchronised recording in memory, as :func:`write_paired_folder` writes it.

    Attributes:
        name: Recording name, used as a file name (no path separators).
        subject: Subject id or name.
        imu_times: [T] IMU timestamps in seconds. imu: [T, C] IMU samples.
        frame_times: [F] frame timestamps in seconds. frames: [F, H, W, 3] uint8 RGB.
        label: Activity of the whole recording, or None.
        audio: [S] mono waveform (float in [-1, 1], or int16), or None.
        audio_rate_hz: Audio sample rate.
    """

    name: str
    subject: int | str
    imu_times: np.ndarray
    imu: np.ndarray
    frame_times: np.ndarray
    frames: np.ndarray
    label: str | None = None
    audio: np.ndarray | None = None
    audio_rate_hz: float = 16000.0

    def __post_init__(self) -> None:
        _check_name(self.name, "PairedRecording")
        f, imu = self.frames, self.imu
        ok = imu.ndim == 2 and self.imu_times.shape == (len(imu),) and f.ndim == 4
        ok = ok and f.shape[-1] == 3 and f.dtype == np.uint8 and len(self.frame_times) == len(f)
        if not ok or (self.audio is not None and self.audio.ndim != 1):
            raise DataError(
                f"recording {self.name}: need imu [T, C], imu_times [T], uint8 frames "
                "[F, H, W, 3], frame_times [F] and mono audio [S] (or None)"
            )


def write_paired_folder(
    root: Path,
    recordings: Sequence[PairedRecording],
    *,
    annotations: Sequence[tuple[str, float, float, str]] = (),
) -> Path:
    """Write recordings in this module's layout (IMU as .npy, frames as PNG + timestamps.csv).

    Args:
        root: Folder to write into (created); it must not hold a recordings.csv yet.
        recordings: The recordings; names must be unique.
        annotations: Optional ``(recording, start_s, end_s, label)`` segments.

    Returns:
        ``root``.

    Raises:
        DataError: for an existing recordings.csv or no / repeated recording names.
    """
    image = _import("PIL.Image", "pillow", "writing frames")
    root = Path(root)
    names = [r.name for r in recordings]
    if (root / "recordings.csv").exists() or not names or len(set(names)) != len(names):
        raise DataError(f"{root}: need an empty folder and unique recording names, got {names}")
    labelled = any(r.label is not None for r in recordings)
    table = [["recording", "subject", "label"][: 2 + labelled]]
    for rec in recordings:
        table.append([rec.name, str(rec.subject), rec.label or ""][: 2 + labelled])
        (root / "imu").mkdir(parents=True, exist_ok=True)
        np.save(root / "imu" / f"{rec.name}.npy", np.column_stack([rec.imu_times, rec.imu]))
        folder = root / "frames" / rec.name
        folder.mkdir(parents=True)
        for i, frame in enumerate(rec.frames):
            image.fromarray(frame).save(folder / f"frame_{i:06d}.png")
        stamps = [[str(i), repr(float(t))] for i, t in enumerate(rec.frame_times)]
        _write_csv(folder / "timestamps.csv", [["frame", "timestamp_s"], *stamps])
        if rec.audio is not None:
            audio = rec.audio
            if audio.dtype != np.int16:
                audio = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
            (root / "audio").mkdir(exist_ok=True)
            with wave.open(str(root / "audio" / f"{rec.name}.wav"), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(round(rec.audio_rate_hz))
                out.writeframes(audio.astype("<i2").tobytes())
    _write_csv(root / "recordings.csv", table)
    if annotations:
        rows = [["recording", "start_s", "end_s", "label"]]
        rows += [[r, repr(float(a)), repr(float(b)), lab] for r, a, b, lab in annotations]
        _write_csv(root / "annotations.csv", rows)
    return root


def load_paired_folder(
    root: Path,
    *,
    window_s: float,
    stride_s: float,
    imu_rate_hz: float = 50.0,
    fps: float = 10.0,
    frame_size: int | None = None,
    channels: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    with_audio: bool = False,
    audio_rate_hz: float = 16000.0,
    progress: Advance | None = None,
) -> PairedWindows:
    """Load a folder in the layout above and cut every recording into synchronised windows.

    Args:
        root: The dataset folder.
        window_s: Window length in seconds, a whole number of samples at every rate used.
        stride_s: Hop between window starts in seconds, likewise whole at every rate.
        imu_rate_hz: The uniform rate the IMU is resampled to.
        fps: Frames per second of the windows' video.
        frame_size: Resize frames to ``frame_size`` x ``frame_size`` (bilinear); None keeps
            the source size, which must then be the same everywhere.
        channels: IMU channels: CSV columns to take, or names of the .npy columns.
        classes: Class names in label-index order; default: the sorted labels found.
        with_audio: Also cut ``audio/<rec>.wav`` into windows.
        audio_rate_hz: The sample rate every wav file must have.
        progress: Optional ``advance(n, description)``, called once per recording.

    Returns:
        All windows, in recording then time order. ``extra`` holds ``recording_names`` (the
        names the ``recordings`` indices refer to), ``subject_names`` (None for integer ids)
        and ``skipped_recordings`` (too short for one window). IMU units are "as recorded".

    Raises:
        DataError: for a missing or malformed file, timestamps that do not strictly increase,
            a window/stride not whole at a rate, IMU channels that differ between recordings,
            a gap in the frames, a label not in ``classes``, or no window at all.
        MissingDependencyError: without Pillow (frames) or PyAV (mp4).
    """
    root = Path(root)
    for what, rate in (
        ("imu_rate_hz", imu_rate_hz),
        ("fps", fps),
        ("audio_rate_hz", audio_rate_hz),
    ):
        if not (math.isfinite(rate) and rate > 0):
            raise DataError(f"{what} must be a positive number of hertz, got {rate}")
    if frame_size is not None and (not isinstance(frame_size, int) or frame_size < 1):
        raise DataError(f"frame_size must be a positive integer or None, got {frame_size!r}")
    rates = {"imu": imu_rate_hz, "video": fps} | ({"audio": audio_rate_hz} if with_audio else {})
    size = {k: samples_of(window_s, r, f"window_s ({k})") for k, r in rates.items()}
    for k, r in rates.items():
        samples_of(stride_s, r, f"stride_s ({k})")
    entries, segments, class_names = _read_labels(root, classes)
    subjects = [e[1] for e in entries]
    numbered = not all(s.lstrip("-").isdecimal() for s in subjects)
    subject_names = sorted(set(subjects)) if numbered else None
    fields: dict[str, list[np.ndarray]] = {k: [] for k in ("imu", "video", "audio", "labels")}
    fields |= {k: [] for k in ("subjects", "recordings", "start_s")}
    skipped, names = [], None
    for r, (name, subject, label) in enumerate(entries):
        times, values, rec_channels = _read_imu(root, name, channels)
        if names not in (None, rec_channels):
            raise DataError(
                f"{root}: recording {name} has IMU channels {list(rec_channels)}, earlier "
                f"recordings {list(names or ())}; every recording needs the same channels"
            )
        names = rec_channels
        frames = _frame_source(root, name)
        audio = _read_audio(root / "audio" / f"{name}.wav", audio_rate_hz) if with_audio else None
        # Starts whose every grid point lies inside every stream's time range.
        first = max(times[0], frames.times[0], -math.inf if audio is None else 0.0)
        last = min(
            times[-1] - (size["imu"] - 1) / imu_rate_hz,
            frames.times[-1] - (size["video"] - 1) / fps,
            math.inf if audio is None else (len(audio) - size["audio"]) / audio_rate_hz,
        )
        count = math.floor((last - first) / stride_s + 1e-6) + 1 if last > first - _EPS else 0
        starts = first + np.arange(count) * stride_s
        if progress is not None:
            progress(1, description=name)
        if not count:
            skipped.append(name)
            continue
        grid = starts[:, None] + np.arange(size["imu"]) / imu_rate_hz
        imu = np.stack([np.interp(grid, times, values[:, c]) for c in range(len(names))], 1)
        video = _cut_video(frames, starts, size["video"], fps, frame_size, f"{root}/{name}")
        if fields["video"] and video.shape[2:] != fields["video"][0].shape[2:]:
            raise DataError(
                f"{root}: recording {name} has {video.shape[2:4]} frames, earlier ones "
                f"{fields['video'][0].shape[2:4]}; pass frame_size to resize them all"
            )
        if audio is not None:
            first_sample = np.round(starts * audio_rate_hz).astype(np.int64)
            fields["audio"].append(audio[first_sample[:, None] + np.arange(size["audio"])])
        sid = subject_names.index(subject) if subject_names is not None else int(subject)
        labels = [_label(s, window_s, label, segments.get(name, [])) for s in starts]
        fields["imu"].append(imu.astype(np.float32))
        fields["video"].append(video)
        fields["labels"].append(np.array([class_names.index(x) if x else -1 for x in labels]))
        fields["subjects"].append(np.full(count, sid))
        fields["recordings"].append(np.full(count, r))
        fields["start_s"].append(starts.astype(np.float64))
    if names is None or not fields["labels"]:
        raise DataError(
            f"{root}: no recording has a {window_s} s span covered by every stream; "
            "use a shorter window_s"
        )
    arrays: dict[str, Any] = {k: np.concatenate(v) if v else None for k, v in fields.items()}
    for k in ("labels", "subjects", "recordings"):
        arrays[k] = arrays[k].astype(np.int64)
    extra: dict[str, object] = {
        "recording_names": [e[0] for e in entries],
        "subject_names": subject_names,
        "skipped_recordings": skipped,
    }
    return PairedWindows(
        **arrays,
        classes=class_names,
        imu_rate_hz=float(imu_rate_hz),
        window_s=float(window_s),
        stride_s=float(stride_s),
        fps=float(fps),
        audio_rate_hz=float(audio_rate_hz) if with_audio else 0.0,
        imu_channels=names,
        imu_units=("as recorded",) * len(names),
        source=str(root),
        extra=extra,
    )


def _cut_video(
    frames: _Frames, starts: np.ndarray, size: int, fps: float, frame_size: int | None, where: str
) -> np.ndarray:
    """[N, size, H, W, 3]: the frame nearest each point of every window's fps grid."""
    times = frames.times
    grid = starts[:, None] + np.arange(size) / fps
    right = np.clip(np.searchsorted(times, grid), 1, len(times) - 1)
    nearest = np.where(grid - times[right - 1] <= times[right] - grid, right - 1, right)
    distance = np.abs(times[nearest] - grid)
    interval = float(np.median(np.diff(times)))
    worst = np.unravel_index(int(np.argmax(distance)), distance.shape)
    if distance[worst] > interval * (1 + 1e-6):
        raise DataError(
            f"{where}: gap in the frames: none within one source-frame interval "
            f"({interval:.4f} s) of t={grid[worst]:.4f} s (nearest {distance[worst]:.4f} s away)"
        )
    wanted, inverse = np.unique(nearest, return_inverse=True)
    pictures = frames.read([int(i) for i in wanted])
    if frame_size is not None:
        image = _import("PIL.Image", "pillow", "resizing frames")
        square, bilinear = (frame_size, frame_size), image.Resampling.BILINEAR
        pictures = [np.asarray(image.fromarray(p).resize(square, bilinear)) for p in pictures]
    if len({p.shape for p in pictures}) > 1:
        raise DataError(f"{where}: frames differ in size; pass frame_size to resize them")
    return np.stack(pictures)[inverse.reshape(nearest.shape)]


def _label(
    start: float, window_s: float, label: str | None, segments: list[tuple[float, float, str]]
) -> str | None:
    """A window's label: the recording's, else that of the segment(s) covering it, else None."""
    found = {lab for a, b, lab in segments if a <= start + _EPS and b >= start + window_s - _EPS}
    return label if label is not None else found.pop() if len(found) == 1 else None


# ---- reading ------------------------------------------------------------------------------
