"""IMU (inertial sensor) classification data: fixed windows [N, C, T] cut from recordings.

Two real datasets install offline from PyPI:

* The seglearn smartwatch set (``pip install seglearn``): 140 recordings of 6-axis smartwatch
  IMU data at 50 Hz, 10 subjects each performing 7 shoulder exercises (2 recordings per subject
  and exercise, one per arm). :func:`load_watch_dataset` cuts them into windows and holds out
  whole subjects for testing.
* BasicMotions from the UEA archive, shipped in ``sktime`` (``pip install sktime``): 80 cases of
  6 channels x 100 steps at 10 Hz, 4 classes, with the archive's own train/test split.

Only the reading of files is dataset-specific; :func:`window_recordings` and
:func:`leave_subjects_out` work on any :class:`ImuRecordings` / :class:`ImuDataset`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedistill.data.packaged import load_packaged_object_npy, package_file
from edgedistill.errors import DataError

WATCH_SAMPLE_RATE_HZ = 50.0
# Accelerometer magnitudes have a median of ~1.07 over the data: g. The gyroscope's unit is
# not documented by seglearn; magnitudes (median ~2, 99th percentile ~7.6) suggest rad/s.
WATCH_UNITS = ("g", "g", "g") + ("as provided by seglearn (probably rad/s)",) * 3
DEFAULT_WATCH_TEST_SUBJECTS = (9, 10)
_WATCH_FILES = ("data/watch_dataset.npy", "datasets/data/watch_dataset.npy")
_WATCH_PURPOSE = "the smartwatch IMU dataset"

BASIC_MOTIONS_SAMPLE_RATE_HZ = 10.0
BASIC_MOTIONS_LABELS = ("standing", "running", "walking", "badminton")  # header order
# The .ts header says "3D accelerometer and a 3D gyroscope"; the order (accelerometer first)
# follows the UEA archive's description.
BASIC_MOTIONS_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
BASIC_MOTIONS_UNITS = ("as provided by sktime (UEA BasicMotions, undocumented)",) * 6


@dataclasses.dataclass(frozen=True)
class ImuNormalization:
    """Per-channel standardisation ``x = (x - mean[c]) / std[c]`` of [N, C, T] windows."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_windows(cls, windows: np.ndarray) -> ImuNormalization:
        """Statistics over samples and time of [N, C, T] training windows."""
        if windows.ndim != 3 or windows.shape[0] * windows.shape[2] == 0:
            raise DataError(f"need non-empty [N, C, T] windows, got shape {windows.shape}")
        x = windows.astype(np.float64)
        mean = x.mean(axis=(0, 2))
        std = np.maximum(x.std(axis=(0, 2)), 1e-6)  # a constant channel must not divide by 0
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def apply(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[N, C, T] raw windows -> normalised float32 tensor of the same shape."""
        x = torch.as_tensor(np.asarray(windows)).float()
        if x.ndim != 3 or x.shape[1] != len(self.mean):
            raise DataError(f"need [N, {len(self.mean)}, T] windows, got {tuple(x.shape)}")
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1)
        return (x - mean) / std

    def as_dict(self) -> dict[str, object]:
        return {"scale": "per-channel", "mean": list(self.mean), "std": list(self.std)}


@dataclasses.dataclass(frozen=True)
class ImuRecordings:
    """Variable-length recordings before windowing.

    Attributes:
        signals: one [L_i, C] float array per recording (time first, as stored).
        targets: [R] int64 class of each recording.
        subjects: [R] int64 subject id of each recording.
    """

    name: str
    signals: tuple[np.ndarray, ...]
    targets: np.ndarray
    subjects: np.ndarray
    labels: tuple[str, ...]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    sample_rate_hz: float


@dataclasses.dataclass(frozen=True)
class ImuDataset:
    """Fixed-length IMU windows in memory, channels first.

    Attributes:
        x_train: [N, C, T] float32 training windows; T = window_s * sample_rate_hz.
        y_train: [N] int64 labels.
        x_test: [M, C, T] float32 held-out windows.
        y_test: [M] int64 labels.
        labels: class names, index = label.
        channels: channel names in the order of axis C.
        units: unit of each channel.
        sample_rate_hz: samples per second.
        window_s: window length in seconds.
        stride_s: step between window starts in seconds (window_s for non-overlapping cases).
        subjects_train: [N] int64 subject of each training window, or None when unknown.
        subjects_test: [M] int64 subject of each held-out window, or None when unknown.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    sample_rate_hz: float
    window_s: float
    stride_s: float
    subjects_train: np.ndarray | None = None
    subjects_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        splits = (
            ("train", self.x_train, self.y_train, self.subjects_train),
            ("test", self.x_test, self.y_test, self.subjects_test),
        )
        for split, x, y, subjects in splits:
            if x.ndim != 3 or x.dtype != np.float32:
                raise DataError(f"{self.name}: {split} windows must be float32 [N, C, T]")
            if len(x) == 0:
                raise DataError(f"{self.name}: the {split} split is empty")
            if y.shape != (len(x),) or (subjects is not None and subjects.shape != y.shape):
                raise DataError(f"{self.name}: {split} windows, labels and subjects differ")
            if y.min() < 0 or y.max() >= len(self.labels):
                raise DataError(f"{self.name}: {split} label outside 0..{len(self.labels) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: train {self.x_train.shape} vs test {self.x_test.shape}")
        if not len(self.channels) == len(self.units) == self.x_train.shape[1]:
            raise DataError(f"{self.name}: channel names/units do not match C")
        if (self.subjects_train is None) != (self.subjects_test is None):
            raise DataError(f"{self.name}: subjects must be given for both splits or neither")

    @property
    def input_shape(self) -> tuple[int, int]:
        """(C, T) of one window."""
        c, t = self.x_train.shape[1:]
        return int(c), int(t)

    @cached_property
    def normalization(self) -> ImuNormalization:
        """Per-channel statistics of the training split."""
        return ImuNormalization.from_windows(self.x_train)

    def fingerprint(self) -> str:
        """sha256 over every array and the metadata: the data part of every cache key."""
        digest = hashlib.sha256()
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        for array in (*arrays, self.subjects_train, self.subjects_test):
            if array is None:
                digest.update(b"none")
                continue
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        meta = (self.labels, self.channels, self.units)
        digest.update(repr((meta, self.sample_rate_hz, self.window_s, self.stride_s)).encode())
        return digest.hexdigest()


def samples_of(seconds: float, sample_rate_hz: float, what: str) -> int:
    """A positive duration in seconds as a whole number of samples.

    Raises:
        DataError: if it is not positive, not finite or not a whole number of samples.
    """
    n = seconds * sample_rate_hz
    if not math.isfinite(n) or n <= 0:
        raise DataError(f"{what} must be a positive number of seconds, got {seconds}")
    k = round(n)
    if k < 1 or abs(n - k) > 1e-6 * max(1.0, n):
        raise DataError(
            f"{what}={seconds} s is {n:g} samples at {sample_rate_hz:g} Hz; "
            "it must be a whole number of samples"
        )
    return k


def window_recordings(
    recordings: ImuRecordings,
    *,
    window_s: float,
    stride_s: float,
    test_subjects: Sequence[int],
) -> ImuDataset:
    """Cut every recording into windows and hold out ``test_subjects``.

    A recording of L samples gives ``(L - W) // S + 1`` windows starting at 0, S, 2S, ... (the
    tail shorter than a window is dropped); W and S are the window and stride in samples.
    Windows keep the recording order, then time order.

    Raises:
        DataError: for a window or stride that is not a whole number of samples, a window
            longer than the shortest recording, or a bad subject split.
    """
    rate = recordings.sample_rate_hz
    size = samples_of(window_s, rate, "window_s")
    stride = samples_of(stride_s, rate, "stride_s")
    shortest = min(len(s) for s in recordings.signals)
    if size > shortest:
        raise DataError(
            f"window_s={window_s} s ({size} samples) is longer than the shortest recording "
            f"({shortest} samples, {shortest / rate:g} s)"
        )
    windows, targets, subjects = [], [], []
    for signal, target, subject in zip(
        recordings.signals, recordings.targets, recordings.subjects, strict=True
    ):
        # [L, C] -> [L - W + 1, C, W]: every start, channels first; keep every stride-th.
        cut = np.lib.stride_tricks.sliding_window_view(signal, size, axis=0)[::stride]
        windows.append(cut.astype(np.float32))
        targets.append(np.full(len(cut), target, dtype=np.int64))
        subjects.append(np.full(len(cut), subject, dtype=np.int64))
    x, y, s = np.concatenate(windows), np.concatenate(targets), np.concatenate(subjects)
    return ImuDataset(
        name=recordings.name,
        labels=recordings.labels,
        channels=recordings.channels,
        units=recordings.units,
        sample_rate_hz=rate,
        window_s=float(window_s),
        stride_s=float(stride_s),
        **_split_by_subject(x, y, s, test_subjects),
    )


def leave_subjects_out(dataset: ImuDataset, test_subjects: Sequence[int]) -> ImuDataset:
    """Pool both splits and split again so that exactly ``test_subjects`` are held out.

    Windows keep their relative order (train first, then test), so the same subjects give
    back an identical dataset. The normalisation follows the new training split.

    Raises:
        DataError: if the dataset has no subject ids, a subject is unknown, no subject is
            named, or every subject is named (the training split would be empty).
    """
    if dataset.subjects_train is None or dataset.subjects_test is None:
        raise DataError(f"{dataset.name} has no subject ids; it cannot be split by subject")
    x = np.concatenate([dataset.x_train, dataset.x_test])
    y = np.concatenate([dataset.y_train, dataset.y_test])
    s = np.concatenate([dataset.subjects_train, dataset.subjects_test])
    return dataclasses.replace(dataset, **_split_by_subject(x, y, s, test_subjects))


def _split_by_subject(
    x: np.ndarray, y: np.ndarray, subjects: np.ndarray, test_subjects: Sequence[int]
) -> dict[str, Any]:
    """The six split arrays of an :class:`ImuDataset`, holding out ``test_subjects``."""
    known = sorted(int(k) for k in np.unique(subjects))
    wanted = sorted({int(k) for k in test_subjects})
    if not wanted:
        raise DataError("test_subjects is empty; name at least one subject to hold out")
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise DataError(f"unknown test subjects {unknown}; known subjects: {known}")
    if wanted == known:
        raise DataError(f"holding out every subject {known} leaves the training split empty")
    test = np.isin(subjects, wanted)
    return {
        "x_train": x[~test],
        "y_train": y[~test],
        "subjects_train": subjects[~test],
        "x_test": x[test],
        "y_test": y[test],
        "subjects_test": subjects[test],
    }


# ---- the seglearn smartwatch set -----------------------------------------------------------


def watch_dataset_path() -> Path:
    """The ``watch_dataset.npy`` shipped inside the installed ``seglearn`` package."""
    return package_file("seglearn", *_WATCH_FILES, extra="imu", purpose=_WATCH_PURPOSE)


def load_watch_recordings() -> ImuRecordings:
    """The 140 raw recordings of the seglearn smartwatch set.

    The file is a pickled numpy object array. It is read ONLY from the path resolved inside
    the installed ``seglearn`` package (:func:`watch_dataset_path`, found without importing
    seglearn); there is deliberately no path argument, so no user-supplied pickle is ever
    loaded. As a second guard the pickle is read by an unpickler that accepts numpy arrays and
    plain containers and refuses everything else (:mod:`edgedistill.data.packaged`).

    Raises:
        MissingDependencyError: if seglearn is not installed.
        UnsafeFileError: if the file leaves the package or the pickle names other objects.
        DataError: if the file is missing, unreadable or not the expected structure.
    """
    path, data = load_packaged_object_npy(
        "seglearn", *_WATCH_FILES, extra="imu", purpose=_WATCH_PURPOSE
    )
    try:
        signals = tuple(np.asarray(x, dtype=np.float64) for x in data["X"])
        targets = np.asarray(data["y"], dtype=np.int64)
        subjects = np.asarray(data["subject"], dtype=np.int64)
        channels = tuple(str(c) for c in data["X_labels"])
        labels = tuple(str(c) for c in data["y_labels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: unexpected content ({exc})") from None
    if not signals or any(x.ndim != 2 or x.shape[1] != len(channels) for x in signals):
        raise DataError(f"{path}: recordings are not [L, {len(channels)}] arrays")
    if targets.shape != (len(signals),) or subjects.shape != targets.shape:
        raise DataError(f"{path}: {len(signals)} recordings but {targets.shape} labels")
    if targets.min() < 0 or targets.max() >= len(labels):
        raise DataError(f"{path}: labels outside 0..{len(labels) - 1}")
    known = channels == ("ax", "ay", "az", "wx", "wy", "wz")
    units = WATCH_UNITS if known else ("as provided by seglearn",) * len(channels)
    return ImuRecordings(
        "seglearn-watch", signals, targets, subjects, labels, channels, units, WATCH_SAMPLE_RATE_HZ
    )


def load_watch_dataset(
    window_s: float = 2.0,
    stride_s: float = 1.0,
    test_subjects: Sequence[int] = DEFAULT_WATCH_TEST_SUBJECTS,
) -> ImuDataset:
    """The seglearn smartwatch set as [N, 6, window_s * 50] float32 windows.

    Channels are ``ax, ay, az`` (accelerometer, g) and ``wx, wy, wz`` (gyroscope) at 50 Hz;
    labels are the 7 shoulder exercises ``PEN, ABD, FEL, IR, ER, TRAP, ROW``. The default holds
    out subjects 9 and 10 (of 1..10). See :func:`load_watch_recordings` for how the pickled
    file is read safely and :func:`window_recordings` for the windowing.
    """
    return window_recordings(
        load_watch_recordings(), window_s=window_s, stride_s=stride_s, test_subjects=test_subjects
    )


# ---- BasicMotions (UEA), shipped in sktime -------------------------------------------------


def basic_motions_paths() -> tuple[Path, Path]:
    """The TRAIN and TEST .ts files shipped inside the installed ``sktime`` package."""
    folder = "datasets/data/BasicMotions/BasicMotions"
    train, test = (
        package_file("sktime", f"{folder}_{split}.ts", extra="imu", purpose="BasicMotions")
        for split in ("TRAIN", "TEST")
    )
    return train, test


def load_basic_motions() -> ImuDataset:
    """BasicMotions: [40, 6, 100] train and test cases at 10 Hz, the archive's own split.

    The local .ts files are parsed by sktime's own reader (``load_from_tsfile``), which only
    reads the given file. Each case is one 10 s window; subject ids are not in the files.
    """
    paths = basic_motions_paths()  # MissingDependencyError without sktime
    from sktime.datasets import load_from_tsfile

    arrays = []
    for path in paths:
        try:
            x, y = load_from_tsfile(str(path), return_data_type="numpy3D")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
        names = [str(v).lower() for v in y]
        unknown = sorted(set(names) - set(BASIC_MOTIONS_LABELS))
        if unknown or x.ndim != 3 or x.shape[1] != len(BASIC_MOTIONS_CHANNELS):
            raise DataError(f"{path}: unexpected classes {unknown} or shape {x.shape}")
        targets = np.array([BASIC_MOTIONS_LABELS.index(n) for n in names], dtype=np.int64)
        arrays.append((np.asarray(x, dtype=np.float32), targets))
    (x_train, y_train), (x_test, y_test) = arrays
    window_s = x_train.shape[2] / BASIC_MOTIONS_SAMPLE_RATE_HZ
    return ImuDataset(
        name="basic-motions",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        labels=BASIC_MOTIONS_LABELS,
        channels=BASIC_MOTIONS_CHANNELS,
        units=BASIC_MOTIONS_UNITS,
        sample_rate_hz=BASIC_MOTIONS_SAMPLE_RATE_HZ,
        window_s=window_s,
        stride_s=window_s,
    )
