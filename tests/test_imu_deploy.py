"""IMU deployment: prune, fine-tune, ONNX, INT8, verify, profile, bundle and its example."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgedistill.artifacts import sha256_file
from edgedistill.data.imu import ImuNormalization
from edgedistill.data.paired import IMU_CHANNELS_6AXIS, IMU_UNITS_6AXIS, PairedWindows
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import DataError, GateError, RecipeError
from edgedistill.imu_deploy import ImuDeployResult, ImuInputSpec, deploy_imu_classifier
from edgedistill.students import build_model

CLASSES = ("resting", "walking", "running")
FREQS_HZ = (1.0, 2.5, 5.0)  # class k: every channel oscillates at FREQS_HZ[k] ...
AMPLITUDES = (0.3, 1.0, 2.5)  # ... with about this amplitude
NOISE = 0.2
RATE_HZ, WINDOW_S, T = 50.0, 1.0, 50
OFFSETS = np.array([0.0, 0.0, 9.81, 0.0, 0.0, 0.0], dtype=np.float32)  # gravity on acc_z


def make_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 6, 50] raw windows: a class-dependent sine (random phase and gain) plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    t = np.arange(T) / RATE_HZ
    freqs = np.asarray(FREQS_HZ)[labels][:, None, None]
    amplitude = np.asarray(AMPLITUDES)[labels][:, None, None] * rng.uniform(0.7, 1.3, (n, 6, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 6, 1))
    x = amplitude * np.sin(2 * np.pi * freqs * t + phase) + rng.normal(0, NOISE, (n, 6, T))
    return (x + OFFSETS[None, :, None]).astype(np.float32), labels.astype(np.int64)


def make_spec(x_train: np.ndarray, **changes: Any) -> ImuInputSpec:
    norm = ImuNormalization.from_windows(x_train)
    fields: dict[str, Any] = {
        "channels": IMU_CHANNELS_6AXIS,
        "units": IMU_UNITS_6AXIS,
        "sample_rate_hz": RATE_HZ,
        "window_s": WINDOW_S,
        "stride_s": 0.5,
        "mean": norm.mean,
        "std": norm.std,
        "classes": CLASSES,
    }
    fields.update(changes)
    return ImuInputSpec(**fields)


@dataclass
class Setup:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    spec: ImuInputSpec
    model: nn.Module


@pytest.fixture(scope="module")
def setup() -> Setup:
    torch.set_num_threads(1)
    x_train, y_train = make_windows(240, seed=1)
    x_test, y_test = make_windows(90, seed=2)
    spec = make_spec(x_train)
    torch.manual_seed(0)
    model = build_model(
        "imu_cnn", {"in_channels": 6, "num_classes": 3, "widths": [8, 16, 16], "kernel_size": 5}
    )
    settings = TrainSettings(epochs=2, batch_size=8, lr=0.1, seed=0)
    train_student(model, spec.normalization.apply(x_train), torch.as_tensor(y_train), settings)
    return Setup(x_train, y_train, x_test, y_test, spec, model.eval())


def deploy(setup: Setup, out: Path, **kwargs: Any) -> ImuDeployResult:
    options: dict[str, Any] = {
        "finetune_epochs": 2,
        "finetune_batch_size": 16,
        "finetune_lr": 0.05,
        "runs": 20,
        "warmup": 2,
        **kwargs,
    }
    return deploy_imu_classifier(
        setup.model,
        spec=setup.spec,
        x_train_raw=setup.x_train,
        y_train=setup.y_train,
        x_test_raw=setup.x_test,
        y_test=setup.y_test,
        out_dir=out,
        **options,
    )


@pytest.fixture(scope="module")
def deployed(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> ImuDeployResult:
    torch.set_num_threads(1)
    return deploy(setup, tmp_path_factory.mktemp("imu_deploy"))


def manifest_of(result: ImuDeployResult) -> dict[str, Any]:
    return json.loads(result.manifest.read_text())


def run_example(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / "example.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def predicted_activity(stdout: str) -> str:
    match = re.search(r"^activity: (.+)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1).strip()


def test_end_to_end_writes_every_file(deployed: ImuDeployResult) -> None:
    bundle = deployed.bundle_dir
    names = [
        "model.onnx",
        "model-int8.onnx",
        "example.py",
        "sample_window.npy",
        "sample_window.csv",
        "README.md",
    ]
    for name in [*names, "manifest.json"]:
        assert (bundle / name).is_file(), name
    for path in (deployed.report, deployed.fp32_onnx, deployed.int8_onnx):
        assert path.is_file()
    assert (deployed.out_dir / "verify.json").is_file()
    manifest = manifest_of(deployed)
    assert set(manifest["files"]) == set(names)
    for name, digest in manifest["files"].items():
        assert sha256_file(bundle / name) == digest, name
    report = json.loads(deployed.report.read_text())
    assert report["result"]["recommended"] == deployed.recommended
    assert report["verify"]["failures"] == []
    assert "python example.py" in (bundle / "README.md").read_text()


def test_fp32_parity_int8_gate_and_latency(deployed: ImuDeployResult) -> None:
    assert deployed.fp32_max_abs_diff <= 1e-4
    assert deployed.top1_onnx_fp32 == pytest.approx(deployed.top1_torch)
    assert deployed.top1_torch >= 80.0, deployed
    assert deployed.int8_accuracy_drop <= 1.0
    assert set(deployed.latency_ms) == {"torch", "onnxruntime_fp32", "onnxruntime_int8"}
    for stats in deployed.latency_ms.values():
        assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"]
    p50 = {k: v["p50"] for k, v in deployed.latency_ms.items()}
    assert deployed.speedups["onnxruntime_int8_vs_fp32"] == pytest.approx(
        p50["onnxruntime_fp32"] / p50["onnxruntime_int8"]
    )
    faster = (
        "model-int8.onnx" if p50["onnxruntime_int8"] < p50["onnxruntime_fp32"] else "model.onnx"
    )
    assert deployed.recommended == faster == manifest_of(deployed)["recommended"]


def test_pruning_meets_macs_target_and_fine_tunes(deployed: ImuDeployResult, setup: Setup) -> None:
    assert deployed.pruned and deployed.pruning_steps >= 1
    assert deployed.macs_after <= 0.7 * deployed.macs_before
    assert deployed.params_after < deployed.params_before
    assert len(deployed.finetune_history) == 2
    assert deployed.top1_pruned_before_finetune is not None
    assert [m.out_channels for m in setup.model.modules() if isinstance(m, nn.Conv1d)] == [
        8,
        16,
        16,
    ]  # the caller's model is untouched


def test_manifest_holds_the_full_input_spec(deployed: ImuDeployResult, setup: Setup) -> None:
    manifest = manifest_of(deployed)
    spec = manifest["input"]
    assert spec == setup.spec.as_dict()
    assert spec["channels"] == list(IMU_CHANNELS_6AXIS)
    assert spec["units"] == list(IMU_UNITS_6AXIS)
    assert spec["sample_rate_hz"] == RATE_HZ
    assert (spec["window_s"], spec["window_samples"]) == (1.0, 50)
    assert (spec["stride_s"], spec["stride_samples"]) == (0.5, 25)
    assert spec["layout"] == "[batch, channels, time]" and spec["dtype"] == "float32"
    assert spec["shape"] == ["batch", 6, 50]
    assert spec["normalization"]["mean"] == list(setup.spec.mean)
    assert spec["normalization"]["std"] == list(setup.spec.std)
    assert spec["classes"] == list(CLASSES) == manifest["classes"]
    session = ort.InferenceSession(str(deployed.bundle_dir / "model.onnx"))
    assert session.get_inputs()[0].name == spec["name"]
    assert session.get_inputs()[0].shape[1:] == [6, 50]
    metrics = manifest["metrics"]
    for key in (
        "top1_torch",
        "top1_onnx_fp32",
        "top1_onnx_int8",
        "fp32_max_abs_diff",
        "macs_after",
    ):
        assert key in metrics
    assert set(manifest["latency"]["ms"]) == set(deployed.latency_ms)
    assert manifest["latency"]["environment"]["threads"] == 1
    sample = manifest["sample"]
    assert sample["label"] == CLASSES[setup.y_test[sample["test_index"]]]


def expected_fp32_prediction(bundle: Path) -> str:
    """The FP32 bundle model's class for the raw sample window, computed independently."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    norm = manifest["input"]["normalization"]
    raw = np.load(bundle / "sample_window.npy")
    x = (raw - np.asarray(norm["mean"], dtype=np.float32)[:, None]) / np.asarray(
        norm["std"], dtype=np.float32
    )[:, None]
    session = ort.InferenceSession(str(bundle / "model.onnx"))
    logits = session.run(None, {"input": x[None].astype(np.float32)})[0]
    return manifest["classes"][int(logits.argmax())]


