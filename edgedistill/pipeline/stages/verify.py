"""The ``verify`` stage: every export against torch (FP32 parity gate) and every INT8 model
against its FP32 source (task-metric drop gate). One parity check for every modality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.artifacts import atomic_write_json
from edgedistill.errors import GateError
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.export import DeployedModel, deployed_models
from edgedistill.progress import progress_bar
from edgedistill.runtime import (
    OnnxRuntimeRunner,
    OpenVinoRunner,
    TorchRunner,
    compare_outputs,
    run_batched,
)
from edgedistill.runtime.compare import check_parity


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
    """
    gates, threads = ctx.recipe.gates, ctx.threads()
    task = ctx.task
    metric = "top-1" if task.metric == "top1" else task.metric
    student_x = ctx.x_test.numpy()
    # The teacher keeps its own input normalisation (from its card); students use the data's.
    teacher_x = ctx.teacher_input.prepare(task.x_test).numpy() if ctx.has_teacher else student_x
    n_parity = min(gates.parity_samples, len(student_x))
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    logits_by_name: dict[str, np.ndarray] = {}
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
                    cmp, failure = check_parity(
                        ref, candidate, gates.fp32_max_abs_diff, what=model.name, runtime=runtime
                    )
                    key = "max_abs_diff" if runtime == "onnxruntime" else f"max_abs_diff_{runtime}"
                    row[key] = cmp.max_abs_diff
                    if failure is not None:
                        failures.append(failure)
            if model.source is not None:
                fp32 = logits_by_name[model.source]
                row["top1_agreement_with_fp32"] = compare_outputs(fp32, logits).top1_agreement
                row["accuracy_drop"] = results[model.source]["top1"] - row["top1"]
                if not row["accuracy_drop"] <= gates.int8_max_accuracy_drop:
                    failures.append(
                        f"{model.name} loses {row['accuracy_drop']:.2f} {metric} points against "
                        f"{model.source} (gate {gates.int8_max_accuracy_drop:g})"
                    )
            results[model.name] = row
            advance(1, model.name)
    return {
        "samples": len(student_x),
        "parity_samples": n_parity,
        "models": results,
        "failures": failures,
    }
