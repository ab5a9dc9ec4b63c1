"""Localising the first layer at which a candidate ONNX model drifts, and its use in verify."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from torch import nn

from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.config import ExportConfig, GatesConfig
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import topk_accuracy
from edgedistill.pipeline.stages import verify
from edgedistill.pipeline.stages.export import DeployedModel
from edgedistill.runtime import localize
from edgedistill.runtime.localize import Drift, first_drift, layer_errors

ORDER = ["input", "c1", "r1", "c2", "r2", "c3", "r3", "g", "f", "logits"]


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.uniform(0.5, 1.5, (4, 1, 1, 1)) * rng.choice([-1, 1], (4, 1, 1, 1)),
        "b1": rng.normal(size=4) * 0.1,
        "w2": rng.normal(size=(4, 4, 3, 3)) * 0.3,
        "b2": rng.normal(size=4) * 0.1,
        "w3": rng.normal(size=(4, 4, 3, 3)) * 0.3,
        "b3": rng.normal(size=4) * 0.1,
        "w4": rng.normal(size=(3, 4)),
        "b4": rng.normal(size=3) * 0.1,
    }


def _write_net(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """A 3-conv net: 1x1 conv, two 3x3 convs (ReLU after each), pool, linear: [N,1,8,8]->[N,3]."""
    node = helper.make_node
    nodes = [
        node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1"),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"], name="relu2"),
        node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        node("Relu", ["c3"], ["r3"], name="relu3"),
        node("GlobalAveragePool", ["r3"], ["g"], name="pool"),
        node("Flatten", ["g"], ["f"], name="flatten"),
        node("Gemm", ["f", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _inputs(n: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 8, 8)).astype(np.float32)


@pytest.fixture
def nets(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """The reference net, a copy with one weight of conv2 corrupted, and the weights."""
    weights = _weights()
    bad = {**weights, "w2": weights["w2"].copy()}
    bad["w2"][2, 1, 1, 1] += 0.5  # centre tap: output channel 2 gains 0.5 * input channel 1
    return (
        _write_net(tmp_path / "ref.onnx", weights),
        _write_net(tmp_path / "bad.onnx", bad),
        weights,
    )


def test_identical_model_does_not_drift(nets: tuple[Path, Path, Any], tmp_path: Path) -> None:
    ref, _, _ = nets
    copy = shutil.copy(ref, tmp_path / "copy.onnx")
    assert first_drift(ref, Path(copy), _inputs(), tolerance=0.0) is None  # bit for bit
    errors = layer_errors(ref, Path(copy), _inputs())
    assert [t.tensor for t in errors.tensors] == ORDER  # topological order, input first
    assert all(t.error == 0.0 for t in errors.tensors)
    assert errors.unmatched == () and errors.samples == 4


def test_corrupted_middle_weight_is_the_reported_layer(
    nets: tuple[Path, Path, dict[str, np.ndarray]],
) -> None:
    ref, bad, weights = nets
    x = _inputs()
    drift = first_drift(ref, bad, x, tolerance=1e-6)
    assert isinstance(drift, Drift)
    assert (drift.node, drift.op_type, drift.tensor) == ("conv2", "Conv", "c2")
    assert [t.tensor for t in drift.trail] == ["input", "c1", "r1"]
    assert all(t.error == 0.0 for t in drift.trail)
    assert drift.checked == 4
    # the change of c2 is 0.5 * r1[:, 1] in channel 2, r1 = relu(w1 * x + b1) (1x1 conv)
    r1 = np.maximum(weights["w1"][1, 0, 0, 0] * x[:, 0] + weights["b1"][1], 0)
    assert drift.max_abs_diff == pytest.approx(0.5 * r1.max(), rel=1e-5)
    errors = layer_errors(ref, bad, x)
    c2 = next(t for t in errors.tensors if t.tensor == "c2")
    assert drift.error == pytest.approx(drift.max_abs_diff / c2.scale)
    # every later layer drifts too: "first" is what picks conv2
    later = [t for t in errors.tensors if ORDER.index(t.tensor) > ORDER.index("c2")]
    assert len(later) == 6 and all(t.error > 1e-6 for t in later)
    assert errors.output is not None and drift.output_error == errors.output.error > 0
    assert drift.summary() == f"first drift at node conv2 (Conv): rel err {drift.error:.3g}"
    record = json.loads(json.dumps(drift.to_dict()))
    assert record["node"] == "conv2" and len(record["trail"]) == 3
    # absolute errors on request; nothing drifts above the largest error
    absolute = first_drift(ref, bad, x, tolerance=1e-6, relative=False)
    assert absolute is not None and absolute.node == "conv2"
    assert absolute.error == absolute.max_abs_diff
    largest = max(t.error for t in errors.tensors)
    assert first_drift(ref, bad, x, tolerance=largest) is None


def test_quantized_model_drifts_at_a_layer_of_the_reference(tmp_path: Path) -> None:
    ref = _write_net(tmp_path / "ref.onnx", _weights())
    int8 = tmp_path / "int8.onnx"
    quantize_onnx_static(ref, int8, _inputs(32, seed=3))
    candidate = onnx.load(str(int8))
    producer = {o: n.op_type for n in candidate.graph.node for o in n.output}
    x = _inputs(32, seed=3)  # the calibration inputs: nothing is clipped
    errors = layer_errors(ref, int8, x)
    by_name = {t.tensor: t for t in errors.tensors}
    # quantized activations are compared after their DequantizeLinear
    assert producer[by_name["r2"].candidate_tensor] == "DequantizeLinear"
    assert by_name["input"].candidate_tensor != "input"
    # 8-bit input: at most half a step of a range spanning at most 2 * max |x|
    assert 1e-4 < by_name["input"].error <= 1 / 255 + 1e-6
    first = first_drift(ref, int8, x, tolerance=1e-4)
    assert first is not None and (first.tensor, first.op_type) == ("input", "Input")
    assert first.summary().startswith("first drift at input input: rel err")
    # above the input's error: a node of the reference graph, after tensors within tolerance
    tolerance = by_name["input"].error
    drift = first_drift(ref, int8, x, tolerance=tolerance)
    assert drift is not None
    ops = {n.name: n.op_type for n in onnx.load(str(ref)).graph.node}
    assert ops[drift.node] == drift.op_type
    assert drift.error > tolerance
    assert all(t.error <= tolerance for t in drift.trail)
    assert 0 < drift.output_error < 0.2
    assert first_drift(ref, int8, x, tolerance=max(t.error for t in errors.tensors)) is None


def test_inputs_must_fit_the_model(nets: tuple[Path, Path, Any]) -> None:
    ref, bad, _ = nets
    with pytest.raises(ValueError, match="lack"):
        first_drift(ref, bad, {"x": _inputs()}, tolerance=0.1)
    with pytest.raises(ValueError, match="at least one"):
        first_drift(ref, bad, _inputs()[:0], tolerance=0.1)
    drift = first_drift(ref, bad, {"input": _inputs()}, tolerance=1e-6)
    assert drift is not None and drift.node == "conv2"


# ---- the verify stage's use of it ---------------------------------------------------------


def test_verify_localize_appends_the_layer_and_never_raises(
    nets: tuple[Path, Path, Any],
) -> None:
    ref, bad, _ = nets
    x = _inputs()
    row: dict[str, Any] = {}
    suffix = verify._localize(
        row, lambda _: ref, bad, x, relative_tolerance=1e-5, threads=1, if_none="-"
    )
    assert suffix.startswith("; first drift at node conv2 (Conv): rel err ")
    assert row["first_drift"]["node"] == "conv2"

    # INT8 mode: the first tensor carrying half of the output's relative error
    row = {}
    verify._localize(row, lambda _: ref, bad, x, relative_tolerance=None, threads=1, if_none="-")
    out = row["first_drift"]["output_error"]
    assert row["first_drift"]["tolerance"] == pytest.approx(verify.INT8_DRIFT_SHARE * out)

    # nothing drifts: no suffix, the record says so
    row = {}
    suffix = verify._localize(
        row, lambda _: ref, ref, x, relative_tolerance=1e-5, threads=1, if_none="same file"
    )
    assert suffix == ""
    assert row["first_drift"]["none"].endswith("same file")

    def broken(_: Path) -> Path:
        raise RuntimeError("exporter exploded")

    row = {}
    suffix = verify._localize(row, broken, bad, x, relative_tolerance=1e-5, threads=1, if_none="")
    assert suffix == ""
    assert row["first_drift"] == {"error": "localisation failed: RuntimeError: exporter exploded"}


class _TinyNet(nn.Module):
    """conv -> relu -> conv -> relu -> pool -> linear, [N, 1, 8, 8] -> [N, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.classifier(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class _Row(DeployedModel):
    """A deployed model whose torch form is given, not loaded from a run folder."""

    module: nn.Module | None = None

    def torch_model(self, ctx: Any) -> nn.Module | None:
        return self.module


@pytest.fixture
def tiny_verify(tmp_path: Path) -> tuple[Any, list[DeployedModel], nn.Module]:
    """What verify_models reads of a run, for one exported FP32 model and its "INT8" copy
    (a stand-in with the classifier rows rotated: it loses every decision)."""
    torch.manual_seed(0)
    module = _TinyNet().eval()
    x = torch.from_numpy(_inputs(16, seed=5))
    with torch.no_grad():
        labels = module(x).argmax(1).numpy()  # the FP32 model is right by construction
    fp32 = export_onnx(module, (1, 8, 8), tmp_path / "student.onnx")
    model = onnx.load(str(fp32))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")  # weight [3, 4], bias [3]
    for init in model.graph.initializer:
        if init.name in gemm.input:
            rolled = np.roll(numpy_helper.to_array(init), 1, axis=0)
            init.CopyFrom(numpy_helper.from_array(rolled, init.name))
    onnx.save(model, str(tmp_path / "student-int8.onnx"))

    task = SimpleNamespace(
        metric="top1",
        score=lambda logits: topk_accuracy(logits, labels),
        x_test=x,
        input=SimpleNamespace(shape=[1, 8, 8], dtype="float32"),
    )
    ctx = SimpleNamespace(
        recipe=SimpleNamespace(gates=GatesConfig(parity_samples=8), export=ExportConfig()),
        threads=lambda: 1,
        task=task,
        x_test=x,
        has_teacher=False,
        console=Console(file=io.StringIO()),
    )
    rows: list[DeployedModel] = [
        _Row("student", "fp32", fp32, None, None, module=module),
        _Row("student-int8", "int8", tmp_path / "student-int8.onnx", None, "student"),
    ]
    return ctx, rows, module


def test_verify_names_the_drifting_layer_only_on_failure(
    tiny_verify: tuple[Any, list[DeployedModel], nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, rows, _ = tiny_verify
    calls: list[Path] = []
    real = localize.layer_errors

    def spy(reference: Path, candidate: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(candidate))
        return real(reference, candidate, *args, **kwargs)

    monkeypatch.setattr(localize, "layer_errors", spy)
    ctx.recipe.gates = GatesConfig(parity_samples=8, int8_max_accuracy_drop=100.0)
    passing = verify.verify_models(ctx, rows)
    assert passing["failures"] == [] and calls == []  # a passing run never localises
    assert not any("first_drift" in row for row in passing["models"].values())
    assert passing["models"]["student-int8"]["accuracy_drop"] == 100.0  # the stand-in's premise

    # the INT8 gate: the stand-in differs from its source at the classifier only
    ctx.recipe.gates = GatesConfig(parity_samples=8, int8_max_accuracy_drop=1.0)
    report = verify.verify_models(ctx, rows)
    (failure,) = report["failures"]
    gemm = next(n for n in onnx.load(str(rows[0].onnx)).graph.node if n.op_type == "Gemm")
    assert failure.startswith("student-int8 loses 100.00 top-1 points against student (gate 1)")
    assert f"; first drift at node {gemm.name} (Gemm): rel err" in failure
    assert calls == [rows[1].onnx]
    record = report["models"]["student-int8"]["first_drift"]
    assert record["samples"] == verify.LOCALIZE_SAMPLES
    assert all(t["error"] == 0.0 for t in record["trail"])  # nothing drifts before it

    # the FP32 parity gate: a corrupted weight of conv2 in the file, against a fresh export
    path = rows[0].onnx
    assert path is not None
    model = onnx.load(str(path))
    conv2 = [n for n in model.graph.node if n.op_type == "Conv"][1]
    for init in model.graph.initializer:
        if init.name == conv2.input[1]:
            w = numpy_helper.to_array(init).copy()
            w[0, 0, 1, 1] += 0.5
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    calls.clear()
    ctx.recipe.gates = GatesConfig(parity_samples=8, int8_max_accuracy_drop=100.0)
    report = verify.verify_models(ctx, rows)
    (failure,) = report["failures"]
    assert failure.startswith("student in onnxruntime differs from torch by ")
    assert failure.endswith(
        f"; first drift at node {conv2.name} (Conv): "
        f"rel err {report['models']['student']['first_drift']['error']:.3g}"
    )
    assert calls == [path]
    assert "max_abs_diff" in report["models"]["student"]  # verify.json keys stay

    # localisation that fails keeps the gate's own message and says so in verify.json
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no memory left")

    monkeypatch.setattr(localize, "layer_errors", broken)
    report = verify.verify_models(ctx, rows)
    (failure,) = report["failures"]
    assert "first drift" not in failure and failure.startswith("student in onnxruntime")
    assert report["models"]["student"]["first_drift"] == {
        "error": "localisation failed: RuntimeError: no memory left"
    }
