"""Deployment stages: export (ONNX, OpenVINO IR), quantize (INT8 QDQ), verify, profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgedistill.artifacts import atomic_copy, atomic_write_json
from edgedistill.bench.env import environment
from edgedistill.bench.latency import measure_latency
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.errors import GateError, MissingDependencyError
from edgedistill.export.onnx import export_onnx
from edgedistill.export.openvino import export_openvino, openvino_available
from edgedistill.metrics import topk_accuracy
from edgedistill.pipeline import RunContext, StageOutcome
from edgedistill.progress import progress_bar
from edgedistill.runtime import (
    OnnxRuntimeRunner,
    OpenVinoRunner,
    Runner,
    TorchRunner,
    compare_outputs,
    run_batched,
)
from edgedistill.students.io import load_model


@dataclass(frozen=True)
class DeployedModel:
    """One row of the results: a model and where each of its forms lives."""

    name: str
    precision: str  # "fp32" or "int8"
    onnx: Path
    openvino: Path | None
    source: str | None  # the FP32 model an INT8 model was made from

    def torch_model(self, ctx: RunContext) -> nn.Module | None:
        """The torch module behind an FP32 model (None for INT8 ONNX-only models)."""
        if self.precision != "fp32":
            return None
        if self.name == "teacher":
            # An ONNX teacher has no torch form: its export is the file itself.
            return None if is_onnx_model(ctx.teacher.model) else ctx.teacher.model
        stage = "distill" if self.name == "student" else "prune"
        return load_model(ctx.stage_dir(stage), self.name)


def is_onnx_model(model: nn.Module) -> bool:
    """Whether ``model`` is an ONNX file behind a module (an ONNX teacher)."""
    return getattr(model, "onnx_path", None) is not None


def torch_models(ctx: RunContext) -> dict[str, nn.Module]:
    """The FP32 torch models of this run, by name (teacher, student, student-pruned)."""
    models: dict[str, nn.Module] = {"teacher": ctx.teacher.model}
    models["student"] = load_model(ctx.stage_dir("distill"), "student")
    if ctx.recipe.prune.enabled:
        models["student-pruned"] = load_model(ctx.stage_dir("prune"), "student-pruned")
    return models


def deployed_models(ctx: RunContext) -> list[DeployedModel]:
    """Every exported model of the run, FP32 first, then their INT8 versions."""
    export_dir, quant_dir = ctx.stage_dir("export"), ctx.stage_dir("quantize")
    export_outputs = ctx.manifests["export"]["outputs"]
    rows = []
    for name in ctx.manifests["export"]["metrics"]["models"]:
        xml = f"{name}.xml"
        rows.append(
            DeployedModel(
                name,
                "fp32",
                export_dir / f"{name}.onnx",
                export_dir / xml if xml in export_outputs else None,
                None,
            )
        )
    quant = ctx.manifests.get("quantize")
    if quant is not None:
        for source in quant["metrics"].get("models", []):
            rows.append(
                DeployedModel(
                    f"{source}-int8", "int8", quant_dir / f"{source}-int8.onnx", None, source
                )
            )
    return rows


def _want_openvino(ctx: RunContext) -> bool:
    choice = ctx.recipe.export.openvino
    if choice == "no":
        return False
    if choice == "yes" and not openvino_available():
        raise MissingDependencyError("openvino", "openvino", "export.openvino: yes")
    return openvino_available()


def stage_export(ctx: RunContext) -> dict[str, Any]:
    """ONNX (dynamic batch) for teacher, student and pruned student; OpenVINO IR when installed."""
    cfg = ctx.recipe.export
    use_ov = _want_openvino(ctx)
    upstream = ("distill", "prune") if ctx.recipe.prune.enabled else ("distill",)
    inputs = {
        **ctx.output_hashes(*upstream),
        "teacher": ctx.teacher.weights_sha256,
        "export": cfg.model_dump(mode="json"),
        "openvino": use_ov,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        outputs, sizes = [], {}
        models = torch_models(ctx)
        with progress_bar(ctx.console, "export", len(models) * (2 if use_ov else 1)) as advance:
            for name, model in models.items():
                path = stage_dir / f"{name}.onnx"
                if is_onnx_model(model):  # an ONNX teacher: its export is the file itself
                    atomic_copy(Path(model.onnx_path), path)  # type: ignore[arg-type]
                else:
                    to_deploy = getattr(model, "to_deploy", None)
                    deploy = to_deploy() if callable(to_deploy) else model
                    export_onnx(
                        deploy,
                        ctx.dataset.input_shape,
                        path,
                        opset=cfg.opset,
                        dynamic_batch=cfg.dynamic_batch,
                    )
                outputs.append(path.name)
                sizes[name] = path.stat().st_size
                advance(1, name)
                if use_ov:
                    xml = export_openvino(path, stage_dir / f"{name}.xml")
                    outputs += [xml.name, xml.with_suffix(".bin").name]
                    advance(1, f"{name} (OpenVINO)")
        return StageOutcome(
            outputs, {"models": list(models), "onnx_bytes": sizes, "openvino": use_ov}
        )

    return ctx.run_stage("export", inputs, body)


def stage_quantize(ctx: RunContext) -> dict[str, Any]:
    """Post-training static INT8 (ORT QDQ) of every student, calibrated on training data."""
    cfg = ctx.recipe.quantize
    inputs = {
        **ctx.output_hashes("export"),
        "quantize": cfg.model_dump(mode="json"),
        "data": ctx.data_sha256,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        if not cfg.enabled:
            return StageOutcome([], {"enabled": False, "models": []})
        sources = [m for m in ctx.manifests["export"]["metrics"]["models"] if m != "teacher"]
        from edgedistill.stages import calibration_inputs

        calibration = calibration_inputs(ctx, cfg.calibration_samples).numpy()
        outputs = []
        with progress_bar(ctx.console, "quantize", len(sources)) as advance:
            for source in sources:
                target = stage_dir / f"{source}-int8.onnx"
                quantize_onnx_static(
                    ctx.output("export", f"{source}.onnx"),
                    target,
                    calibration,
                    per_channel=cfg.per_channel,
                    method=cfg.calibration_method,
                )
                outputs.append(target.name)
                advance(1, source)
        return StageOutcome(outputs, {"models": sources, "calibration_samples": len(calibration)})

    return ctx.run_stage("quantize", inputs, body)


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
    agreement with the FP32 ONNX model and the accuracy drop, gated by
    ``gates.int8_max_accuracy_drop`` (top-1 points).
    """
    gates, threads = ctx.recipe.gates, ctx.threads()
    student_x = ctx.x_test.numpy()
    # The teacher keeps its own input normalisation (from its card); students use the data's.
    teacher_x = ctx.teacher_normalization.apply(ctx.dataset.x_test).numpy()
    n_parity = min(gates.parity_samples, len(student_x))
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    logits_by_name: dict[str, np.ndarray] = {}
    with progress_bar(ctx.console, "verify", len(models)) as advance:
        for model in models:
            row: dict[str, Any] = {"precision": model.precision}
            x_test = teacher_x if model.name == "teacher" else student_x
            x_parity = x_test[:n_parity]
            with OnnxRuntimeRunner(model.onnx, model.name, threads) as runner:
                logits = run_batched(runner, x_test)
            logits_by_name[model.name] = logits
            row["top1"] = topk_accuracy(logits, ctx.y_test)
            module = model.torch_model(ctx)
            if module is not None:
                with TorchRunner(module, model.name, threads) as reference:
                    ref = run_batched(reference, x_parity)
                checks = [("onnxruntime", logits[: len(x_parity)])]
                if model.openvino is not None:
                    with OpenVinoRunner(model.openvino, model.name, threads, "f32") as ov:
                        checks.append(("openvino", run_batched(ov, x_parity)))
                for runtime, candidate in checks:
                    cmp = compare_outputs(ref, candidate)
                    key = "max_abs_diff" if runtime == "onnxruntime" else f"max_abs_diff_{runtime}"
                    row[key] = cmp.max_abs_diff
                    if not cmp.max_abs_diff <= gates.fp32_max_abs_diff:  # NaN fails too
                        failures.append(
                            f"{model.name} in {runtime} differs from torch by {cmp.max_abs_diff:.3g} "
                            f"> {gates.fp32_max_abs_diff:g} at sample {cmp.worst_index[0]}, output "
                            f"{cmp.worst_index[1]} (torch {cmp.reference_value:.6g}, "
                            f"{runtime} {cmp.candidate_value:.6g})"
                        )
            if model.source is not None:
                fp32 = logits_by_name[model.source]
                row["top1_agreement_with_fp32"] = compare_outputs(fp32, logits).top1_agreement
                row["accuracy_drop"] = results[model.source]["top1"] - row["top1"]
                if not row["accuracy_drop"] <= gates.int8_max_accuracy_drop:
                    failures.append(
                        f"{model.name} loses {row['accuracy_drop']:.2f} top-1 points against "
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


def stage_profile(ctx: RunContext) -> dict[str, Any]:
    """Latency of every model on every runtime at batch 1 and a batch sweep."""
    cfg = ctx.recipe.profile
    upstream = [s for s in ("export", "quantize") if s in ctx.manifests]
    inputs = {**ctx.output_hashes(*upstream), "profile": cfg.model_dump(mode="json")}

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        models = deployed_models(ctx)
        plan: list[tuple[DeployedModel, str]] = []
        runtime: str
        for model in models:
            for runtime in cfg.runtimes:
                if runtime == "torch" and model.torch_model(ctx) is None:
                    continue
                if runtime == "openvino" and not openvino_available():
                    continue
                plan.append((model, runtime))
        entries: list[dict[str, Any]] = []
        total = len(plan) * len(cfg.batch_sizes) * (cfg.warmup + cfg.runs)
        sample = ctx.x_test.numpy()
        with progress_bar(ctx.console, "profile", total) as advance:
            for model, runtime in plan:
                runner = _runner(ctx, model, runtime)
                with runner:
                    for batch in cfg.batch_sizes:
                        x = np.ascontiguousarray(sample[:batch])
                        advance(0, f"{model.name} {runtime} b{batch}")
                        stats = measure_latency(
                            runner, x, warmup=cfg.warmup, runs=cfg.runs, on_run=lambda: advance(1)
                        )
                        advance(cfg.warmup)
                        precision = model.precision
                        if runtime == "openvino" and precision == "fp32":
                            precision = "fp32 (f32 hint)"
                        entries.append(
                            {
                                "model": model.name,
                                "runtime": runtime,
                                "precision": precision,
                                "batch": batch,
                                **stats,
                            }
                        )
        latency = {
            "environment": environment(cfg.threads),
            "threads": cfg.threads,
            "warmup": cfg.warmup,
            "runs": cfg.runs,
            "entries": entries,
        }
        atomic_write_json(stage_dir / "latency.json", latency)
        b1: dict[tuple[str, str], float] = {
            (str(e["model"]), str(e["runtime"])): float(e["p50"])  # type: ignore[arg-type]
            for e in entries
            if e["batch"] == 1
        }
        metrics: dict[str, Any] = {"measurements": len(entries)}
        if ("teacher", "torch") in b1:
            for model in models:
                if (model.name, "onnxruntime") in b1:
                    metrics[f"speedup_{model.name}_ort_vs_teacher_torch"] = round(
                        b1[("teacher", "torch")] / b1[(model.name, "onnxruntime")], 2
                    )
        return StageOutcome(["latency.json"], metrics)

    return ctx.run_stage("profile", inputs, body)


def _runner(ctx: RunContext, model: DeployedModel, runtime: str) -> Runner:
    threads = ctx.recipe.profile.threads
    if runtime == "torch":
        module = model.torch_model(ctx)
        assert module is not None
        return TorchRunner(module, model.name, threads)
    if runtime == "openvino":
        return OpenVinoRunner(model.openvino or model.onnx, model.name, threads, "f32")
    return OnnxRuntimeRunner(model.onnx, model.name, threads)
