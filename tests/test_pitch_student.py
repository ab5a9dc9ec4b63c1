"""The ``pitch_cnn`` student: contract, gain invariance, deploy/ONNX parity, pruning, and its
size against CREPE tiny (the architecture alone: no weights needed)."""

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
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import count_macs, count_params
from edgedistill.runtime import OnnxRuntimeRunner
from edgedistill.students import STUDENTS, Student, build_model
from edgedistill.students.pitch import TINY_CONFIGS, PitchCNN
from edgedistill.teachers.audio import Crepe

SHAPE = (1024,)


def make_student(config: dict[str, object] | None = None, seed: int = 0) -> PitchCNN:
    """A student with non-trivial batch-norm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = cast("PitchCNN", build_model("pitch_cnn", {"num_classes": 360, **(config or {})}))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1024) * 0.3)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.mul_(torch.linspace(0.5, 1.5, module.num_features))
                module.bias.add_(torch.linspace(-0.2, 0.2, module.num_features))
    return model.eval()


def frames(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1024) / 16000
    f0 = rng.uniform(60, 1200, (n, 1))
    return (rng.uniform(0.01, 0.8, (n, 1)) * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_registry_contract_and_shapes() -> None:
    assert "pitch_cnn" in STUDENTS.names()
    model = make_student()
    assert isinstance(model, Student)
    x = torch.from_numpy(frames(3, 0))
    logits, feats = model.forward_intermediates(x)
    assert logits.shape == (3, 360)
    torch.testing.assert_close(logits, model(x))
    # stride 4 then max-pool 2 per stage: 1024 -> 128 -> 64 -> 32 -> 16 -> 8
    assert [tuple(f.shape) for f in feats] == [
        (3, 32, 128),
        (3, 32, 64),
        (3, 48, 32),
        (3, 64, 16),
        (3, 96, 8),
    ]
    assert model.forward_features(x).shape == (3, 96)
    model.reset_classifier(12)
    assert model(x).shape == (3, 12) and model.current_config()["num_classes"] == 12
    for bad in ({"widths": []}, {"kernels": [3]}, {"pools": [64] * 5}, {"first_stride": 0}):
        with pytest.raises(ValueError):
            PitchCNN(**bad)  # type: ignore[arg-type]


def test_smaller_and_cheaper_than_crepe_tiny() -> None:
    student, tiny = make_student(), Crepe("tiny")
    assert count_params(tiny) == 486_552 and count_macs(tiny, SHAPE) == 36_904_808
    assert count_params(student) < count_params(tiny) / 3
    assert count_macs(student, SHAPE) < count_macs(tiny, SHAPE) / 7


def test_gain_and_offset_do_not_matter() -> None:
    model = make_student()
    x = frames(4, 1)
    np.testing.assert_allclose(logits_of(model, 0.01 * x + 0.002), logits_of(model, x), atol=1e-3)


def test_to_deploy_parity_and_config_round_trip() -> None:
    model = make_student()
    deploy = model.to_deploy()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in deploy.modules())
    x = frames(5, 2)
    np.testing.assert_allclose(logits_of(deploy, x), logits_of(model, x), atol=1e-4, rtol=0)
    rebuilt = build_model("pitch_cnn", copy.deepcopy(model.current_config()))
    rebuilt.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(model, x))


def check_onnx(model: nn.Module, reference: nn.Module, path: Path, x: np.ndarray) -> None:
    """The exported raw-frame model matches ``reference`` in onnxruntime at batch 1 and 3."""
    export_onnx(model, SHAPE, path)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1024]
    expected = logits_of(reference, x)
    with OnnxRuntimeRunner(path, "pitch") as runner:
        for batch in (1, 3):
            np.testing.assert_allclose(runner.infer(x[:batch]), expected[:batch], atol=1e-4)


def test_onnx_export_and_int8_keeps_gain_invariance(tmp_path: Path) -> None:
    model = make_student()
    x = frames(3, 3)
    check_onnx(model.to_deploy(), model, tmp_path / "pitch.onnx", x)
    loud = frames(64, 4) / np.abs(frames(64, 4)).max(axis=1, keepdims=True) * 0.9
    # Convolutions and classifier only: the frame is normalised in float, so a frame 100x
    # quieter than the calibration frames gives the INT8 model the same input as a loud one.
    # With every op type, the squared deviations of the variance are quantized too, and
    # those of a quiet frame round to zero.
    outputs = {}
    for name, op_types in (("all", None), ("conv", ("Conv", "Gemm"))):
        path = tmp_path / f"int8-{name}.onnx"
        quantize_onnx_static(tmp_path / "pitch.onnx", path, loud, op_types=op_types)
        with OnnxRuntimeRunner(path, name) as runner:
            outputs[name] = runner.infer(loud[:8]), runner.infer(loud[:8] / 100)
    loud_out, quiet_out = outputs["conv"]
    assert loud_out.shape == (8, 360)
    spread = float(loud_out.max() - loud_out.min())
    assert np.abs(quiet_out - loud_out).max() < 0.01 * spread
    assert np.abs(outputs["all"][1] - outputs["all"][0]).max() > 0.05 * spread


def test_prune_rebuild_and_export(tmp_path: Path) -> None:
    model = make_student(TINY_CONFIGS["pitch_cnn"])
    result = prune_channels(model, SHAPE, target_macs_ratio=0.7, round_to=4)
    pruned = cast("PitchCNN", result.model)
    assert count_macs(pruned, SHAPE) <= 0.7 * count_macs(model, SHAPE)
    config = pruned.current_config()
    assert config["widths"] != model.current_config()["widths"]
    assert pruned.classifier.out_features == 360  # the bins are never pruned
    rebuilt = build_model("pitch_cnn", config)
    rebuilt.load_state_dict(pruned.state_dict())
    x = frames(3, 5)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(pruned, x))
    check_onnx(pruned.to_deploy(), pruned, tmp_path / "pruned.onnx", x)
