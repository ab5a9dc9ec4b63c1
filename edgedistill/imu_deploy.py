"""Deploy a trained IMU classifier: prune, fine-tune, export, INT8, verify, profile, bundle.

The image chain (:mod:`edgedistill.stages`, :mod:`edgedistill.deploy`,
:mod:`edgedistill.deliver`) for a 1-D model over [B, C, T] windows that was trained
elsewhere (e.g. by cross-modal distillation), as one call: :func:`deploy_imu_classifier`.
The models keep taking *normalised* windows; the normalisation, like the rest of the input
contract (:class:`~edgedistill.imu_bundle.ImuInputSpec`), is recorded in the bundle's
manifest and applied by the bundle's example.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.artifacts import atomic_write_json
from edgedistill.bench.env import environment
from edgedistill.bench.latency import measure_latency
from edgedistill.bench.stats import speedup
from edgedistill.compress.prune import prune_channels
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import DataError, GateError, RecipeError
from edgedistill.export.onnx import export_onnx
from edgedistill.imu_bundle import FP32_FILE, INT8_FILE, ImuInputSpec, write_imu_bundle
from edgedistill.metrics import count_macs, count_params, predict_logits, topk_accuracy
from edgedistill.runtime import (
    OnnxRuntimeRunner,
    Runner,
    TorchRunner,
    compare_outputs,
    run_batched,
)

ProgressFn = Callable[[str], None]
"""Called with a one-line message as each step starts."""

RUNTIMES = ("torch", "onnxruntime_fp32", "onnxruntime_int8")


@dataclass(frozen=True)
class ImuDeployResult:
    """Everything :func:`deploy_imu_classifier` measured, and where it wrote.

    Accuracies are top-1 % on the test windows (``top1_input_model``: the model as given,
    ``top1_torch``: after pruning and fine-tuning); ``int8_accuracy_drop`` is in top-1 points
    (FP32 ONNX minus INT8 ONNX); ``fp32_max_abs_diff`` is the largest |logit| difference of
    FP32 ONNX vs torch. ``latency_ms`` maps each of :data:`RUNTIMES` to p50/p90/p99/mean/
    min/max in ms per call at batch 1 (``torch``: the final model, eager, eval mode, batch
    norm unfused); ``speedups`` are p50 ratios from the same run.
    """

    top1_input_model: float
    top1_pruned_before_finetune: float | None
    top1_torch: float
    top1_onnx_fp32: float
    top1_onnx_int8: float
    int8_accuracy_drop: float
    int8_top1_agreement: float
    fp32_max_abs_diff: float
    pruned: bool
    pruning_steps: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    finetune_history: list[dict[str, float]]
    latency_ms: dict[str, dict[str, float]]
    speedups: dict[str, float]
    recommended: str
    sample_index: int
    out_dir: Path
    bundle_dir: Path
    manifest: Path
    report: Path
    fp32_onnx: Path
    int8_onnx: Path

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def deploy_imu_classifier(
    model: nn.Module,
    *,
    spec: ImuInputSpec,
    x_train_raw: np.ndarray,
    y_train: np.ndarray,
    x_test_raw: np.ndarray,
    y_test: np.ndarray,
    out_dir: Path,
    prune_ratio: float | None = 0.7,
    finetune_epochs: int = 5,
    finetune_lr: float = 0.02,
    finetune_batch_size: int = 64,
    round_to: int = 8,
    calibration_samples: int = 256,
    threads: int = 1,
    runs: int = 200,
    warmup: int = 20,
    int8_max_drop: float = 1.0,
    fp32_tolerance: float = 1e-4,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ImuDeployResult:
    """Prune, export, quantize, verify, profile and bundle a trained IMU classifier.

    Args:
        model: Trained classifier, normalised [B, C, T] windows -> [B, K] logits; not modified.
        spec: The input contract (channels, units, rate, window, normalisation, classes).
        x_train_raw: [N, C, T] raw training windows (pruning score, fine-tune, calibration).
        y_train: [N] int labels in 0..K-1.
        x_test_raw: [M, C, T] raw held-out windows (accuracy, parity, latency input).
        y_test: [M] int labels.
        out_dir: Receives ``models/`` (work ONNX files), ``verify.json``, ``bundle/`` and
            ``imu_deploy.json``.
        prune_ratio: Target MACs(after) / MACs(before) in (0, 1); None skips pruning and
            fine-tuning.
        finetune_epochs: Cross-entropy epochs after pruning (0 = none).
        finetune_lr: Peak SGD learning rate of the (one-cycle) fine-tune.
        finetune_batch_size: Windows per fine-tune step.
        round_to: Channels are pruned this many at a time.
        calibration_samples: Normalised training windows scoring pruning candidates (KL to
            the unpruned outputs) and calibrating the INT8 activation ranges.
        threads: Intra-op threads of every runner (verification and latency).
        runs: Timed calls per runtime; warmup: untimed calls before them.
        int8_max_drop: Largest allowed top-1 loss (points) of INT8 vs FP32 ONNX.
        fp32_tolerance: Largest allowed max |logit difference| of FP32 ONNX vs torch.
        seed: Seeds calibration sampling and the fine-tune.
        progress: Called with a one-line message as each step starts.

    Raises:
        RecipeError: on a bad argument. DataError: on data or a model that does not match
            ``spec``. GateError: when FP32 parity or the INT8 accuracy gate fails (details in
            ``out_dir/verify.json``; no bundle is written). StageError: when pruning cannot
            reach ``prune_ratio``.
    """
    counts = {
        "finetune_epochs": (finetune_epochs, 0),
        "finetune_batch_size": (finetune_batch_size, 1),
        "round_to": (round_to, 1),
        "calibration_samples": (calibration_samples, 1),
        "threads": (threads, 1),
        "runs": (runs, 1),
        "warmup": (warmup, 0),
    }
    _check_arguments(prune_ratio, int8_max_drop, fp32_tolerance, counts)
    x_train_np, y_train_np = _check_split("train", x_train_raw, y_train, spec)
    x_test_np, y_test_np = _check_split("test", x_test_raw, y_test, spec)
    say = progress or (lambda message: None)
    out_dir, shape = Path(out_dir), spec.input_shape
    x_train, x_test = spec.normalization.apply(x_train_np), spec.normalization.apply(x_test_np)
    rows = np.random.default_rng(seed + 1).permutation(len(x_train))[:calibration_samples]
    x_calib = x_train[np.sort(rows)]
    fp32_path = out_dir / "models" / "imu-fp32.onnx"
    int8_path = out_dir / "models" / "imu-int8.onnx"

    with _restore_torch_threads():
        student = copy.deepcopy(model).eval()
        top1_input = _accuracy(student, x_test, y_test_np, spec)
        macs_before, params_before = count_macs(student, shape), count_params(student)
        top1_no_ft: float | None = None
        steps, history = 0, []
        if prune_ratio is not None:
            say(f"prune to <= {prune_ratio:g}x MACs")
            from edgedistill.stages import output_distortion  # the image chain's KL score

            pruning = prune_channels(
                student,
                shape,
                target_macs_ratio=prune_ratio,
                round_to=round_to,
                distortion=output_distortion(student, x_calib),
            )
            student, steps = pruning.model, pruning.steps
            top1_no_ft = _accuracy(student, x_test, y_test_np, spec)
            if finetune_epochs > 0:
                say(f"fine-tune {finetune_epochs} epoch(s)")
                settings = TrainSettings(
                    finetune_epochs, batch_size=finetune_batch_size, lr=finetune_lr, seed=seed
                )
                y = torch.as_tensor(y_train_np)
                history = train_student(student, x_train, y, settings).history
            student.eval()

        say("export FP32 ONNX, quantize to INT8")
        to_deploy = getattr(student, "to_deploy", None)  # e.g. batch norm folded
        export_onnx(to_deploy() if callable(to_deploy) else student, shape, fp32_path)
        quantize_onnx_static(fp32_path, int8_path, x_calib.numpy())

        say("verify")
        x_eval = x_test.numpy()
        logits: dict[str, np.ndarray] = {}
        for key, runner in _runners(student, shape, fp32_path, int8_path, threads).items():
            with runner:
                logits[key] = run_batched(runner, x_eval)
        verify = _verify(
            logits, y_test_np, spec, fp32_path, int8_path, fp32_tolerance, int8_max_drop
        )
        atomic_write_json(out_dir / "verify.json", verify)
        if verify["failures"]:
            raise GateError(
                f"IMU deploy: {verify['failures'][0]} (details: {out_dir / 'verify.json'})"
            )

        say(f"profile at batch 1 ({runs} runs, {threads} thread(s))")
        latency: dict[str, dict[str, float]] = {}
        x1 = np.ascontiguousarray(x_eval[:1])
        for key, runner in _runners(student, shape, fp32_path, int8_path, threads).items():
            with runner:
                stats = measure_latency(runner, x1, warmup=warmup, runs=runs)
            latency[key] = {k: stats[k] for k in ("p50", "p90", "p99", "mean", "min", "max")}

    p50 = {k: v["p50"] for k, v in latency.items()}
    speedups = {
        "onnxruntime_fp32_vs_torch": speedup(p50["torch"], p50["onnxruntime_fp32"]),
        "onnxruntime_int8_vs_torch": speedup(p50["torch"], p50["onnxruntime_int8"]),
        "onnxruntime_int8_vs_fp32": speedup(p50["onnxruntime_fp32"], p50["onnxruntime_int8"]),
    }
    int8_faster = p50["onnxruntime_int8"] < p50["onnxruntime_fp32"]
    bundle = out_dir / "bundle"
    result = ImuDeployResult(
        top1_input_model=top1_input,
        top1_pruned_before_finetune=top1_no_ft,
        **{k: verify[k] for k in _VERIFY_KEYS},
        pruned=prune_ratio is not None,
        pruning_steps=steps,
        macs_before=macs_before,
        macs_after=count_macs(student, shape),
        params_before=params_before,
        params_after=count_params(student),
        finetune_history=history,
        latency_ms=latency,
        speedups=speedups,
        recommended=INT8_FILE if int8_faster else FP32_FILE,
        sample_index=_pick_sample(logits, y_test_np),
        out_dir=out_dir,
        bundle_dir=bundle,
        manifest=bundle / "manifest.json",
        report=out_dir / "imu_deploy.json",
        fp32_onnx=fp32_path,
        int8_onnx=int8_path,
    )

    say("bundle")
    latency_record = {
        "batch": 1,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "ms": latency,
        "speedups": speedups,
        "environment": environment(threads),
    }
    summary = result.as_dict()
    metrics: dict[str, Any] = {
        "test_windows": len(y_test_np),
        **{k: summary[k] for k in _METRIC_KEYS},
        "gates": verify["gates"],
        "prune_ratio_target": prune_ratio,
    }
    index, classes = result.sample_index, spec.classes
    write_imu_bundle(
        bundle,
        spec=spec,
        fp32_onnx=fp32_path,
        int8_onnx=int8_path,
        models={
            name: {
                "precision": precision,
                "top1": verify[f"top1_onnx_{precision}"],
                "latency_ms_batch1": latency[f"onnxruntime_{precision}"],
            }
            for name, precision in ((FP32_FILE, "fp32"), (INT8_FILE, "int8"))
        },
        recommended=result.recommended,
        recommended_reason=(
            f"both pass the gates; INT8 is {'faster' if int8_faster else 'not faster'} than "
            f"FP32 in ONNX Runtime at batch 1 ({p50['onnxruntime_int8']:.4f} vs "
            f"{p50['onnxruntime_fp32']:.4f} ms p50, {threads} thread(s))"
        ),
        sample_window=x_test_np[index],
        sample={
            "test_index": index,
            "label": classes[int(y_test_np[index])],
            "predicted": {
                FP32_FILE: classes[int(logits["onnxruntime_fp32"][index].argmax())],
                INT8_FILE: classes[int(logits["onnxruntime_int8"][index].argmax())],
            },
        },
        metrics=metrics,
        latency=latency_record,
    )
    report = {"result": summary, "input": spec.as_dict(), "latency": latency_record}
    atomic_write_json(result.report, {**report, "verify": verify})
    return result


_VERIFY_KEYS = (
    "top1_torch",
    "top1_onnx_fp32",
    "top1_onnx_int8",
    "int8_accuracy_drop",
    "int8_top1_agreement",
    "fp32_max_abs_diff",
)
_METRIC_KEYS = (
    "top1_input_model",
    "top1_pruned_before_finetune",
    *_VERIFY_KEYS,
    "pruned",
    "macs_before",
    "macs_after",
    "params_before",
    "params_after",
)


def _runners(
    student: nn.Module, shape: tuple[int, int], fp32: Path, int8: Path, threads: int
) -> dict[str, Runner]:
    """One runner per entry of :data:`RUNTIMES` (torch eager, ORT FP32, ORT INT8)."""
    return {
        "torch": TorchRunner(student, "torch", threads, input_shape=shape),
        "onnxruntime_fp32": OnnxRuntimeRunner(fp32, fp32.name, threads),
        "onnxruntime_int8": OnnxRuntimeRunner(int8, int8.name, threads),
    }


def _check_arguments(
    prune_ratio: float | None,
    int8_max_drop: float,
    fp32_tolerance: float,
    counts: dict[str, tuple[int, int]],
) -> None:
    """RecipeError on the first argument out of range (``counts``: name -> (value, minimum))."""
    if prune_ratio is not None and not 0 < prune_ratio < 1:
        raise RecipeError(f"prune_ratio must be in (0, 1) or None, got {prune_ratio}")
    for name, (value, low) in counts.items():
        if not isinstance(value, int) or value < low:
            raise RecipeError(f"{name} must be an integer >= {low}, got {value!r}")
    if not math.isfinite(int8_max_drop):
        raise RecipeError(f"int8_max_drop must be a finite number of points, got {int8_max_drop}")
    if not (math.isfinite(fp32_tolerance) and fp32_tolerance >= 0):
        raise RecipeError(f"fp32_tolerance must be a finite number >= 0, got {fp32_tolerance}")


def _check_split(
    split: str, x: np.ndarray, y: np.ndarray, spec: ImuInputSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows as float32 [N, C, T] and labels as int64 [N], checked against ``spec``."""
    x, y = np.asarray(x), np.asarray(y)
    c, t = spec.input_shape
    if x.ndim != 3 or x.shape[1:] != (c, t) or not np.issubdtype(x.dtype, np.number):
        raise DataError(
            f"{split} windows must be numeric [N, {c}, {t}] ({c} channels x {spec.window_s:g} s "
            f"at {spec.sample_rate_hz:g} Hz), got {x.dtype} {list(x.shape)}"
        )
    if len(x) == 0 or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{split}: need >= 1 window and one integer label each, got labels {list(y.shape)}"
        )
    if y.min() < 0 or y.max() >= len(spec.classes):
        raise DataError(f"{split} labels must be in 0..{len(spec.classes) - 1} (spec classes)")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{split} windows contain NaN or infinite values")
    return x, y.astype(np.int64)


