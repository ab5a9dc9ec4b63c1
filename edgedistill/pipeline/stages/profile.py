"""The ``profile`` stage: latency of every model on every runtime, batch 1 and a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.artifacts import atomic_write_json
from edgedistill.bench.env import environment
from edgedistill.bench.latency import measure_latency
from edgedistill.export.openvino import openvino_available
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.export import DeployedModel, deployed_models
from edgedistill.progress import progress_bar
from edgedistill.runtime import OnnxRuntimeRunner, OpenVinoRunner, Runner, TorchRunner


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
                if runtime != "torch" and model.onnx is None:  # a torch-only teacher
                    continue
                if runtime == "openvino" and not openvino_available():
                    continue
                plan.append((model, runtime))
        entries: list[dict[str, Any]] = []
        total = len(plan) * len(cfg.batch_sizes) * (cfg.warmup + cfg.runs)
        sample = ctx.x_test.numpy()
        if len(sample) < max(cfg.batch_sizes):  # a small test split still fills every batch
            reps = -(-max(cfg.batch_sizes) // len(sample))
            sample = np.concatenate([sample] * reps)
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
        path = model.openvino or model.onnx
        assert path is not None
        return OpenVinoRunner(path, model.name, threads, "f32")
    assert model.onnx is not None
    return OnnxRuntimeRunner(model.onnx, model.name, threads)
