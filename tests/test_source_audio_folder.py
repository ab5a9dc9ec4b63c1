"""The ``audio_folder`` source: PCM decoding, band-limited resampling, cut/pad, errors."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.signal  # noqa: F401  (imported once here: ~2 s on a slow machine, not a test's cost)

from edgedistill.errors import DataError, RecipeError
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.tasks.task import Task


def _wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> np.ndarray:
    """Write [T] or [T, C] floats in [-1, 1) as ``width``-byte PCM; returns the stored ints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = samples if samples.ndim == 2 else samples[:, None]
    scale = float(2 ** (8 * width - 1))
    ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype(np.int64)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    elif width in (2, 4):
        data = ints.astype(f"<i{width}").tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.ravel())
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)
    return ints


def _tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)


def _dataset(root: Path, per_class: int = 5) -> None:
    """Class "high": 16 kHz clips of 1-2 kHz tones; class "low": 8 kHz clips of 200-400 Hz."""
    for i in range(per_class):
        _wav(root / "high" / f"h{i}.wav", _tone(1000 + 200 * i, 16000, 1.0), 16000)
        _wav(root / "low" / f"l{i}.wav", _tone(200 + 50 * i, 8000, 1.0), 8000)


def _load(tmp_path: Path, seed: int = 0, **data: Any) -> Task:
    raw = {"source": "audio_folder", "path": "clips", **data}
    cfg = parse_data_section(raw, base_dir=tmp_path, source="recipe.yaml")
    return build_task(cfg, cache_dir=tmp_path / "cache", seed=seed)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_folder_shapes_split_and_determinism(tmp_path: Path) -> None:
    _dataset(tmp_path / "clips")
    task = _load(tmp_path)
    assert task.labels == ("high", "low") and task.modality == "audio"
    assert task.x_train.shape == (8, 16000) and task.x_train.dtype == np.float32
    assert task.x_test.shape == (2, 16000) and np.bincount(task.y_test).tolist() == [1, 1]
    assert task.input.shape == (16000,) and task.input.raw["sample_rate_hz"] == 16000.0
    assert np.abs(task.x_train).max() <= 1.0
    again = _load(tmp_path)
    assert again.fingerprint == task.fingerprint
    assert np.array_equal(again.x_test, task.x_test)


def test_resampled_tone_keeps_its_frequency(tmp_path: Path) -> None:
    _wav(tmp_path / "clips/a/tone.wav", _tone(440.0, 8000, 1.0), 8000)
    _wav(tmp_path / "clips/a/tone2.wav", _tone(440.0, 8000, 1.0), 8000)
    _wav(tmp_path / "clips/b/tone.wav", _tone(3000.0, 16000, 1.0), 16000)
    _wav(tmp_path / "clips/b/tone2.wav", _tone(3000.0, 16000, 1.0), 16000)
    task = _load(tmp_path)
    x = np.concatenate([task.x_train, task.x_test])
    y = np.concatenate([task.y_train, task.y_test])
    up = x[y == 0][0]
    assert _peak_hz(up, 16000) == pytest.approx(440.0, abs=1.0)
    # Band-limited: the amplitude is kept and no image of 440 Hz appears at 8000 - 440 Hz.
    middle = up[2000:14000]
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.01)
    spectrum = np.abs(np.fft.rfft(up))
    assert spectrum[7560 - 5 : 7560 + 5].max() < 1e-3 * spectrum.max()
    assert _peak_hz(x[y == 1][0], 16000) == pytest.approx(3000.0, abs=1.0)
    # And down to 8 kHz: 3 kHz is still below Nyquist, 8000 samples per second.
    down = _load(tmp_path, sample_rate_hz=8000)
    assert down.x_train.shape[1] == 8000
    high = np.concatenate([down.x_train, down.x_test])[y == 1][0]
    assert _peak_hz(high, 8000) == pytest.approx(3000.0, abs=1.0)


def test_pcm_widths_channels_and_cut_or_pad(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.9, 0.9, (1600, 2))
    ints16 = _wav(tmp_path / "clips/a/stereo16.wav", stereo, 16000)
    mono = rng.uniform(-0.9, 0.9, 800)
    ints24 = _wav(tmp_path / "clips/a/short24.wav", mono, 16000, width=3)
    ints8 = _wav(tmp_path / "clips/b/long8.wav", rng.uniform(-0.9, 0.9, 2400), 16000, width=1)
    ints32 = _wav(tmp_path / "clips/b/pcm32.wav", rng.uniform(-0.9, 0.9, 1600), 16000, width=4)
    task = _load(tmp_path, clip_s=0.1, test_fraction=0.5)
    x = np.concatenate([task.x_train, task.x_test])
    y = np.concatenate([task.y_train, task.y_test])
    assert x.shape == (4, 1600)
    a, b = x[y == 0], x[y == 1]  # file order within a class: sorted names
    # Train/test split is stratified; each class keeps its sorted order across the splits.
    first_a = a[np.argmax([np.abs(r[800:]).max() for r in a])]  # stereo: no padding
    short = a[np.argmin([np.abs(r[800:]).max() for r in a])]
    np.testing.assert_allclose(first_a, ints16.mean(axis=1) / 32768.0, atol=1e-7)
    np.testing.assert_allclose(short[:800], ints24[:, 0] / 8388608.0, atol=1e-7)
    assert not short[800:].any()  # zero-padded at the end
    long8 = next(r for r in b if np.allclose(r, ints8[400:2000, 0] / 128.0))  # centre crop
    assert long8.shape == (1600,)
    assert any(np.allclose(r, ints32[:, 0] / 2147483648.0, atol=1e-7) for r in b)


def test_not_a_wav_is_named(tmp_path: Path) -> None:
    _dataset(tmp_path / "clips", per_class=2)
    (tmp_path / "clips/low/fake.wav").write_bytes(b"ID3\x03\x00" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"low/fake\.wav: not a readable PCM WAV file"):
        _load(tmp_path)


def test_single_class_and_empty_class(tmp_path: Path) -> None:
    _wav(tmp_path / "clips/only/a.wav", _tone(440.0, 16000, 0.1), 16000)
    with pytest.raises(DataError, match=r"clips: needs at least 2 class sub-folders"):
        _load(tmp_path)
    (tmp_path / "clips/empty").mkdir()
    (tmp_path / "clips/empty/song.mp3").write_bytes(b"ID3")
    with pytest.raises(DataError, match=r"clips/empty: class folder has no WAV files"):
        _load(tmp_path)


def test_clip_length_must_be_whole_samples(tmp_path: Path) -> None:
    _dataset(tmp_path / "clips", per_class=2)
    with pytest.raises(
        RecipeError, match=r"recipe\.yaml: data\.clip_s = 0\.10003: .*1600\.48 samples"
    ):
        _load(tmp_path, clip_s=0.10003)