def _accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray, spec: ImuInputSpec) -> float:
    """Top-1 % of ``model`` on normalised windows; DataError if it has the wrong class count."""
    logits = predict_logits(model, x)
    if logits.ndim != 2 or logits.shape[1] != len(spec.classes):
        raise DataError(
            f"the model outputs {list(logits.shape[1:])} per window, but the spec names "
            f"{len(spec.classes)} classes"
        )
    return topk_accuracy(logits, y)


def _verify(
    logits: dict[str, np.ndarray],
    y: np.ndarray,
    spec: ImuInputSpec,
    fp32_path: Path,
    int8_path: Path,
    tolerance: float,
    max_drop: float,
) -> dict[str, Any]:
    """Accuracies, FP32 parity vs torch and the INT8 drop, with the gate failures (if any).

    Args:
        logits: [M, K] outputs of each of :data:`RUNTIMES` on the normalised test windows.
    """
    fp32, int8 = logits["onnxruntime_fp32"], logits["onnxruntime_int8"]
    parity = compare_outputs(logits["torch"], fp32)
    top1 = {key: topk_accuracy(out, y) for key, out in logits.items()}
    drop = top1["onnxruntime_fp32"] - top1["onnxruntime_int8"]
    failures = []
    if not parity.max_abs_diff <= tolerance:  # NaN fails too
        sample, k = parity.worst_index
        failures.append(
            f"FP32 model {fp32_path.name} in onnxruntime differs from torch by "
            f"{parity.max_abs_diff:.3g} > {tolerance:g} at test window {sample}, class "
            f"'{spec.classes[k]}' (torch {parity.reference_value:.6g}, onnxruntime "
            f"{parity.candidate_value:.6g})"
        )
    if not drop <= max_drop:
        failures.append(
            f"INT8 model {int8_path.name} loses {drop:.2f} top-1 points against FP32 "
            f"({top1['onnxruntime_fp32']:.2f} -> {top1['onnxruntime_int8']:.2f} %, "
            f"gate {max_drop:g})"
        )
    return {
        "test_windows": len(y),
        "top1_torch": top1["torch"],
        "top1_onnx_fp32": top1["onnxruntime_fp32"],
        "top1_onnx_int8": top1["onnxruntime_int8"],
        "int8_accuracy_drop": drop,
        "int8_top1_agreement": compare_outputs(fp32, int8).top1_agreement,
        "fp32_max_abs_diff": parity.max_abs_diff,
        "fp32_worst_index": list(parity.worst_index),
        "gates": {"fp32_tolerance": tolerance, "int8_max_drop": max_drop},
        "failures": failures,
    }


def _pick_sample(logits: dict[str, np.ndarray], y: np.ndarray) -> int:
    """First test window every runtime classifies correctly (else where all agree, else 0)."""
    preds = [logits[key].argmax(1) for key in RUNTIMES]
    agree = (preds[0] == preds[1]) & (preds[1] == preds[2])
    for mask in (agree & (preds[1] == y), agree):
        if mask.any():
            return int(np.flatnonzero(mask)[0])
    return 0


@contextlib.contextmanager
def _restore_torch_threads() -> Iterator[None]:
    """TorchRunner sets torch's global thread count; put it back afterwards."""
    old = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(old)


__all__ = ["RUNTIMES", "ImuDeployResult", "ImuInputSpec", "deploy_imu_classifier"]
