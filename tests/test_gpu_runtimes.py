"""GPU and TensorRT runtimes: the CPU-testable pieces (registry, device timing in the latency
loop, profile-stage config and plan, the GPU benchmark's dry run), plus ``gpu`` / ``trt`` tests
that run only where a GPU / TensorRT exist. TensorRT's engine plan: test_tensorrt_plan.py."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from test_tensorrt_plan import tiny_onnx
from torch import nn

import edgedistill.bench.latency as latency_module
from edgedistill.bench.latency import measure_latency
from edgedistill.config import ProfileConfig, Recipe
from edgedistill.errors import MissingDependencyError, RecipeError
from edgedistill.pipeline.stages.export import DeployedModel
from edgedistill.pipeline.stages.profile import _precisions, _unavailable
from edgedistill.runtime.base import Runner
from edgedistill.runtime.onnxruntime_runner import OnnxRuntimeRunner
from edgedistill.runtime.registry import (
    RUNTIMES,
    make_runner,
    runtime_spec,
    runtime_status,
    unavailable_reason,
)
from edgedistill.runtime.torch_cuda_runner import (
    CudaUnavailableError,
    TorchCudaRunner,
    first_tensor,
)
from edgedistill.schema import validate_section

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
GPU_RUNTIMES = ("torch-cuda", "tensorrt", "onnxruntime-cuda", "onnxruntime-trt", "torch-tensorrt")
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs TensorRT and a GPU")
no_gpu_here = pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without a GPU")


# ---- registry ------------------------------------------------------------------------------
def test_registry_lists_the_gpu_runtimes_with_precisions_and_inputs() -> None:
    status = runtime_status()
    assert set(GPU_RUNTIMES) <= set(status)
    assert status["torch-cuda"]["precisions"] == ["fp32", "fp16", "bf16"]
    assert status["torch-cuda"]["takes"] == "torch" and status["torch-cuda"]["needs_gpu"]
    assert status["tensorrt"]["precisions"] == ["fp32", "fp16", "int8"]
    assert status["tensorrt"]["takes"] == "onnx"
    assert status["torch-tensorrt"]["takes"] == "torch"
    for name in GPU_RUNTIMES:
        assert status[name]["needs_gpu"] is True and "gpu" in status[name]
    for name in ("torch", "onnxruntime", "openvino"):
        assert "gpu" not in status[name]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_status_and_make_runner_without_tensorrt(tmp_path: Path) -> None:
    status = runtime_status()
    for name in ("tensorrt", "torch-tensorrt"):
        assert status[name]["installed"] is False and status[name]["available"] is False
        assert status[name]["install"].startswith("pip install 'edgedistill[trt]'")
    with pytest.raises(MissingDependencyError) as info:
        make_runner("tensorrt", tiny_onnx(tmp_path / "m.onnx"), "m", precision="fp16")
    assert info.value.extra == "trt" and info.value.package == "tensorrt"
    assert "edgedistill[trt]" in str(info.value) and "\n" not in str(info.value)
    assert (unavailable_reason("tensorrt") or "").startswith("not installed: pip install")


def test_status_of_onnxruntime_gpu_providers(tmp_path: Path) -> None:
    import onnxruntime as ort

    status = runtime_status()
    for name, provider in (
        ("onnxruntime-cuda", "CUDAExecutionProvider"),
        ("onnxruntime-trt", "TensorrtExecutionProvider"),
    ):
        present = provider in ort.get_available_providers()
        assert status[name]["installed"] is present
        if not present:
            assert "edgedistill[gpu]" in status[name]["install"]
            assert "replaces onnxruntime" in status[name]["install"]
            with pytest.raises(MissingDependencyError) as info:
                make_runner(name, tiny_onnx(tmp_path / "m.onnx"), "m")
            assert info.value.extra == "gpu" and "never both" in str(info.value)


@no_gpu_here
def test_torch_cuda_without_a_gpu() -> None:
    status = runtime_status()
    assert status["torch-cuda"]["installed"] is True
    assert status["torch-cuda"]["gpu"] is False and status["torch-cuda"]["available"] is False
    assert unavailable_reason("torch-cuda") == "no CUDA GPU (torch.cuda.is_available() is False)"
    runner = make_runner("torch-cuda", nn.Linear(4, 3), "lin", precision="bf16")
    with pytest.raises(CudaUnavailableError) as info:
        runner.load()
    assert isinstance(info.value, MissingDependencyError)  # skipped alike by callers
    assert str(info.value) == (
        "runtime torch-cuda needs a CUDA GPU (torch.cuda.is_available() is False)"
    )


def test_make_runner_checks_precision_and_cpu_runtimes_still_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8"):
        make_runner("torch-cuda", nn.Linear(4, 3), "lin", precision="int8")
    with pytest.raises(ValueError, match="bf16"):
        make_runner("tensorrt", tmp_path / "m.onnx", "m", precision="bf16")
    with pytest.raises(ValueError, match="known"):
        runtime_spec("tflite")
    assert unavailable_reason("onnxruntime") is None
    path = tiny_onnx(tmp_path / "m.onnx")
    with make_runner("onnxruntime", path, "m") as runner:
        assert runner.infer(np.ones((2, 4), np.float32)).shape == (2, 3)


def test_torch_cuda_runner_arguments() -> None:
    with pytest.raises(ValueError, match="int8"):
        TorchCudaRunner(nn.Linear(4, 3), "lin", precision="int8")
    x = torch.ones(2, 3)
    assert first_tensor((x, torch.zeros(1))) is x
    assert first_tensor({"logits": x}) is x
    assert first_tensor([[x]]) is x
    with pytest.raises(TypeError):
        first_tensor(())


# ---- device timing in the latency loop -----------------------------------------------------
class DeviceTimedRunner(Runner):
    """Each call moves a fake wall clock by 10 ms; timed_infer reports device times 1, 2, ..."""

    runtime = "fake-gpu"

    def __init__(self, clock: list[int], device_ms: bool = True) -> None:
        super().__init__("fake")
        self.clock = clock
        self.device_ms = device_ms
        self.timed = 0

    def _load(self) -> None:
        pass

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.clock[0] += 10_000_000
        return np.zeros((x.shape[0], 2), np.float32)

    def timed_infer(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        out = self.infer(x)
        self.timed += 1
        return out, float(self.timed) if self.device_ms else None


def _fake_time(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    clock = [0]
    monkeypatch.setattr(
        latency_module, "time", types.SimpleNamespace(perf_counter_ns=lambda: clock[0])
    )
    return clock


def test_measure_latency_uses_device_time_when_the_runner_has_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = DeviceTimedRunner(_fake_time(monkeypatch))
    stats = measure_latency(runner, np.zeros((4, 3), np.float32), warmup=5, runs=10)
    assert runner.timed == 10  # warm-up calls are plain infer calls
    assert stats["timing"] == "cuda-events"
    samples = [float(i) for i in range(1, 11)]  # the device times, not the 10 ms wall times
    assert stats["p50"] == pytest.approx(float(np.percentile(samples, 50)))
    assert stats["p99"] == pytest.approx(float(np.percentile(samples, 99)))
    assert stats["max"] == pytest.approx(10.0) and stats["min"] == pytest.approx(1.0)
    assert stats["wall_p50"] == pytest.approx(10.0)
    assert stats["per_sample_p50"] == pytest.approx(5.5 / 4)


def test_measure_latency_falls_back_to_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = DeviceTimedRunner(_fake_time(monkeypatch), device_ms=False)
    stats = measure_latency(runner, np.zeros((1, 3), np.float32), warmup=0, runs=5)
    assert stats["timing"] == "wall" and "wall_p50" not in stats
    assert stats["p50"] == pytest.approx(10.0) and stats["max"] == pytest.approx(10.0)


# ---- profile config and plan ---------------------------------------------------------------
def _profile(raw: dict[str, Any]) -> ProfileConfig:
    cfg: ProfileConfig = validate_section(
        ProfileConfig, raw, base_dir=None, source="recipe.yaml", prefix="profile"
    )
    return cfg


def test_profile_config_accepts_registry_names_and_keeps_defaults() -> None:
    default = _profile({})
    assert default.runtimes == ("torch", "onnxruntime", "openvino")
    assert default.precisions == ("fp32",)
    cfg = _profile({"runtimes": ["torch-cuda", "tensorrt", "torch-cuda"], "precisions": ["bf16"]})
    assert cfg.runtimes == ("torch-cuda", "tensorrt")
    assert cfg.precisions == ("fp32", "bf16")  # fp32 is always measured
    assert _profile({"runtimes": list(RUNTIMES)}).runtimes == tuple(RUNTIMES)


def test_profile_config_rejects_an_unknown_runtime_listing_the_known_ones() -> None:
    with pytest.raises(RecipeError) as info:
        _profile({"runtimes": ["torch", "tflite"]})
    message = str(info.value)
    assert "profile.runtimes" in message and "'tflite'" in message and "\n" not in message
    for name in ("torch", "onnxruntime", "openvino", *GPU_RUNTIMES):
        assert repr(name) in message
    with pytest.raises(RecipeError, match=r"profile\.precisions"):
        _profile({"precisions": ["int4"]})


def test_recipe_with_gpu_runtimes(tiny_recipe_dict: dict[str, Any]) -> None:
    raw = {**tiny_recipe_dict}
    raw["profile"] = {**raw["profile"], "runtimes": ["onnxruntime", "tensorrt", "torch-cuda"]}
    recipe = Recipe.from_dict(raw)
    assert recipe.profile.runtimes == ("onnxruntime", "tensorrt", "torch-cuda")


@pytest.mark.parametrize("recipe", sorted((ROOT / "students").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_profile_section_still_validates(recipe: Path) -> None:
    raw = yaml.safe_load(recipe.read_text()) or {}
    cfg = _profile(raw.get("profile") or {})
    assert cfg.precisions == ("fp32",)


def _model(precision: str) -> DeployedModel:
    return DeployedModel("student", precision, Path("s.onnx"), None, None)


@pytest.mark.parametrize(
    ("runtime", "precision", "extra", "expected"),
    [
        ("torch-cuda", "fp32", ("fp32", "fp16", "bf16"), ["fp32", "fp16", "bf16"]),
        ("torch-cuda", "fp32", ("fp32",), ["fp32"]),
        ("torch", "fp32", ("fp32", "fp16", "bf16"), ["fp32"]),
        ("tensorrt", "fp32", ("fp32", "fp16", "bf16"), ["fp32", "fp16"]),
        ("onnxruntime", "fp32", ("fp32", "fp16"), ["fp32"]),
        ("tensorrt", "int8", ("fp32", "fp16"), ["int8"]),
        ("onnxruntime", "int8", ("fp32",), ["int8"]),
        ("torch-cuda", "int8", ("fp32", "fp16"), []),
        ("torch-tensorrt", "int8", ("fp32",), []),
    ],
)
def test_profile_plan_precisions(
    runtime: str, precision: str, extra: tuple[str, ...], expected: list[str]
) -> None:
    assert _precisions(runtime_spec(runtime), _model(precision), extra) == expected


def test_profile_skips_unavailable_runtimes_with_one_line_each() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=400)
    ctx: Any = types.SimpleNamespace(console=console)
    skipped = _unavailable(ctx, ("torch", "onnxruntime", *GPU_RUNTIMES))
    expected = {rt: unavailable_reason(rt) for rt in GPU_RUNTIMES if unavailable_reason(rt)}
    assert skipped == expected
    assert "torch" not in skipped and "onnxruntime" not in skipped
    printed = buffer.getvalue().splitlines()
    assert len(printed) == len(expected)
    for line, (runtime, reason) in zip(printed, expected.items(), strict=True):
        # rendered as written: "edgedistill[trt]" survives rich's markup
        assert line == f"• profile: skipping {runtime}: {reason}"
    if not HAS_CUDA:
        assert "torch-cuda" in skipped


# ---- the GPU benchmark script --------------------------------------------------------------
def _gpu_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the script's dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _gpu_script()
    out = tmp_path / "gpu.json"
    assert script.main(["--dry-run", "--no-teacher", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["dry_run"] is True and doc["agent_loopback"] is None
    assert [r["model"].split()[0] for r in doc["rows"]] == ["fashion-mnist", "seglearn-watch"]
    for row in doc["rows"]:
        assert row["timing"] == "wall" and row["batch"] == 1 and row["precision"] == "fp32"
        assert row["throughput_per_s"] == pytest.approx(1e3 / row["p50"])
        assert 0 < row["p50"] <= row["p99"]
    table = capsys.readouterr().out
    assert "| fashion-mnist student (convnet 16/32/64) | fp32 | no |" in table


@no_gpu_here
def test_gpu_benchmark_exits_clearly_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert _gpu_script().main(["--no-teacher"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_benchmark_output_agreement_and_table() -> None:
    script = _gpu_script()
    ref = np.array([[1.0, 3.0, 0.0], [2.0, 0.0, -4.0]], np.float32)
    cand = np.array([[1.5, 2.0, 2.5], [2.0, 0.0, -4.0]], np.float32)
    checks = script.output_agreement(ref, cand)
    assert checks["max_abs_diff"] == pytest.approx(2.5)
    assert checks["rel_max_abs_diff"] == pytest.approx(2.5 / 4.0)
    assert checks["top1_agreement"] == pytest.approx(50.0)  # row 0 flips 1 -> 2
    rows = [
        {"model": "m", "precision": p, "cuda_graphs": g, "batch": b, "p50": 0.5, "p99": 0.75,
         "throughput_per_s": b / 0.5e-3, "timing": "cuda-events"}
        for p in ("fp32", "fp16") for g in (False, True) for b in (1, 8)
    ]  # fmt: skip
    table = script.markdown_table(
        rows, [{"model": "m", "candidate": "fp16", "reference": "fp32 eager", **checks}]
    )
    assert "| m | fp16 | yes | 0.500 / 0.750 (2,000) | 0.500 / 0.750 (16,000) |" in table
    assert "| m | fp16 | fp32 eager | 2.50e+00 | 6.25e-01 | 50.0% |" in table
    assert "cuda-events" in table


# ---- real GPU / TensorRT (skipped without them) --------------------------------------------
class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_reduced_precision_close_to_fp32(precision: str) -> None:
    torch.manual_seed(0)
    model = SmallCnn().eval()
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    with (
        TorchCudaRunner(model, "cnn") as fp32,
        TorchCudaRunner(model, "cnn", precision=precision) as low,
    ):
        ref, out = fp32.infer(x), low.infer(x)
    with torch.inference_mode():
        cpu = model(torch.from_numpy(x)).numpy()
    assert out.dtype == np.float32 and out.shape == (64, 10)
    assert np.max(np.abs(ref - cpu)) < 1e-2 * np.max(np.abs(cpu))  # TF32 convs at most
    tolerance = 1e-2 if precision == "fp16" else 3e-2
    assert np.max(np.abs(out - ref)) < tolerance * np.max(np.abs(ref))
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.95
    assert next(model.parameters()).device.type == "cpu"  # the caller's module is untouched


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_graphs_match_eager_and_time_on_the_gpu() -> None:
    torch.manual_seed(0)
    model = SmallCnn().eval()
    rng = np.random.default_rng(1)
    graphs = TorchCudaRunner(model, "cnn", cuda_graphs=True)
    with TorchCudaRunner(model, "cnn") as eager, graphs:
        for batch in (1, 8, 1):  # a second shape, then the first graph again
            x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
            np.testing.assert_allclose(graphs.infer(x), eager.infer(x), rtol=0, atol=1e-5)
        assert len(graphs._graphs) == 2
        stats = measure_latency(graphs, x, warmup=5, runs=20)
    assert stats["timing"] == "cuda-events" and stats["p50"] > 0
    assert stats["wall_p50"] >= stats["p50"] * 0.5


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_onnxruntime_and_is_cached(tmp_path: Path, precision: str) -> None:
    from edgedistill.export.tensorrt import build_engine
    from edgedistill.runtime.tensorrt_runner import TensorRtRunner

    path = tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    with OnnxRuntimeRunner(path, "tiny") as ort_runner:
        ref = ort_runner.infer(x)
    engines = tmp_path / "engines"
    trt = TensorRtRunner(path, "tiny", precision=precision, batch_sizes=(1, 8), engine_dir=engines)
    with trt:
        out = trt.infer(x)
        assert trt.engine_info is not None and trt.engine_info.cached is False
        assert trt.timed_infer(x[:1])[1] is not None
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(out, ref, atol=tolerance * np.max(np.abs(ref)), rtol=0)
    again = build_engine(path, engines, precision=precision, batch_sizes=(1, 8))
    assert again.cached is True and again.build_seconds == 0.0


def test_gpu_benchmark_agent_loopback_matches_local_profiling() -> None:
    """The benchmark's agent part, on CPU: the agent on loopback measures the student's ONNX
    file with ONNX Runtime within noise of measuring it locally (ratio in one process)."""
    result = _gpu_script().agent_loopback(runs=100, warmup=5)
    assert result is not None and result["errors"] == []
    assert [(r["runtime"], r["batch"]) for r in result["rows"]] == [
        ("onnxruntime", 1),
        ("onnxruntime", 8),
    ]
    for row in result["rows"]:
        assert 0.33 <= row["ratio_agent_vs_local"] <= 3, row  # measured: 1.01-1.02
