"""Paired-modality windows: time-synchronised (video clip, IMU window[, audio]) examples.

A :class:`PairedWindows` holds N windows cut from the same instants of every stream, each
stream at its own sample rate. Loaders for on-disk layouts (``paired_io``) and the synthetic
egocentric generator (``egocentric``) both produce this container, so the cross-modal stage
never cares where the pairs came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgedistill.artifacts import sha256_json
from edgedistill.errors import DataError

IMU_CHANNELS_6AXIS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
IMU_UNITS_6AXIS = ("m/s^2", "m/s^2", "m/s^2", "rad/s", "rad/s", "rad/s")


@dataclass(frozen=True)
class PairedWindows:
    """N synchronised windows of several streams.

    Attributes:
        imu: [N, C, T_imu] float32, channels in ``imu_channels`` order and ``imu_units``.
        video: [N, T_frames, H, W, 3] uint8 RGB frames, or None when the set has no video.
        audio: [N, T_audio] float32 mono waveform in [-1, 1], or None.
        labels: [N] int64 activity index into ``classes``; -1 = unlabelled window.
        subjects: [N] int64 subject (person) id, for subject-disjoint splits.
        recordings: [N] int64 index of the recording each window was cut from.
        start_s: [N] float64 window start time within its recording (seconds).
        classes: Class names.
        imu_rate_hz: IMU sample rate after resampling onto a uniform grid.
        fps: Video frame rate (frames per second); 0 when there is no video.
        audio_rate_hz: Audio sample rate; 0 when there is no audio.
        window_s: Window length in seconds; stride_s: hop between window starts.
        imu_channels: Channel names; imu_units: their units (same length).
        source: Where the pairs came from (e.g. "synthetic-egocentric v1", a folder path).
    """

    imu: np.ndarray
    video: np.ndarray | None
    labels: np.ndarray
    subjects: np.ndarray
    recordings: np.ndarray
    start_s: np.ndarray
    classes: tuple[str, ...]
    imu_rate_hz: float
    window_s: float
    stride_s: float
    fps: float = 0.0
    audio: np.ndarray | None = None
    audio_rate_hz: float = 0.0
    imu_channels: tuple[str, ...] = IMU_CHANNELS_6AXIS
    imu_units: tuple[str, ...] = IMU_UNITS_6AXIS
    source: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.imu.ndim != 3:
            raise DataError(f"paired imu must be [N, C, T], got shape {self.imu.shape}")
        checks: dict[str, np.ndarray | None] = {
            "imu": self.imu,
            "video": self.video,
            "audio": self.audio,
            "subjects": self.subjects,
            "recordings": self.recordings,
            "start_s": self.start_s,
        }
        for name, array in checks.items():
            if array is not None and len(array) != n:
                raise DataError(f"paired {name} has {len(array)} windows, labels have {n}")
        if self.video is not None and (self.video.ndim != 5 or self.video.shape[-1] != 3):
            raise DataError(f"paired video must be [N, T, H, W, 3], got {self.video.shape}")
        if len(self.imu_channels) != self.imu.shape[1]:
            raise DataError(
                f"paired imu has {self.imu.shape[1]} channels but {len(self.imu_channels)} names"
            )
        if len(self.imu_units) != len(self.imu_channels):
            raise DataError("paired imu_units must name one unit per channel")
        if n and int(self.labels.max()) >= len(self.classes):
            raise DataError(
                f"paired label {int(self.labels.max())} has no class name "
                f"({len(self.classes)} classes)"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> PairedWindows:
        """The windows at ``index`` (boolean mask or integer array), every stream alike."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return PairedWindows(
            imu=self.imu[index],
            video=take(self.video),
            audio=take(self.audio),
            labels=self.labels[index],
            subjects=self.subjects[index],
            recordings=self.recordings[index],
            start_s=self.start_s[index],
            classes=self.classes,
            imu_rate_hz=self.imu_rate_hz,
            window_s=self.window_s,
            stride_s=self.stride_s,
            fps=self.fps,
            audio_rate_hz=self.audio_rate_hz,
            imu_channels=self.imu_channels,
            imu_units=self.imu_units,
            source=self.source,
            extra=dict(self.extra),
        )

    def subject_split(self, test_subjects: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) window indices with ``test_subjects`` held out (subject-disjoint)."""
        held = np.isin(self.subjects, np.asarray(test_subjects))
        if not held.any():
            raise DataError(f"no windows of test subjects {test_subjects} in {self.source!r}")
        if held.all():
            raise DataError("every window belongs to a test subject; nothing left to train on")
        return np.flatnonzero(~held), np.flatnonzero(held)

    def split_subjects(self, test_subjects: tuple[int, ...]) -> tuple[PairedWindows, PairedWindows]:
        """(train, test) windows with ``test_subjects`` held out (see :meth:`subject_split`)."""
        train, test = self.subject_split(test_subjects)
        return self.subset(train), self.subset(test)

    def fingerprint(self) -> str:
        """sha256 of every stream's bytes plus the metadata (a cache key part)."""
        parts: dict[str, object] = {
            "source": self.source,
            "classes": list(self.classes),
            "rates": [self.imu_rate_hz, self.fps, self.audio_rate_hz],
            "window": [self.window_s, self.stride_s],
            "labels": _digest(self.labels),
            "subjects": _digest(self.subjects),
            "imu": _digest(self.imu),
        }
        if self.video is not None:
            parts["video"] = _digest(self.video)
        if self.audio is not None:
            parts["audio"] = _digest(self.audio)
        return sha256_json(parts)


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
