"""The ``report`` stage: summary.json (one row per model), Markdown, HTML and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.artifacts import atomic_copy, atomic_write_json, atomic_write_text, read_json
from edgedistill.metrics import count_macs, count_params
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.export import deployed_models, input_dtype, torch_models
from edgedistill.report.render import render_html, render_markdown, render_plot


def latency_b1(ctx: RunContext) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {runtime: {p50, p90, p99}}} at batch 1 from the profile stage."""
    if "profile" not in ctx.manifests:
        return {}
    data = read_json(ctx.output("profile", "latency.json"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for e in data["entries"]:
        if e["batch"] == 1:
            out.setdefault(e["model"], {})[e["runtime"]] = {k: e[k] for k in ("p50", "p90", "p99")}
    return out


def _recommendation(ctx: RunContext) -> dict[str, Any]:
    """Which bundled model to ship and why, as the bundle stage decided it."""
    bundle = ctx.manifests.get("bundle")
    if bundle is None:
        return {}
    metrics = bundle["metrics"]
    return {"file": metrics["recommended"], "model": metrics["model"], "reason": metrics["reason"]}


def build_summary(ctx: RunContext) -> dict[str, Any]:
    """The machine-readable summary: one row per model (see README, "summary.json")."""
    verify = read_json(ctx.output("verify", "verify.json"))["models"]
    latency = latency_b1(ctx)
    sweep: dict[str, list[dict[str, Any]]] = {}
    profile_env: dict[str, Any] = {}
    if "profile" in ctx.manifests:
        data = read_json(ctx.output("profile", "latency.json"))
        profile_env = data["environment"]
        for e in data["entries"]:
            sweep.setdefault(e["model"], []).append(
                {
                    k: e[k]
                    for k in (
                        "runtime",
                        "precision",
                        "batch",
                        "p50",
                        "p90",
                        "p99",
                        "per_sample_p50",
                    )
                }
            )
    modules = torch_models(ctx)
    task = ctx.task
    shape = task.input.shape
    dtype = input_dtype(ctx)
    rows = []
    for model in deployed_models(ctx):
        base = modules[model.source or model.name]
        rows.append(
            {
                "name": model.name,
                "precision": model.precision,
                "params": count_params(base),
                "macs": count_macs(base, shape, dtype=dtype),
                "size_bytes": _size_bytes(model, base),
                "accuracy": round(verify[model.name]["top1"], 2),
                "latency_ms": latency.get(model.name, {}),
                "latency_sweep_ms": sweep.get(model.name, []),
                "onnx": None if model.onnx is None else str(model.onnx.relative_to(ctx.out)),
            }
        )
    speedups = {}
    # Baseline: the teacher as a user runs it today — torch eager, or ONNX Runtime for an
    # ONNX teacher.
    teacher = latency.get("teacher", {})
    base_runtime = "torch" if "torch" in teacher else "onnxruntime"
    base_ms = teacher.get(base_runtime, {}).get("p50")
    for row in rows:
        ort = row["latency_ms"].get("onnxruntime", {}).get("p50")
        if base_ms and ort and not (row["name"] == "teacher" and base_runtime == "onnxruntime"):
            key = f"{row['name']} (onnxruntime) vs teacher ({base_runtime}), batch 1 p50"
            speedups[key] = round(base_ms / ort, 2)
    return {
        "recipe": ctx.recipe.name,
        "dataset": task.name,
        "modality": task.modality,
        "metric": task.metric,
        "metric_header": task.metric_info.header,
        "accuracy_metric": _metric_sentence(task),
        **_pretrain_summary(ctx),
        "models": rows,
        "speedups": speedups,
        "gates": ctx.recipe.gates.model_dump(mode="json"),
        "environment": profile_env,
        "bundle": str(ctx.stage_dir("bundle") / "app"),
        "recommended": _recommendation(ctx),
        "report": str(ctx.stage_dir("report") / "report.html"),
    }


def _size_bytes(model: Any, module: Any) -> int:
    """The ONNX file's size; for a torch-only teacher, its float32 weights (4 bytes each)."""
    if model.onnx is not None:
        return int(model.onnx.stat().st_size)
    return 4 * count_params(module)


def _metric_sentence(task: Any) -> str:
    """What the accuracy column holds, in words ("top-1 % on the 10000 held-out samples ...")."""
    where = f"on the {len(task.y_test)} held-out samples (ONNX Runtime)"
    if task.metric == "top1":
        return f"top-1 % {where}"
    return f"{task.metric}: {task.metric_info.describe} {where}"


def _pretrain_summary(ctx: RunContext) -> dict[str, Any]:
    """The pre-training's probe results, rounded and named, when a pretrain stage ran."""
    metrics = ctx.manifests.get("pretrain", {}).get("metrics", {})
    if not metrics.get("enabled"):
        return {}
    keep = ("term", "teacher_probe_top1", "student_probe_top1", "epochs", "windows")
    return {"pretrain": {k: metrics[k] for k in keep if k in metrics}}


def stage_report(ctx: RunContext) -> dict[str, Any]:
    """summary.json at the run root, report.md + report.html + accuracy-vs-latency PNG."""
    upstream = [
        s
        for s in ("pretrain", "distill", "prune", "verify", "profile", "bundle")
        if s in ctx.manifests
    ]
    inputs = ctx.output_hashes(*upstream)

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        summary = build_summary(ctx)
        atomic_write_json(stage_dir / "summary.json", summary)
        render_plot(summary, stage_dir / "accuracy_vs_latency.png")
        training: dict[str, Any] = {
            s: ctx.manifests[s]["metrics"]
            for s in ("pretrain", "distill", "prune")
            if s in ctx.manifests and ctx.manifests[s]["metrics"].get("enabled", True)
        }
        atomic_write_text(stage_dir / "report.md", render_markdown(summary, training))
        atomic_write_text(
            stage_dir / "report.html", render_html(summary, training, "accuracy_vs_latency.png")
        )
        return StageOutcome(
            ["summary.json", "report.md", "report.html", "accuracy_vs_latency.png"],
            {"models": len(summary["models"])},
        )

    manifest = ctx.run_stage("report", inputs, body)
    # The root summary.json is a copy users gate CI on; refreshed even when the stage skipped.
    root = ctx.out / "summary.json"
    atomic_copy(ctx.stage_dir("report") / "summary.json", root)
    return manifest


__all__ = ["build_summary", "latency_b1", "stage_report"]
