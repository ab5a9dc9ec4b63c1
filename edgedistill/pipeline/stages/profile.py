"""The ``profile`` stage: latency of every model on every runtime, batch 1 and a sweep."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from edgedistill.artifacts import atomic_write_json
from edgedistill.bench.compare import (
    LatencyComparison,
    calibrated_reference,
    compare_latency,
    current_loadavg,
    machine_load_warning,
    reference_workload_ms,
)
from edgedistill.bench.env import environment
from edgedistill.bench.latency import measure_latency
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.bundle import final_fp32
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
    """Latency of every model on every runtime at batch 1 and a batch sweep, the interleaved
    comparisons the INT8 decision rests on (:func:`_compare`), and a load warning."""
    cfg = ctx.recipe.profile
    upstream = [s for s in ("export", "quantize") if s in ctx.manifests]
    inputs = {
        **ctx.output_hashes(*upstream),
        "profile": cfg.model_dump(mode="json"),
        "compare": {"rounds": COMPARE_ROUNDS},  # latency.json gained comparisons: re-measure
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        load_before = (current_loadavg(), reference_workload_ms())  # see _load_check
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
        comparisons = [c.to_dict() for c in _compare(ctx, plan, sample[:1])]
        latency: dict[str, Any] = {
            "environment": environment(cfg.threads),
            "threads": cfg.threads,
            "warmup": cfg.warmup,
            "runs": cfg.runs,
            "entries": entries,
            "comparisons": comparisons,
            "skipped": [{"runtime": rt, "reason": why} for rt, why in skipped.items()],
        }
        latency.update(_load_check(ctx, load_before, entries, comparisons, latency["environment"]))
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
        metrics["comparisons"] = {
            f"{c['models'][1]} vs {c['models'][0]} ({c['runtime']})": c["decision"]
            for c in comparisons
        }
        metrics["load_warning"] = latency["load_warning"]
        return StageOutcome(["latency.json"], metrics)

    return ctx.run_stage("profile", inputs, body)


#: Rounds of an interleaved comparison; each runner gets ``profile.runs`` timed calls in all.
COMPARE_ROUNDS = 20


def _compare(
    ctx: RunContext, plan: list[tuple[DeployedModel, str, str]], x: np.ndarray
) -> list[LatencyComparison]:
    """Interleaved batch-1 comparisons (:func:`compare_latency`) of what a decision rests on.

    Each FP32 model against its INT8 sibling on every runtime that measured both (the bundle
    ships INT8 only when ONNX Runtime's comparison says ``faster``), and the shipped student
    on each other runtime against the first runtime listed that measured it. Same threads as
    the sequential rows; ``profile.runs`` timed calls per runner (rounded down to a multiple of
    ``COMPARE_ROUNDS``), ``profile.warmup`` untimed.
    """
    cfg = ctx.recipe.profile
    measured = {(m.name, rt, p): m for m, rt, p in plan}
    pairs = [
        ((m.name, rt, "fp32"), (f"{m.name}-int8", rt, "int8"))
        for m, rt, p in plan
        if p == "fp32" and (f"{m.name}-int8", rt, "int8") in measured
    ]
    student = [(name, rt, p) for name, rt, p in measured if name == final_fp32(ctx) and p == "fp32"]
    pairs += [(student[0], other) for other in student[1:]]
    results = []
    with progress_bar(ctx.console, "compare", len(pairs)) as advance:
        for a, b in pairs:
            advance(0, f"{b[0]} ({b[1]}) vs {a[0]} ({a[1]})")
            with (
                _runner(ctx, measured[a], a[1], a[2]) as ra,
                _runner(ctx, measured[b], b[1], b[2]) as rb,
            ):
                found = compare_latency(
                    ra,
                    rb,
                    np.ascontiguousarray(x),
                    rounds=COMPARE_ROUNDS,
                    runs_per_round=max(1, cfg.runs // COMPARE_ROUNDS),
                    warmup=cfg.warmup,
                    seed=ctx.recipe.seed,
                )
            # registry names, not the runner classes' (one class serves several names)
            results.append(dataclasses.replace(found, runtime_a=a[1], runtime_b=b[1]))
            advance(1)
    return results


def _load_check(
    ctx: RunContext,
    before: tuple[float | None, float],
    entries: list[dict[str, Any]],
    comparisons: list[dict[str, Any]],
    env: dict[str, Any],
) -> dict[str, Any]:
    """``load`` (the raw signals) and ``load_warning`` (one line or None) for latency.json,
    printed to the console when set (:func:`machine_load_warning`).

    The load average is the one read before profiling: during it, the runtimes' own threads
    count too. The reference workload is timed before and after, against the fastest time
    this machine has shown in this run folder (``cache/reference_workload.json``).
    """
    loadavg, ref_before = before
    ref_after = reference_workload_ms()
    machine = f"{env.get('machine')} | {env.get('cpu')} | {env.get('cpu_count')} cores"
    cache = ctx.out / "cache" / "reference_workload.json"
    calibrated = calibrated_reference(cache, machine, [ref_before, ref_after])
    warning = machine_load_warning(
        loadavg=loadavg,
        cpu_count=env.get("cpu_count"),
        reference_ms=[ref_before, ref_after],
        calibrated_ms=calibrated,
        entries=entries,
        comparisons=comparisons,
    )
    if warning is not None:
        ctx.console.print(f"[yellow]• profile: {escape(warning)}[/]")
    load = {
        "loadavg_1min": loadavg,
        "cpu_count": env.get("cpu_count"),
        "reference_ms": [round(ref_before, 4), round(ref_after, 4)],
        "reference_calibrated_ms": round(calibrated, 4),
    }
    return {"load": load, "load_warning": warning}


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
