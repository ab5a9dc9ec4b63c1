"""The log-mel frontend (against a numpy reference) and the DS-CNN audio student family."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgedistill.compress.prune import prune_channels
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import count_macs
from edgedistill.runtime import OnnxRuntimeRunner
from edgedistill.students import STUDENTS, Student, build_model
from edgedistill.students.audio import TINY_CONFIGS, AudioDSCNN, LogMel

SR, N_FFT, HOP, N_MELS = 16000, 512, 160, 40
T = 4000  # 0.25 s: 22 frames
FRAMES = 1 + (T - N_FFT) // HOP
SHAPES = {"wave": (T,), "mel": (1, N_MELS, FRAMES)}


# ---- the numpy reference ---------------------------------------------------------------------


def htk_mel_matrix(n_freqs: int, n_mels: int, sr: int, f_min: float, f_max: float) -> np.ndarray:
    """[n_freqs, n_mels] triangles on n_mels + 2 HTK-mel-spaced points."""

    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    points = np.linspace(to_mel(np.array(f_min)), to_mel(np.array(f_max)), n_mels + 2)
    hz = 700.0 * (10.0 ** (points / 2595.0) - 1.0)
    bins = np.arange(n_freqs) * sr / (2 * (n_freqs - 1))
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lo, mid, hi = hz[m], hz[m + 1], hz[m + 2]
        for k, f in enumerate(bins):
            if lo <= f <= mid:
                fb[k, m] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                fb[k, m] = (hi - f) / (hi - mid)
    return fb


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """float64 log-mel [n_mels, frames] of a 1-D waveform via np.fft.rfft."""
    n = 1 + (len(wave) - N_FFT) // HOP
    frames = np.stack([wave[i * HOP : i * HOP + N_FFT] for i in range(n)]).astype(np.float64)
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [frames, F]
    fb = htk_mel_matrix(N_FFT // 2 + 1, N_MELS, SR, 0.0, SR / 2)
    return np.log(power @ fb + 1e-6).T


def log_mel(wave: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return LogMel()(torch.from_numpy(wave[None].astype(np.float32)))[0, 0].numpy()


def test_mel_matrix_matches_reference() -> None:
    fb = LogMel().mel_fb.numpy().T
    np.testing.assert_allclose(fb, htk_mel_matrix(N_FFT // 2 + 1, N_MELS, SR, 0, SR / 2), atol=1e-6)
    assert (fb.sum(axis=0) > 0).all()  # no empty band at 40 mels / 257 bins


def test_log_mel_matches_numpy_on_noise() -> None:
    wave = np.random.default_rng(0).normal(scale=0.3, size=T).astype(np.float32)
    out = log_mel(wave)
    assert out.shape == (N_MELS, FRAMES) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_log_mel(wave), atol=1e-4, rtol=0)


def test_log_mel_of_a_1khz_sine() -> None:
    wave = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(T) / SR)).astype(np.float32)
    out = log_mel(wave)
    np.testing.assert_allclose(out, reference_log_mel(wave), atol=1e-4, rtol=0)
    fb = htk_mel_matrix(N_FFT // 2 + 1, N_MELS, SR, 0, SR / 2)
    band = int(np.argmax(fb[round(1000 * N_FFT / SR)]))  # 1 kHz is exactly rfft bin 32
    assert (np.argmax(out, axis=0) == band).all()
    edges = 700.0 * (10.0 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 42) / 2595) - 1)
    assert edges[band] < 1000 < edges[band + 2]


@pytest.mark.parametrize(("samples", "frames"), [(512, 1), (671, 1), (672, 2), (16000, 97)])
def test_frame_count_formula(samples: int, frames: int) -> None:
    frontend = LogMel()
    assert frontend.num_frames(samples) == frames == 1 + (samples - N_FFT) // HOP
    assert frontend(torch.zeros(2, samples)).shape == (2, 1, N_MELS, frames)
    with pytest.raises(ValueError, match="waveform"):
        frontend(torch.zeros(2, 511))
    assert LogMel(n_mels=64, n_fft=400)(torch.zeros(1, 400)).shape == (1, 1, 64, 1)


# ---- the DS-CNN student ----------------------------------------------------------------------


def make_student(variant: str, seed: int = 0) -> AudioDSCNN:
    """A tiny student with non-trivial batch-norm statistics and affine parameters."""
    torch.manual_seed(seed)
    config = {**TINY_CONFIGS["audio_dscnn"], "num_classes": 5, "frontend": variant == "wave"}
    model = cast("AudioDSCNN", build_model("audio_dscnn", config))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, *SHAPES[variant]) * 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.mul_(torch.linspace(0.5, 1.5, module.num_features))
                module.bias.add_(torch.linspace(-0.2, 0.2, module.num_features))
    return model.eval()


def inputs(variant: str, n: int, seed: int) -> np.ndarray:
    return (
        np.random.default_rng(seed).normal(scale=0.5, size=(n, *SHAPES[variant])).astype(np.float32)
    )


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_registry_and_contract() -> None:
    assert "audio_dscnn" in STUDENTS.names()
    for variant in SHAPES:
        assert isinstance(make_student(variant), Student)
    assert AudioDSCNN(widths=(64, 32), width_mult=0.5).current_config()["widths"] == [32, 16]
    assert isinstance(AudioDSCNN().frontend, LogMel)  # the paper's DS-CNN-S widths by default
    with pytest.raises(ValueError):
        AudioDSCNN(widths=(16,))
    with pytest.raises(ValueError):
        AudioDSCNN(widths=(16, 16), strides=(1, 2))


@pytest.mark.parametrize("variant", list(SHAPES))
def test_shapes_and_intermediates(variant: str) -> None:
    model = make_student(variant)
    x = torch.from_numpy(inputs(variant, 3, 1))
    logits, feats = model.forward_intermediates(x)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits, model(x))
    widths = cast("list[int]", model.current_config()["widths"])
    # stem 4x10 stride 2 with same padding: ceil(40 / 2) x ceil(22 / 2); DS blocks keep it
    assert FRAMES == 22
    assert [tuple(f.shape) for f in feats] == [(3, w, 20, 11) for w in widths]
    model.reset_classifier(9)
    assert model(x).shape == (3, 9) and model.current_config()["num_classes"] == 9


@pytest.mark.parametrize("variant", list(SHAPES))
def test_to_deploy_parity(variant: str) -> None:
    model = make_student(variant)
    deploy = model.to_deploy()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    depthwise = [m for m in deploy.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.bias is not None for m in depthwise)
    assert not deploy.training
    x = inputs(variant, 4, 2)
    np.testing.assert_allclose(logits_of(deploy, x), logits_of(model, x), atol=1e-5, rtol=0)


def check_onnx(model: nn.Module, reference_model: nn.Module, path: Path, x: np.ndarray) -> None:
    """Export the waveform ``model``; onnxruntime matches ``reference_model`` at batch 1 and 3."""
    export_onnx(model, (T,), path)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [T]
    reference = logits_of(reference_model, x)
    with OnnxRuntimeRunner(path, "audio") as runner:
        for batch in (1, 3):
            out = runner.infer(x[:batch])
            assert out.shape == (batch, reference.shape[1])
            np.testing.assert_allclose(out, reference[:batch], atol=1e-4, rtol=0)


def test_onnx_export_of_the_waveform_student(tmp_path: Path) -> None:
    model = make_student("wave")
    check_onnx(model.to_deploy(), model, tmp_path / "audio.onnx", inputs("wave", 3, 3))


@pytest.mark.parametrize("variant", list(SHAPES))
def test_current_config_round_trip(variant: str) -> None:
    model = make_student(variant)
    rebuilt = build_model("audio_dscnn", copy.deepcopy(model.current_config()))
    rebuilt.load_state_dict(model.state_dict())  # strict: identical names and shapes
    x = inputs(variant, 2, 4)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(model, x))


def test_prune_rebuild_and_export_waveform_student(tmp_path: Path) -> None:
    model = make_student("wave")
    result = prune_channels(model, (T,), target_macs_ratio=0.7)
    pruned = cast("AudioDSCNN", result.model)
    assert result.macs_ratio <= 0.7 and count_macs(pruned, (T,)) <= 0.7 * count_macs(model, (T,))
    config = pruned.current_config()
    assert all(w % 8 == 0 and w > 0 for w in cast("list[int]", config["widths"]))
    assert config != model.current_config()
    for block in pruned.blocks:  # depthwise convs stay depthwise, coupled to their input
        dw = cast("nn.Conv2d", block.dw.conv)  # type: ignore[union-attr]
        assert dw.groups == dw.in_channels == dw.out_channels and dw.in_channels % 8 == 0
    rebuilt = build_model("audio_dscnn", config)
    rebuilt.load_state_dict(pruned.state_dict())
    x = inputs("wave", 3, 5)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(pruned, x))
    deploy = pruned.to_deploy()
    np.testing.assert_allclose(logits_of(deploy, x), logits_of(pruned, x), atol=1e-5, rtol=0)
    check_onnx(deploy, pruned, tmp_path / "pruned.onnx", x)


# ---- INT8 with the front end kept in float ---------------------------------------------------


def speech_like(n: int, seed: int) -> np.ndarray:
    """Clips whose loudness spans 60 dB: a quiet noise floor with one loud tone burst each."""
    rng = np.random.default_rng(seed)
    clips = rng.normal(scale=1e-3, size=(n, T))
    t = np.arange(T) / SR
    for clip in clips:
        start = int(rng.integers(0, T // 2))
        f0 = rng.uniform(120, 300)
        burst = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
        clip[start : start + T // 3] += 0.5 * burst[: T // 3]
    return clips.astype(np.float32)


def test_log_mel_front_end_stays_float_in_int8(tmp_path: Path) -> None:
    from edgedistill.compress.quantize import quantize_onnx_static

    model = make_student("wave")
    assert model.float_frontend_until == "Log"
    assert make_student("mel").float_frontend_until is None
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model.to_deploy(), (T,), fp32)
    graph = onnx.load(str(fp32)).graph
    log_at = [n.op_type for n in graph.node].index("Log")
    front = [n.name for n in graph.node[: log_at + 1]]
    assert {"Conv", "MatMul", "Log"} <= {n.op_type for n in graph.node[: log_at + 1]}

    calibration, x = speech_like(64, 0), speech_like(32, 1)
    with OnnxRuntimeRunner(fp32, "fp32") as runner:
        reference = runner.infer(x)
    errors = {}
    for keep in ("Log", None):
        int8 = tmp_path / f"int8-{keep}.onnx"
        kept = quantize_onnx_static(fp32, int8, calibration, keep_float_until=keep)
        nodes = onnx.load(str(int8)).graph.node
        produced_by = {out: n.op_type for n in nodes for out in n.output}
        quantized_inputs = {
            n.name for n in nodes if any(produced_by.get(i) == "DequantizeLinear" for i in n.input)
        }
        if keep:
            assert kept == front  # the front end, and nothing after the log
            assert not quantized_inputs & set(front)
            assert len(quantized_inputs) >= 4  # the convolutions after it are INT8
        else:
            assert kept == [] and quantized_inputs & set(front)
        scale = np.abs(reference).max()
        with OnnxRuntimeRunner(int8, "int8") as runner:
            errors[keep] = float(np.abs(runner.infer(x) - reference).max() / scale)
    # Measured: 1.1% of the logit range with the front end in float, 5.0% without.
    assert errors["Log"] < 0.02 and errors[None] > 3 * errors["Log"], errors


def test_keep_float_until_an_absent_op_is_refused(tmp_path: Path) -> None:
    from edgedistill.compress.quantize import quantize_onnx_static

    fp32 = tmp_path / "mel.onnx"
    export_onnx(make_student("mel").to_deploy(), SHAPES["mel"], fp32)
    with pytest.raises(ValueError, match=r"no Log node in the model \(it has \[.*'Conv'"):
        quantize_onnx_static(fp32, tmp_path / "q.onnx", inputs("mel", 8, 0), keep_float_until="Log")
