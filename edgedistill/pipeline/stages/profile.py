"""The ``profile`` stage: latency of every model on every runtime, batch 1 and a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from edgedistill.artifacts import atomic_write_json
from edgedistill.bench.env import environment
from edgedistill.bench.latency import measure_latency
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.export import DeployedModel, deployed_models, input_dtype
from edgedistill.pipeline.stages.report import record_measurements
from edgedistill.progress import progress_bar
from edgedistill.runtime import Runner
from edgedistill.runtime.registry import (
    RuntimeSpec,
    make_runner,
    runtime_spec,
    unavailable_reason,
)


def stage_profile(ctx: RunContext) -> dict[str, Any]:
    """Latency of every model on every runtime at batch 1 and a batch sweep."""
    cfg = ctx.recipe.profile
    upstream = [s for s in ("export", "quantize") if s in ctx.manifests]
    inputs = {**ctx.output_hashes(*upstream), "profile": cfg.model_dump(mode="json")}

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        models = deployed_models(ctx)
        skipped = _unavailable(ctx, cfg.runtimes)
        plan: list[tuple[DeployedModel, str, str]] = []
        runtime: str
        for model in models:
            for runtime in cfg.runtimes:
                if runtime in skipped:
                    continue
                spec = runtime_spec(runtime)
                if spec.takes == "torch" and model.torch_model(ctx) is None:
                    continue
                if spec.takes != "torch" and model.onnx is None:  # a torch-only teacher
                    continue
                for precision in _precisions(spec, model, cfg.precisions):
                    plan.append((model, runtime, precision))
        entries: list[dict[str, Any]] = []
        total = len(plan) * len(cfg.batch_sizes) * (cfg.warmup + cfg.runs)
        sample = ctx.x_test.numpy()
        if len(sample) < max(cfg.batch_sizes):  # a small test split still fills every batch
            reps = -(-max(cfg.batch_sizes) // len(sample))
            sample = np.concatenate([sample] * reps)
        with progress_bar(ctx.console, "profile", total) as advance:
            for model, runtime, run_precision in plan:
                runner = _runner(ctx, model, runtime, run_precision)
                with runner:
                    for batch in cfg.batch_sizes:
                        x = np.ascontiguousarray(sample[:batch])
                        advance(0, f"{model.name} {runtime} {run_precision} b{batch}")
                        stats = measure_latency(
                            runner, x, warmup=cfg.warmup, runs=cfg.runs, on_run=lambda: advance(1)
                        )
                        advance(cfg.warmup)
                        precision = run_precision
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
            "skipped": [{"runtime": rt, "reason": why} for rt, why in skipped.items()],
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
        metrics["stored"] = record_measurements(ctx, models, latency)
        return StageOutcome(["latency.json"], metrics)

    return ctx.run_stage("profile", inputs, body)


def _unavailable(ctx: RunContext, runtimes: tuple[str, ...]) -> dict[str, str]:
    """{runtime: why} for the listed runtimes that cannot run here; one console line each.

    Not an error (see :class:`~edgedistill.config.ProfileConfig`): the run's other numbers
    stay valid, and latency.json records what was skipped and why.
    """
    skipped = {}
    for runtime in runtimes:
        reason = unavailable_reason(runtime)
        if reason is not None:
            skipped[runtime] = reason
            # escape: "edgedistill[trt]" in the install line is not a rich style tag
            ctx.console.print(f"[yellow]• profile: skipping {runtime}: {escape(reason)}[/]")
    return skipped


def _precisions(spec: RuntimeSpec, model: DeployedModel, extra: tuple[str, ...]) -> list[str]:
    """The precisions ``model`` is measured at on ``spec``: an INT8 (QDQ) model as int8 on
    ONNX runtimes that offer it; an FP32 model at fp32 plus the extra precisions it offers."""
    if model.precision == "int8":
        return ["int8"] if spec.takes == "onnx" and "int8" in spec.precisions else []
    wanted = dict.fromkeys(("fp32", *extra))
    return [p for p in wanted if p in spec.precisions and p != "int8"]


def _runner(ctx: RunContext, model: DeployedModel, runtime: str, precision: str) -> Runner:
    """The runner of one plan row, built by :func:`make_runner` (TensorRT engines are cached
    under the run's cache folder, keyed by model, GPU and TensorRT version)."""
    cfg = ctx.recipe.profile
    spec = runtime_spec(runtime)
    target: Any
    if spec.takes == "torch":
        target = model.torch_model(ctx)
        assert target is not None
    elif runtime == "openvino":
        target = model.openvino or model.onnx
    else:
        target = model.onnx
    assert target is not None
    options: dict[str, Any] = {
        "openvino_precision": "f32",
        "batch_sizes": cfg.batch_sizes,
        "engine_dir": ctx.out / "cache" / "tensorrt",
        "input_shape": tuple(ctx.task.input.shape),
        "input_dtype": input_dtype(ctx),
    }
    return make_runner(
        runtime, target, model.name, threads=cfg.threads, precision=precision, options=options
    )
