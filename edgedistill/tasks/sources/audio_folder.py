"""``audio_folder``: labelled WAV clips, one sub-folder per class.

Layout (class names are the sub-folder names; ``train`` and ``test`` are reserved)::

    path/<class>/*.wav                        one sub-folder per class (at least 2); a seeded,
                                              class-stratified ``test_fraction`` is held out
    path/train/<class>/*.wav + path/test/<class>/*.wav   or your own split

Every ``.wav`` must be uncompressed integer PCM (8, 16, 24 or 32 bit; plain ``WAVE_FORMAT_PCM``,
not float or WAVE_FORMAT_EXTENSIBLE, which Python's ``wave`` module cannot read): convert other
files with e.g. ``ffmpeg -i in.x -c:a pcm_s16le out.wav``. Channels are averaged to mono,
samples scaled to [-1, 1] (PCM16 / 32768), other rates resampled to ``sample_rate_hz``
(polyphase, band-limited: ``scipy.signal.resample_poly``), then each clip is cut to ``clip_s``
seconds around its centre or zero-padded at its end. Waveforms are stored as float32 [N, T];
the student's front end (e.g. log-mel) is part of the model. Files are read in sorted order.

Example recipe section::

    data:
      source: audio_folder
      path: keywords         # keywords/yes/*.wav, keywords/no/*.wav, ...
      sample_rate_hz: 16000
      clip_s: 1.0
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from edgedistill.data.imu import samples_of
from edgedistill.errors import DataError
from edgedistill.schema import existing_dir
from edgedistill.tasks.inputs import audio_input
from edgedistill.tasks.sources._common import Files, class_files, split_files, whole_samples
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task

_FULL_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


class AudioFolderConfig(SourceConfig):
    """The ``data`` section of an audio folder.

    Attributes:
        path: The folder (see the module docstring for its layout).
        sample_rate_hz: The rate every clip is resampled to (and the app must feed).
        clip_s: Clip length in seconds (a whole number of samples at ``sample_rate_hz``).
        test_fraction: Share of each class held out when there is no ``test/`` folder.
        labels: Class names in label order (default: the sorted sub-folder names).
    """

    source: str = "audio_folder"
    path: Path = Field(description="folder with one sub-folder of .wav files per class")
    sample_rate_hz: int = Field(default=16000, gt=0)
    clip_s: float = Field(default=1.0, gt=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    labels: tuple[str, ...] | None = Field(default=None, min_length=2)

    _path = field_validator("path")(existing_dir)
    _clip_s = field_validator("clip_s")(whole_samples)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate) of an integer-PCM WAV file.

    Raises:
        DataError: naming ``path`` when it is not a WAV file the ``wave`` module can read.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise DataError(
            f"{path}: not a readable PCM WAV file ({exc or 'the file ends before its WAV header does'}); convert it to integer PCM, e.g. "
            "ffmpeg -i IN -c:a pcm_s16le OUT.wav"
        ) from None
    if width not in _FULL_SCALE or channels < 1 or rate < 1:
        raise DataError(f"{path}: {8 * width}-bit PCM with {channels} channels is not supported")
    usable = len(data) // (width * channels) * width * channels  # drop a truncated last frame
    raw = np.frombuffer(data[:usable], dtype=np.uint8).reshape(-1, width)
    if width == 1:  # 8-bit WAV is unsigned
        ints = raw[:, 0].astype(np.int64) - 128
    else:  # little-endian signed: sign-extend the top byte, add the lower bytes
        ints = raw[:, -1].astype(np.int8).astype(np.int64)
        for b in range(width - 2, -1, -1):
            ints = (ints << 8) | raw[:, b]
    samples = ints.reshape(-1, channels).mean(axis=1) / _FULL_SCALE[width]
    return samples.astype(np.float32), rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``samples`` at ``rate`` Hz -> ``target`` Hz with a band-limited polyphase filter."""
    if rate == target or len(samples) == 0:
        return samples
    from edgedistill.data.packaged import import_optional

    resample_poly = import_optional(
        "scipy.signal", package="scipy", extra="data", purpose="resampling WAV files"
    ).resample_poly

    g = math.gcd(rate, target)
    out = resample_poly(samples.astype(np.float64), target // g, rate // g)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """The centre ``length`` samples, or ``samples`` zero-padded at the end to ``length``."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start : start + length]
    return np.concatenate([samples, np.zeros(length - len(samples), dtype=np.float32)])


def read_clips(files: Files, rate: int, length: int) -> np.ndarray:
    """float32 [N, length] clips of ``files`` at ``rate`` Hz."""
    clips = []
    for path, _ in files:
        samples, source_rate = read_wav(path)
        clips.append(fit_length(resample(samples, source_rate, rate), length))
    return np.ascontiguousarray(np.stack(clips).astype(np.float32))


@register_source("audio_folder", AudioFolderConfig)
def load_audio_folder(cfg: AudioFolderConfig, context: SourceContext) -> Task:
    """Read every clip, resample, cut or pad it, then split (stratified) or use ``test/``."""
    length = samples_of(cfg.clip_s, cfg.sample_rate_hz, "data.clip_s")
    names, train, test = class_files(cfg.path, (".wav",), cfg.labels, "WAV files")
    train, test = split_files(train, test, cfg.test_fraction, context.seed)
    return Task(
        name=cfg.name or cfg.path.name,
        input=audio_input(length, cfg.sample_rate_hz),
        labels=names,
        x_train=read_clips(train, cfg.sample_rate_hz, length),
        y_train=np.array([k for _, k in train], dtype=np.int64),
        x_test=read_clips(test, cfg.sample_rate_hz, length),
        y_test=np.array([k for _, k in test], dtype=np.int64),
        source=str(cfg.path),
    )