def test_example_classifies_npy_and_csv(
    deployed: ImuDeployResult, setup: Setup, tmp_path: Path
) -> None:
    bundle = deployed.bundle_dir
    manifest = manifest_of(deployed)
    raw = np.load(bundle / "sample_window.npy")
    np.testing.assert_array_equal(raw, setup.x_test[manifest["sample"]["test_index"]])
    expected = expected_fp32_prediction(bundle)
    assert manifest["sample"]["predicted"]["model.onnx"] == expected
    for window in ("sample_window.npy", "sample_window.csv"):
        done = run_example(bundle, str(bundle / window), "--model", "model.onnx")
        assert done.returncode == 0, done.stderr
        assert predicted_activity(done.stdout) == expected, done.stdout
    # default: the recommended model on the bundled sample; a [T, C] array works too
    transposed = tmp_path / "window_tc.npy"
    np.save(transposed, raw.T)
    for args in ((), (str(transposed),)):
        done = run_example(bundle, *args)
        assert done.returncode == 0, done.stderr
        recommended = manifest["recommended"]
        assert predicted_activity(done.stdout) == manifest["sample"]["predicted"][recommended]
        assert "probabilities:" in done.stdout


def test_example_refuses_a_wrong_window(deployed: ImuDeployResult, tmp_path: Path) -> None:
    bundle = deployed.bundle_dir
    raw = np.load(bundle / "sample_window.npy")
    short = tmp_path / "short.npy"
    np.save(short, raw[:, :40])
    done = run_example(bundle, str(short))
    assert done.returncode != 0
    assert "40 samples per channel" in done.stderr and "exactly 50" in done.stderr
    assert "Traceback" not in done.stderr
    csv_text = (bundle / "sample_window.csv").read_text().splitlines()
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("\n".join(["a,b,c,d,e,f", *csv_text[1:]]) + "\n")
    done = run_example(bundle, str(bad_header))
    assert done.returncode != 0 and "header" in done.stderr
    wrong_channels = tmp_path / "five.npy"
    np.save(wrong_channels, raw[:5])
    done = run_example(bundle, str(wrong_channels))
    assert done.returncode != 0 and "6 channels" in done.stderr


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"std": (1.0, 1.0, 0.0, 1.0, 1.0, 1.0)}, "std"),
        ({"mean": (0.0,) * 5}, "6 channels but 5 mean"),
        ({"units": ("g",) * 4}, "6 channels but 4 units"),
        ({"window_s": 1.01}, "whole number of samples"),
        ({"stride_s": 0.0}, "stride_s"),
        ({"classes": ("a",)}, "class names"),
    ],
)
def test_bad_spec_raises_data_error(setup: Setup, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        make_spec(setup.x_train, **changes)


def test_spec_from_paired(setup: Setup) -> None:
    n = 4
    paired = PairedWindows(
        imu=setup.x_train[:n],
        video=None,
        labels=setup.y_train[:n],
        subjects=np.zeros(n, dtype=np.int64),
        recordings=np.zeros(n, dtype=np.int64),
        start_s=np.arange(n, dtype=np.float64),
        classes=CLASSES,
        imu_rate_hz=RATE_HZ,
        window_s=WINDOW_S,
        stride_s=0.5,
    )
    norm = ImuNormalization.from_windows(setup.x_train)
    spec = ImuInputSpec.from_paired(paired, norm)
    assert spec == make_spec(setup.x_train)
    assert (spec.window_samples, spec.stride_samples) == (50, 25)
    with pytest.raises(DataError, match="samples"):
        ImuInputSpec.from_paired(dataclasses.replace(paired, window_s=2.0), norm)


def test_bad_arguments_and_data(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="prune_ratio"):
        deploy(setup, tmp_path, prune_ratio=1.5)
    with pytest.raises(DataError, match=r"\[N, 6, 50\]"):
        deploy_imu_classifier(
            setup.model,
            spec=setup.spec,
            x_train_raw=setup.x_train[:, :, :40],
            y_train=setup.y_train,
            x_test_raw=setup.x_test,
            y_test=setup.y_test,
            out_dir=tmp_path,
        )
    for classes, match in ((("a", "b"), "labels"), (("a", "b", "c", "d"), "spec names 4")):
        with pytest.raises(DataError, match=match):  # 3 classes in the labels and the model
            deploy_imu_classifier(
                setup.model,
                spec=make_spec(setup.x_train, classes=classes),
                x_train_raw=setup.x_train,
                y_train=setup.y_train,
                x_test_raw=setup.x_test,
                y_test=setup.y_test,
                out_dir=tmp_path,
            )
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_impossible_int8_gate_raises(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(GateError, match=r"INT8 model imu-int8\.onnx loses") as info:
        deploy(setup, tmp_path, prune_ratio=None, int8_max_drop=-1.0)
    assert "\n" not in str(info.value)
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["failures"] and report["top1_onnx_fp32"] - report["top1_onnx_int8"] > -1.0
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "imu_deploy.json").exists()


def test_fp32_parity_gate_names_model_and_window(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(GateError, match=r"FP32 model imu-fp32\.onnx .* at test window \d+, class"):
        deploy(setup, tmp_path, prune_ratio=None, fp32_tolerance=0.0)
