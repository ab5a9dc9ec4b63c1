"""NNCF as a second quantizer: PTQ, accuracy control, QAT + KD, per-layer sensitivity.

A tiny convnet learns a synthetic 4-class task (a bright quadrant in noise) in a few steps.
Its "sensitive" twin adds one conv1 channel that is a constant 1000 after ReLU and that conv2
ignores (zero weights): the function is unchanged, but conv2's input quantizer (per tensor)
must span 0..1000, so the real channels (range ~3) fall into a step or two and conv2 loses
most of its input. That makes the sensitive layer known in advance: conv2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.config import QuantizeConfig
from edgedistill.errors import MissingDependencyError, StageError
from edgedistill.report.sensitivity import add_sensitivity, sensitivity_markdown

BIG = 1000.0


class TinyNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.5, (n, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 0, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 1.0
    return x, y


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean() * 100)


def sensitive_twin(model: TinyNet, big: float = BIG) -> TinyNet:
    """Same function, plus a constant channel of value ``big`` that conv2 ignores."""
    twin = TinyNet(9)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
        c1_bias, c2_bias = twin.c1.bias, twin.c2.bias
        assert c1_bias is not None and c2_bias is not None
        twin.c1.weight[:8] = model.c1.weight
        c1_bias[:8] = model.state_dict()["c1.bias"]
        c1_bias[8] = big
        twin.c2.weight[:, :8] = model.c2.weight
        c2_bias.copy_(model.state_dict()["c2.bias"])
        twin.fc.load_state_dict(model.fc.state_dict())
    return twin.eval()


def export(model: nn.Module, path: Path) -> Path:
    # The legacy exporter is ~30x faster here than the dynamo one; NNCF sees an ONNX file.
    torch.onnx.export(
        model.eval(),
        (torch.ones(2, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only spins on a busy machine
    torch.manual_seed(0)
    x, y = make_data(512, 0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        i = torch.randint(0, 512, (64,))
        loss = nn.functional.cross_entropy(model(xt[i]), yt[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folder = tmp_path_factory.mktemp("nncf")
    twin = sensitive_twin(model)
    x_val, y_val = make_data(256, 2)
    torch.set_num_threads(threads)
    return {
        "model": model,
        "twin": twin,
        "x": x,
        "y": y,
        "x_val": x_val,
        "y_val": y_val,
        "fp32": export(model, folder / "fp32.onnx"),
        "twin_fp32": export(twin, folder / "twin.onnx"),
        "folder": folder,
    }


def conv2_name(path: Path) -> str:
    import onnx

    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    return convs[1]


# ---- no NNCF needed -------------------------------------------------------------------------
def test_config_defaults_keep_todays_quantizer() -> None:
    from edgedistill.pipeline.stages.compress import _nncf_options_in_use, _wants_sensitivity

    cfg = QuantizeConfig()
    assert (cfg.backend, cfg.accuracy_control, cfg.qat) == ("onnxruntime", False, "never")
    assert not _nncf_options_in_use(cfg)  # so the stage's fingerprint and metrics are as before
    assert not _wants_sensitivity(cfg)
    assert _nncf_options_in_use(QuantizeConfig(backend="nncf"))
    assert _wants_sensitivity(QuantizeConfig(qat="when_ptq_misses_gate"))
    with pytest.raises(ValueError, match="accuracy_control: true needs backend: nncf"):
        QuantizeConfig(accuracy_control=True)


def test_missing_nncf_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny: dict[str, Any], tmp_path: Path
) -> None:
    from edgedistill.compress import nncf_quantize as nq

    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    with pytest.raises(MissingDependencyError, match=r"edgedistill\[nncf\]") as info:
        nq.nncf_ptq_onnx(tiny["fp32"], tmp_path / "q.onnx", tiny["x"][:8])
    assert info.value.exit_code != 0 and "\n" not in str(info.value)
    with pytest.raises(MissingDependencyError, match=r"quantize\.qat"):
        nq.qat_kd(
            tiny["model"], torch.zeros(1), np.zeros(1), calibration=torch.zeros(1), epochs=1, lr=1.0
        )
    assert not (tmp_path / "q.onnx").exists()


def test_fold_weight_quantizers_keeps_outputs_and_stores_int8() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgedistill.compress.qdq import fold_weight_quantizers, layer_precisions

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    scale = (np.abs(w).max(1) / 127).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["zp"], ["zp_copy"]),
            helper.make_node("QuantizeLinear", ["w", "scale", "zp_copy"], ["wq"], axis=0),
            helper.make_node("DequantizeLinear", ["wq", "scale", "zp_copy"], ["wd"], axis=0),
            helper.make_node("Gemm", ["x", "wd"], ["y"], transB=1, name="fc"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(scale, "scale"),
            numpy_helper.from_array(np.zeros(4, np.int8), "zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnxruntime as ort

    x = rng.normal(size=(5, 3)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    folded = fold_weight_quantizers(model)
    after = ort.InferenceSession(folded.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)
    assert "QuantizeLinear" not in {n.op_type for n in folded.graph.node}
    weights = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert weights["wq"].dtype == np.int8 and "w" not in weights  # float weight is gone
    assert layer_precisions(folded) == {"quantized_layers": ["fc"], "float_layers": []}
    onnx.checker.check_model(folded)


def test_report_section_lists_rows_and_is_absent_without_table(tmp_path: Path) -> None:
    import json

    table = {
        "method": "each layer alone",
        "metric": "top-1 %",
        "samples": 256,
        "models": {
            "student": [
                {
                    "rank": 1,
                    "layer": "conv2",
                    "op": "Conv",
                    "output_error": 0.38,
                    "metric_drop": 3.1,
                },
                {"rank": 2, "layer": "fc", "op": "Gemm", "output_error": 0.02, "metric_drop": 0.0},
            ]
        },
    }
    md = sensitivity_markdown(table)
    assert "| 1 | conv2 | Conv | 3.10 | 0.3800 |" in md and md.index("conv2") < md.index("fc")
    page = "<html><body><p>x</p></body></html>"
    assert add_sensitivity("# r\n", page, tmp_path / "none.json") == ("# r\n", page)
    (tmp_path / "s.json").write_text(json.dumps(table))
    md2, page2 = add_sensitivity("# r\n", page, tmp_path / "s.json")
    assert md2.startswith("# r\n") and "INT8 sensitivity per layer" in md2
    assert page2.endswith("</body></html>") and "<td>conv2</td>" in page2


# ---- NNCF on ONNX ---------------------------------------------------------------------------
def test_nncf_ptq_runs_in_onnxruntime_and_openvino(tiny: dict[str, Any]) -> None:
    pytest.importorskip("nncf")
    import onnx
    from onnx import numpy_helper

    from edgedistill.compress.nncf_quantize import nncf_ptq_onnx

    target = tiny["folder"] / "ptq.onnx"
    info = nncf_ptq_onnx(tiny["fp32"], target, tiny["x"][:128])
    assert len(info["quantized_layers"]) == 3 and info["float_layers"] == []
    x, y = tiny["x_val"], tiny["y_val"]
    fp32, int8 = ort_logits(tiny["fp32"], x), ort_logits(target, x)
    assert top1(fp32, y) >= 95  # the task was learned
    assert top1(fp32, y) - top1(int8, y) <= 1.0
    assert 0 < np.abs(int8 - fp32).mean() < 0.2 * np.abs(fp32).mean()  # quantized, and close
    assert np.mean(int8.argmax(1) == fp32.argmax(1)) >= 0.97
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(target)).graph.initializer]
    assert sum(w.dtype == np.int8 and w.ndim >= 2 for w in weights) == 3  # int8 weights
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(target), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_logits = compiled(x)[compiled.outputs[0]]
    assert np.mean(ov_logits.argmax(1) == int8.argmax(1)) >= 0.97
    assert np.abs(ov_logits - int8).mean() < 0.05 * np.abs(fp32).mean()


def test_accuracy_control_keeps_the_sensitive_layer_float(tiny: dict[str, Any]) -> None:
    pytest.importorskip("nncf")
    from edgedistill.compress.nncf_quantize import nncf_accuracy_controlled, nncf_ptq_onnx

    x, y, folder = tiny["x_val"], tiny["y_val"], tiny["folder"]
    nncf_ptq_onnx(tiny["twin_fp32"], folder / "twin-ptq.onnx", tiny["x"][:128])
    fp32_top1 = top1(ort_logits(tiny["twin_fp32"], x), y)
    ptq_drop = fp32_top1 - top1(ort_logits(folder / "twin-ptq.onnx", x), y)
    assert ptq_drop > 2.0  # the premise: plain PTQ misses a 1-point gate
    info = nncf_accuracy_controlled(
        tiny["twin_fp32"],
        folder / "twin-ac.onnx",
        tiny["x"][:128],
        (x, y),  # held out of calibration; stands for the training data's validation subset
        max_drop=1.0,
        metric=top1,
    )
    assert info["float_layers"] == [conv2_name(tiny["twin_fp32"])]
    assert len(info["quantized_layers"]) == 2
    assert info["accuracy_drop"] <= 1.0 and info["fp32_metric"] == pytest.approx(fp32_top1)
    assert fp32_top1 - top1(ort_logits(folder / "twin-ac.onnx", x), y) <= 1.0


def test_accuracy_gate_that_cannot_be_met_is_one_line(tiny: dict[str, Any]) -> None:
    pytest.importorskip("nncf")
    from edgedistill.compress.nncf_quantize import nncf_accuracy_controlled

    target = tiny["folder"] / "never.onnx"
    x_val, y_val = tiny["x_val"], tiny["y_val"]
    with pytest.raises(ValueError, match="even the FP32 model"):
        nncf_accuracy_controlled(
            tiny["fp32"], target, tiny["x"][:64], (x_val, y_val), max_drop=-1.0, metric=top1
        )

    def harsh(logits: np.ndarray, labels: np.ndarray) -> float:
        """Any visible change of any logit costs 100 points: only FP32 output meets 0."""
        reference = ort_logits(tiny["twin_fp32"], x_val[: len(labels)])
        return 100.0 - 100.0 * float(np.abs(logits - reference).max() > 1e-4)

    with pytest.raises(StageError, match=r"gates\.int8_max_accuracy_drop=0\.0") as info:
        nncf_accuracy_controlled(
            tiny["twin_fp32"], target, tiny["x"][:64], (x_val, y_val), max_drop=0.0,
            metric=harsh, max_iterations=1,
        )  # fmt: skip
    assert "\n" not in str(info.value) and info.value.exit_code != 0
    assert "quantize.qat: when_ptq_misses_gate" in str(info.value)
    assert not target.exists()


def test_sensitivity_ranks_the_sensitive_layer_first(tiny: dict[str, Any]) -> None:
    pytest.importorskip("nncf")
    from edgedistill.compress.nncf_quantize import nncf_ptq_onnx
    from edgedistill.compress.qdq import layer_sensitivity

    target = tiny["folder"] / "twin-sens.onnx"
    nncf_ptq_onnx(tiny["twin_fp32"], target, tiny["x"][:128])
    rows = layer_sensitivity(
        tiny["twin_fp32"], target, tiny["x_val"], labels=tiny["y_val"], metric=top1
    )
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["layer"] == conv2_name(tiny["twin_fp32"]) and rows[0]["op"] == "Conv"
    assert rows[0]["metric_drop"] > 2.0
    assert all(rows[0]["metric_drop"] > r["metric_drop"] for r in rows[1:])
    # on the well-behaved model no layer alone costs more than a point
    nncf_ptq_onnx(tiny["fp32"], tiny["folder"] / "plain.onnx", tiny["x"][:128])
    plain = layer_sensitivity(
        tiny["fp32"],
        tiny["folder"] / "plain.onnx",
        tiny["x_val"],
        labels=tiny["y_val"],
        metric=top1,
    )
    assert max(r["metric_drop"] for r in plain) <= 1.0
    assert rows[0]["output_error"] == max(r["output_error"] for r in rows)


# ---- NNCF on torch: QAT + KD ----------------------------------------------------------------
def test_qat_untraceable_student_is_one_line() -> None:
    pytest.importorskip("nncf")
    from edgedistill.compress.nncf_quantize import qat_kd

    bare = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 4)).eval()
    x = torch.randn(8, 1, 8, 8)
    with pytest.raises(StageError, match=r"quantize\.qat: NNCF cannot trace") as info:
        qat_kd(bare, x, bare(x).detach(), calibration=x, epochs=1, lr=1e-3)
    assert "\n" not in str(info.value) and "quantize.qat: never" in str(info.value)


@pytest.mark.slow
def test_qat_kd_writes_a_valid_int8_onnx(tiny: dict[str, Any]) -> None:
    """QAT + KD from the FP32 model's soft labels, exported: a QDQ file with int8 weights that
    computes what the fake-quantized torch model computes and keeps the FP32 accuracy.

    (On this tiny task QAT did not beat NNCF PTQ: PTQ already loses under a point on the
    plain model, and on the sensitive twin a few epochs cannot shrink a 0..1000 range.)
    """
    pytest.importorskip("nncf")
    pytest.importorskip("torchao")
    import onnx
    from onnx import numpy_helper

    from edgedistill.compress.nncf_quantize import export_qat_onnx, layer_precisions, qat_kd

    model, folder = tiny["model"], tiny["folder"]
    x_train = torch.from_numpy(tiny["x"])
    soft = model(x_train).detach()  # the FP32 model's own soft labels stand for a teacher's
    x, y = tiny["x_val"], tiny["y_val"]
    qat = qat_kd(model, x_train, soft, calibration=x_train[:128], epochs=2, lr=1e-4, batch_size=64)
    path = export_qat_onnx(qat, (1, 8, 8), folder / "qat.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert len(layer_precisions(graph)["quantized_layers"]) == 3
    weights = [numpy_helper.to_array(t) for t in graph.graph.initializer]
    assert sum(w.dtype == np.int8 and w.ndim >= 2 for w in weights) == 3  # folded to int8
    assert not any(w.dtype == np.float32 and w.ndim >= 2 for w in weights)  # no float copy
    with torch.no_grad():
        torch_logits = qat(torch.from_numpy(x)).numpy()
    qat_logits = ort_logits(path, x)
    assert np.mean(qat_logits.argmax(1) == torch_logits.argmax(1)) >= 0.98
    assert top1(ort_logits(tiny["fp32"], x), y) - top1(qat_logits, y) <= 2.0
    assert any("nncf" in key for key in qat.state_dict())  # the copy carries quantizers
    assert not any("nncf" in key for key in model.state_dict())  # the student does not


# ---- the quantize stage ---------------------------------------------------------------------
@pytest.mark.slow
def test_quantize_stage_with_nncf_qat_and_sensitivity(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without NNCF the stage stops with one line and keeps the finished stages; with it, the
    path taken per model and the sensitivity table are recorded."""
    pytest.importorskip("nncf")
    import io
    import json

    from rich.console import Console

    from edgedistill.config import Recipe
    from edgedistill.pipeline.run import run_pipeline

    recipe_dict = {
        **tiny_recipe_dict,
        "prune": {"enabled": False},
        "distill": {**tiny_recipe_dict["distill"], "epochs": 8},  # a student that learned
        "quantize": {
            "calibration_samples": 64,
            "backend": "nncf",
            "qat": "when_ptq_misses_gate",
            "qat_epochs": 1,
            "validation_samples": 64,
        },
        "gates": {**tiny_recipe_dict["gates"], "int8_max_accuracy_drop": 0.0},
    }
    recipe = Recipe.from_dict(recipe_dict)
    out, console = tmp_path / "run", Console(file=io.StringIO())
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "nncf", None)
        with pytest.raises(MissingDependencyError, match=r"edgedistill\[nncf\]"):
            run_pipeline(recipe, out, until="quantize", console=console)
    assert (out / "export" / "manifest.json").is_file()
    from edgedistill.pipeline.stages import compress

    real = compress._onnx_logits

    def ptq_misses(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
        """The stage's PTQ file predicts the next class: every right answer turns wrong."""
        logits = real(path, x, threads)
        return np.roll(logits, 1, axis=1) if path.parent == out / "quantize" else logits

    monkeypatch.setattr(compress, "_onnx_logits", ptq_misses)
    ctx = run_pipeline(recipe, out, until="quantize", console=console)
    assert "export" in ctx.skipped and ctx.executed == ["quantize"]  # finished stages kept
    metrics = json.loads((out / "quantize" / "manifest.json").read_text())["metrics"]
    record = metrics["paths"]["student"]
    assert metrics["backend"] == "nncf" and metrics["validation_samples"] == 64
    assert record["gate"] == 0.0 and record["ptq_validation_drop"] > 0
    assert record["qat"] == {"soft_labels": "teacher", "epochs": 1, "lr": 1e-4}
    assert record["qat_validation_drop"] < record["ptq_validation_drop"]
    assert record["path"] == "qat-kd"  # the QAT model replaced the PTQ one
    table = json.loads((out / "quantize" / "sensitivity.json").read_text())
    rows = table["models"]["student"]
    assert rows and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert table["samples"] == 64
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "quantize" / "student-int8.onnx"))
    shape = [2, *session.get_inputs()[0].shape[1:]]
    assert session.run(None, {"input": np.zeros(shape, np.float32)})[0].shape[0] == 2
