"""Input contracts of each modality, built once and shared by every data source.

A data source states what it read (pixels, raw IMU values and their units, a waveform and its
sample rate, token ids and the tokenizer); these builders turn that into the
:class:`~edgedistill.tasks.task.InputSpec` every stage and the bundle use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgedistill.errors import DataError


def _channel_stats(x: np.ndarray, axes: tuple[int, ...]) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std (> 0) over ``axes`` of stored training samples."""
    if x.size == 0:
        raise DataError("cannot compute input statistics of an empty training split")
    data = x.astype(np.float64)
    mean = data.mean(axis=axes)
    std = np.maximum(data.std(axis=axes), 1e-6)  # a constant channel must not divide by 0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def image_input(x_train: np.ndarray) -> Any:
    """[N, C, H, W] uint8 pixels -> ``(pixel / 255 - mean[c]) / std[c]`` (training statistics,
    rounded to 6 decimals so the manifest is readable)."""
    from edgedistill.tasks.task import InputSpec

    if x_train.ndim != 4 or x_train.dtype != np.uint8:
        raise DataError(f"images must be uint8 [N, C, H, W], got {x_train.dtype} {x_train.shape}")
    mean, std = _channel_stats(x_train / 255.0, (0, 2, 3))
    c, h, w = x_train.shape[1:]
    return InputSpec(
        modality="image",
        shape=(c, h, w),
        layout="[N, C, H, W]",
        stored_dtype="uint8",
        divisor=255.0,
        mean=tuple(round(m, 6) for m in mean),
        std=tuple(round(s, 6) for s in std),
        raw={
            "raw": f"uint8 pixels 0..255, {'grayscale' if c == 1 else 'RGB'}, {h}x{w}",
            "color": "grayscale" if c == 1 else "rgb",
            "height": int(h),
            "width": int(w),
        },
    )


def imu_input(
    x_train: np.ndarray,
    *,
    channels: Sequence[str],
    units: Sequence[str],
    sample_rate_hz: float,
    window_s: float,
    stride_s: float,
) -> Any:
    """[N, C, T] raw IMU windows -> per-channel ``(raw - mean[c]) / std[c]``."""
    from edgedistill.data.imu import samples_of
    from edgedistill.tasks.task import InputSpec

    if x_train.ndim != 3:
        raise DataError(f"IMU windows must be [N, C, T], got {x_train.shape}")
    c, t = x_train.shape[1:]
    if not len(channels) == len(units) == c:
        raise DataError(f"{c} channels but {len(channels)} names and {len(units)} units")
    if samples_of(window_s, sample_rate_hz, "window_s") != t:
        raise DataError(f"window_s={window_s} at {sample_rate_hz} Hz is not {t} samples")
    mean, std = _channel_stats(x_train, (0, 2))
    return InputSpec(
        modality="imu",
        shape=(c, t),
        layout="[N, C, T]",
        stored_dtype="float32",
        mean=mean,
        std=std,
        raw={
            "channels": [str(n) for n in channels],
            "units": [str(u) for u in units],
            "sample_rate_hz": float(sample_rate_hz),
            "window_s": float(window_s),
            "window_samples": int(t),
            "stride_s": float(stride_s),
            "stride_samples": samples_of(stride_s, sample_rate_hz, "stride_s"),
        },
    )


def audio_input(samples: int, sample_rate_hz: float) -> Any:
    """[N, T] mono float32 waveforms in [-1, 1] at ``sample_rate_hz``, fed as they are (the
    student's front end, e.g. log-mel, is inside the model and its ONNX graph)."""
    from edgedistill.tasks.task import InputSpec

    return InputSpec(
        modality="audio",
        shape=(int(samples),),
        layout="[N, T]",
        stored_dtype="float32",
        raw={
            "sample_rate_hz": float(sample_rate_hz),
            "clip_s": samples / float(sample_rate_hz),
            "raw": "mono waveform, float32 in [-1, 1] (PCM16 / 32768)",
        },
    )


def text_input(max_length: int, tokenizer: dict[str, Any]) -> Any:
    """[N, L] int64 token ids from the tokenizer described by ``tokenizer`` (its ``spec()``)."""
    from edgedistill.tasks.task import InputSpec

    return InputSpec(
        modality="text",
        shape=(int(max_length),),
        dtype="int64",
        layout="[N, L]",
        stored_dtype="int64",
        raw={"tokenizer": dict(tokenizer), "raw": "UTF-8 text"},
    )
