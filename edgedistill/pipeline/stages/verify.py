"""The ``verify`` stage: every export against torch (FP32 parity gate) and every INT8 model
against its FP32 source (task-metric drop gate). One parity check for every modality.

The gates come from :mod:`edgedistill.runtime.gates`, the functions GPU engines are checked
with too. When a gate fails, :mod:`edgedistill.runtime.localize` names the first layer that
drifts; that costs a few seconds and runs only on failure, never on a passing run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgedistill.artifacts import atomic_write_json
from edgedistill.errors import GateError
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.export import DeployedModel, deployed_models, input_dtype
from edgedistill.progress import progress_bar
from edgedistill.runtime import (
    OnnxRuntimeRunner,
    OpenVinoRunner,
    TorchRunner,
    compare_outputs,
    run_batched,
)
from edgedistill.runtime.gates import GateResult, check_accuracy_drop, check_parity, gate_for

LOCALIZE_SAMPLES = 4  # inputs run with every intermediate tensor exposed
LOCALIZE_MAX = 3  # failures localised per run (each may re-export a model)
# An FP32 file against a fresh export of its torch model: the same graph in the same runtime
# agrees bit for bit, so any layer off by more than this has changed.
FP32_DRIFT_TOLERANCE = 1e-5
# An INT8 model drifts a little at every quantized tensor; the layer named is the first whose
# relative error reaches this fraction of the output's (where the damage mostly arises).
INT8_DRIFT_SHARE = 0.5
_TOO_MANY = f"not localised: only the first {LOCALIZE_MAX} failures of a run are"
_OPENVINO_NOT_LOCALISED = (
    "not localised: OpenVINO runs the ONNX file that ONNX Runtime ran; its intermediate "
    "tensors are not exposed"
)


def stage_verify(ctx: RunContext) -> dict[str, Any]:
    """Exports against torch (FP32 parity gate) and INT8 against FP32 (accuracy-drop gate)."""
    gates = ctx.recipe.gates
    upstream = [s for s in ("distill", "prune", "export", "quantize") if s in ctx.manifests]
    inputs = {
        **ctx.output_hashes(*upstream),
        "gates": gates.model_dump(mode="json"),
        "data": ctx.data_sha256,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        report = verify_models(ctx, deployed_models(ctx))
        atomic_write_json(stage_dir / "verify.json", report)
        failures = report["failures"]
        if failures:
            raise GateError(f"verify failed: {failures[0]} (details: {stage_dir / 'verify.json'})")
        return StageOutcome(
            ["verify.json"],
            {
                "max_fp32_abs_diff": max(
                    r.get("max_abs_diff", 0.0) for r in report["models"].values()
                ),
                **{f"{n}_top1": r["top1"] for n, r in report["models"].items()},
            },
        )

    return ctx.run_stage("verify", inputs, body)


def verify_models(ctx: RunContext, models: list[DeployedModel]) -> dict[str, Any]:
    """Accuracy of every exported model on the held-out split, parity and INT8 gates.

    FP32: ONNX Runtime (and OpenVINO at f32) against the torch model on ``parity_samples``
    held-out inputs; max |diff| must stay within ``gates.fp32_max_abs_diff``. INT8: top-1
    agreement with the FP32 ONNX model and the drop of the task metric (``top1`` entries hold
    it, whatever it is), gated by ``gates.int8_max_accuracy_drop`` (points of the metric).

    A failed ONNX Runtime parity gate or INT8 gate is localised (:func:`_localize`): the
    failure line gains ``; first drift at node <name> (<op>): rel err <e>`` and the model's
    row a ``first_drift`` record (or the reason localisation gave nothing).
    """
    gates, threads = ctx.recipe.gates, ctx.threads()
    fp32_gate, int8_gate = gate_for("fp32", gates), gate_for("int8", gates)
    task = ctx.task
    metric = "top-1" if task.metric == "top1" else task.metric
    student_x = ctx.x_test.numpy()
    # The teacher keeps its own input normalisation (from its card); students use the data's.
    teacher_x = ctx.teacher_input.prepare(task.x_test).numpy() if ctx.has_teacher else student_x
    n_parity = min(gates.parity_samples, len(student_x))
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    logits_by_name: dict[str, np.ndarray] = {}
    onnx_by_name = {m.name: m.onnx for m in models}
    localized = 0
    with progress_bar(ctx.console, "verify", len(models)) as advance:
        for model in models:
            row: dict[str, Any] = {"precision": model.precision}
            x_test = teacher_x if model.name == "teacher" else student_x
            x_parity = x_test[:n_parity]
            module = model.torch_model(ctx)
            if model.onnx is None:  # a torch-only teacher: scored in torch, nothing to compare
                assert module is not None
                with TorchRunner(module, model.name, threads) as runner:
                    logits = run_batched(runner, x_test)
                row["runtime"] = "torch"
            else:
                with OnnxRuntimeRunner(model.onnx, model.name, threads) as runner:
                    logits = run_batched(runner, x_test)
            logits_by_name[model.name] = logits
            row["top1"] = task.score(logits)
            if module is not None and model.onnx is not None:
                with TorchRunner(module, model.name, threads) as reference:
                    ref = run_batched(reference, x_parity)
                checks = [("onnxruntime", logits[: len(x_parity)])]
                if model.openvino is not None:
                    with OpenVinoRunner(model.openvino, model.name, threads, "f32") as ov:
                        checks.append(("openvino", run_batched(ov, x_parity)))
                for runtime, candidate in checks:
                    result = check_parity(
                        ref, candidate, fp32_gate, what=model.name, runtime=runtime
                    )
                    key = "max_abs_diff" if runtime == "onnxruntime" else f"max_abs_diff_{runtime}"
                    row[key] = result.max_abs_diff
                    if result.passed:
                        continue
                    failure = result.message
                    if runtime != "onnxruntime":
                        row.setdefault("first_drift", {"skipped": _OPENVINO_NOT_LOCALISED})
                    elif localized < LOCALIZE_MAX:
                        localized += 1
                        failure += _localize_fp32(ctx, row, model, module, x_parity, result)
                    else:
                        row["first_drift"] = {"skipped": _TOO_MANY}
                    failures.append(failure)
            if model.source is not None:
                fp32 = logits_by_name[model.source]
                row["top1_agreement_with_fp32"] = compare_outputs(fp32, logits).top1_agreement
                drop = check_accuracy_drop(
                    results[model.source]["top1"],
                    row["top1"],
                    int8_gate,
                    what=model.name,
                    against=model.source,
                    metric=metric,
                )
                row["accuracy_drop"] = drop.accuracy_drop
                if not drop.passed:
                    failure = drop.message
                    source_onnx = onnx_by_name.get(model.source)
                    if localized >= LOCALIZE_MAX:
                        row["first_drift"] = {"skipped": _TOO_MANY}
                    elif source_onnx and model.onnx:
                        localized += 1
                        # the samples whose decision the INT8 model changed come first
                        changed = np.flatnonzero(fp32.argmax(1) != logits.argmax(1))
                        failure += _localize(
                            row,
                            _existing(source_onnx),
                            model.onnx,
                            x_test[_pick(list(changed), len(x_test))],
                            relative_tolerance=None,
                            threads=threads,
                            if_none="every tensor stays within half the output's error",
                        )
                    failures.append(failure)
            results[model.name] = row
            advance(1, model.name)
    return {
        "samples": len(student_x),
        "parity_samples": n_parity,
        "models": results,
        "failures": failures,
    }


def _pick(first: list[int], n: int) -> list[int]:
    """Up to :data:`LOCALIZE_SAMPLES` sample indices below ``n``: ``first``, then 0, 1, ..."""
    chosen = dict.fromkeys(int(i) for i in first[:LOCALIZE_SAMPLES])
    for i in range(n):
        if len(chosen) >= LOCALIZE_SAMPLES:
            break
        chosen.setdefault(i)
    return list(chosen)


def _localize_fp32(
    ctx: RunContext,
    row: dict[str, Any],
    model: DeployedModel,
    module: nn.Module,
    x_parity: np.ndarray,
    result: GateResult,
) -> str:
    """Localise a failed FP32 parity gate: the file against a fresh export of ``module``,
    on the worst sample and a few more."""
    assert model.onnx is not None
    worst = result.worst_index[0] if result.worst_index else 0
    return _localize(
        row,
        partial(_fresh_export, ctx, model, module),
        model.onnx,
        x_parity[_pick([worst], len(x_parity))],
        relative_tolerance=FP32_DRIFT_TOLERANCE,
        threads=ctx.threads(),
        if_none="every layer matches a fresh export of the torch model: the runtime or the "
        "exporter, not the file, accounts for the difference",
    )


def _existing(path: Path) -> Callable[[Path], Path]:
    """A reference that is already a file (the FP32 source of an INT8 model)."""
    return lambda _folder: path


def _fresh_export(ctx: RunContext, model: DeployedModel, module: nn.Module, folder: Path) -> Path:
    """Export ``module`` again as the export stage did: the reference an FP32 file is held to."""
    from edgedistill.export.onnx import export_onnx

    cfg = ctx.recipe.export
    to_deploy = getattr(module, "to_deploy", None)
    return export_onnx(
        to_deploy() if callable(to_deploy) else module,
        tuple(ctx.task.input.shape),
        folder / f"{model.name}-reference.onnx",
        opset=cfg.opset,
        dynamic_batch=cfg.dynamic_batch,
        input_dtype=input_dtype(ctx),
    )


def _localize(
    row: dict[str, Any],
    reference: Callable[[Path], Path],
    candidate: Path,
    x: np.ndarray,
    *,
    relative_tolerance: float | None,
    threads: int,
    if_none: str,
) -> str:
    """Name the first layer of ``candidate`` that drifts from ``reference(folder)``.

    Stores the drift record (or why there is none) as ``row["first_drift"]`` and returns the
    text to append to the failure line ("" when localisation found nothing or failed: a gate
    failure must never become a crash, and its own message stays as it was).

    Args:
        row: The model's row of verify.json.
        reference: ``folder -> Path`` of the reference ONNX model (may write into folder).
        candidate: The ONNX model that failed its gate.
        x: A few [n, ...] inputs.
        relative_tolerance: Fixed tolerance, or None: :data:`INT8_DRIFT_SHARE` of the
            output's relative error.
        if_none: What it means when no tensor drifts (stored in the record).
    """
    from edgedistill.runtime.localize import drift_from, layer_errors

    try:
        with tempfile.TemporaryDirectory(prefix="edgedistill-verify-") as tmp:
            errors = layer_errors(reference(Path(tmp)), candidate, x, threads=threads)
        output_error = errors.output.error if errors.output is not None else float("nan")
        tolerance = relative_tolerance
        if tolerance is None:
            tolerance = INT8_DRIFT_SHARE * output_error
            if not tolerance > 0:  # also NaN: fall back to "any difference"
                tolerance = FP32_DRIFT_TOLERANCE
        drift = drift_from(errors, tolerance)
    except Exception as exc:  # localisation is a diagnosis: it must not hide the gate failure
        row["first_drift"] = {"error": f"localisation failed: {type(exc).__name__}: {exc}"}
        return ""
    if drift is None:
        row["first_drift"] = {
            "none": f"no tensor differs by more than rel {tolerance:.3g}: {if_none}",
            "output_error": output_error,
            "compared": len(errors.tensors),
            "samples": errors.samples,
        }
        return ""
    row["first_drift"] = drift.to_dict()
    return f"; {drift.summary()}"
