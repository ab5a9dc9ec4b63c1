"""Delivery stages: the app-ready bundle and the report (summary.json, Markdown, HTML, plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.artifacts import (
    atomic_copy,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from edgedistill.deploy import DeployedModel, deployed_models
from edgedistill.metrics import count_macs, count_params
from edgedistill.pipeline import RunContext, StageOutcome
from edgedistill.report.render import render_html, render_markdown, render_plot

EXAMPLE = '''"""Classify the bundled sample images with only numpy and onnxruntime.

    python example.py                 # the bundled samples.npz
    python example.py images.npy      # your own uint8 images shaped [N, {c}, {h}, {w}]
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
manifest = json.loads((HERE / "manifest.json").read_text())
spec = manifest["input"]
mean = np.array(spec["normalization"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
std = np.array(spec["normalization"]["std"], dtype=np.float32).reshape(1, -1, 1, 1)

if len(sys.argv) > 1:
    images, truth = np.load(sys.argv[1]), None
else:
    samples = np.load(HERE / "samples.npz")
    images, truth = samples["images"], samples["labels"]
if images.ndim == 3:  # [N, H, W] -> [N, 1, H, W]
    images = images[:, None]
if list(images.shape[1:]) != spec["shape"][1:]:
    sys.exit(f"expected images shaped [N, {{spec['shape'][1:]}}], got {{list(images.shape)}}")

x = ((images.astype(np.float32) / 255.0) - mean) / std
session = ort.InferenceSession(str(HERE / manifest["recommended"]), providers=["CPUExecutionProvider"])
logits = session.run(None, {{spec["name"]: x.astype(np.float32)}})[0]
for i, k in enumerate(logits.argmax(axis=1)):
    line = f"image {{i}}: {{manifest['labels'][k]}}"
    if truth is not None:
        line += f" (true: {{manifest['labels'][truth[i]]}})"
    print(line)
'''


def _final_fp32(ctx: RunContext) -> str:
    return "student-pruned" if ctx.recipe.prune.enabled else "student"


def stage_bundle(ctx: RunContext) -> dict[str, Any]:
    """A folder an app can embed: model(s), manifest with sha256 of every file, example."""
    upstream = [s for s in ("export", "quantize", "verify", "profile") if s in ctx.manifests]
    inputs = {**ctx.output_hashes(*upstream), "data": ctx.data_sha256}

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        bundle = stage_dir / "app"  # the stage's own manifest.json stays one level up
        models = {m.name: m for m in deployed_models(ctx)}
        fp32_name = _final_fp32(ctx)
        files = {"model.onnx": models[fp32_name]}
        if f"{fp32_name}-int8" in models:
            files["model-int8.onnx"] = models[f"{fp32_name}-int8"]
        for target, model in files.items():
            atomic_copy(model.onnx, bundle / target)
        verify = ctx.manifests["verify"]["metrics"]
        latency = _latency_b1(ctx)
        recommended = "model.onnx"
        if "model-int8.onnx" in files:
            int8 = latency.get(files["model-int8.onnx"].name, {}).get("onnxruntime", {})
            fp32 = latency.get(fp32_name, {}).get("onnxruntime", {})
            if int8 and fp32 and int8["p50"] < fp32["p50"]:
                recommended = "model-int8.onnx"
        picks = np.random.default_rng(0).choice(len(ctx.y_test), 8, replace=False)
        atomic_save(
            bundle / "samples.npz",
            lambda tmp: np.savez(tmp, images=ctx.dataset.x_test[picks], labels=ctx.y_test[picks]),
        )
        c, h, w = ctx.dataset.input_shape
        atomic_write_text(bundle / "example.py", EXAMPLE.format(c=c, h=h, w=w))
        names = [*files, "samples.npz", "example.py"]
        manifest = {
            "name": ctx.recipe.name,
            "recommended": recommended,
            "models": {
                target: {
                    "source": m.name,
                    "precision": m.precision,
                    "top1": verify.get(f"{m.name}_top1"),
                    "latency_ms_batch1": latency.get(m.name, {}),
                }
                for target, m in files.items()
            },
            "input": {
                "name": "input",
                "shape": ["N", c, h, w],
                "dtype": "float32",
                "layout": "NCHW",
                "normalization": ctx.normalization.as_dict(),
                "raw": "uint8 pixels, 0..255",
            },
            "output": {
                "name": "logits",
                "shape": ["N", len(ctx.dataset.labels)],
                "meaning": "unnormalised class scores; argmax = predicted label",
            },
            "labels": list(ctx.dataset.labels),
            "dataset": ctx.dataset.name,
            "files": {n: sha256_file(bundle / n) for n in names},
        }
        atomic_write_json(bundle / "manifest.json", manifest)
        outputs = [f"app/{n}" for n in [*names, "manifest.json"]]
        return StageOutcome(outputs, {"recommended": recommended, "path": str(bundle)})

    return ctx.run_stage("bundle", inputs, body)


def _latency_b1(ctx: RunContext) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {runtime: {p50, p90, p99}}} at batch 1 from the profile stage."""
    if "profile" not in ctx.manifests:
        return {}
    from edgedistill.artifacts import read_json

    data = read_json(ctx.output("profile", "latency.json"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for e in data["entries"]:
        if e["batch"] == 1:
            out.setdefault(e["model"], {})[e["runtime"]] = {k: e[k] for k in ("p50", "p90", "p99")}
    return out


def _recommendation(ctx: RunContext, latency: dict[str, Any]) -> dict[str, Any]:
    """Which bundled model to ship and why: INT8 only when it is measurably faster."""
    bundle = ctx.manifests.get("bundle")
    if bundle is None:
        return {}
    fp32 = _final_fp32(ctx)
    choice = bundle["metrics"]["recommended"]
    fp32_ms = latency.get(fp32, {}).get("onnxruntime", {}).get("p50")
    int8_ms = latency.get(f"{fp32}-int8", {}).get("onnxruntime", {}).get("p50")
    if fp32_ms and int8_ms:
        faster = "faster" if int8_ms < fp32_ms else "slower"
        reason = (
            f"INT8 is {faster} than FP32 in ONNX Runtime at batch 1 "
            f"({int8_ms:.3f} vs {fp32_ms:.3f} ms p50)"
        )
    else:
        reason = "no INT8 model or no ONNX Runtime latency to compare"
    return {
        "file": choice,
        "model": fp32 if choice == "model.onnx" else f"{fp32}-int8",
        "reason": reason,
    }


def build_summary(ctx: RunContext) -> dict[str, Any]:
    """The machine-readable summary: one row per model (see README, "summary.json")."""
    from edgedistill.artifacts import read_json

    verify = read_json(ctx.output("verify", "verify.json"))["models"]
    latency = _latency_b1(ctx)
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
    from edgedistill.deploy import torch_models

    modules = torch_models(ctx)
    shape = ctx.dataset.input_shape
    rows = []
    for model in deployed_models(ctx):
        base = modules[model.source or model.name]
        rows.append(
            {
                "name": model.name,
                "precision": model.precision,
                "params": count_params(base),
                "macs": count_macs(base, shape),
                "size_bytes": model.onnx.stat().st_size,
                "accuracy": round(verify[model.name]["top1"], 2),
                "latency_ms": latency.get(model.name, {}),
                "latency_sweep_ms": sweep.get(model.name, []),
                "onnx": str(model.onnx.relative_to(ctx.out)),
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
        "dataset": ctx.dataset.name,
        "accuracy_metric": f"top-1 % on the {len(ctx.y_test)} held-out images (ONNX Runtime)",
        "models": rows,
        "speedups": speedups,
        "gates": ctx.recipe.gates.model_dump(mode="json"),
        "environment": profile_env,
        "bundle": str(ctx.stage_dir("bundle") / "app"),
        "recommended": _recommendation(ctx, latency),
        "report": str(ctx.stage_dir("report") / "report.html"),
    }


def stage_report(ctx: RunContext) -> dict[str, Any]:
    """summary.json at the run root, report.md + report.html + accuracy-vs-latency PNG."""
    upstream = [
        s for s in ("distill", "prune", "verify", "profile", "bundle") if s in ctx.manifests
    ]
    inputs = ctx.output_hashes(*upstream)

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        summary = build_summary(ctx)
        atomic_write_json(stage_dir / "summary.json", summary)
        render_plot(summary, stage_dir / "accuracy_vs_latency.png")
        training: dict[str, Any] = {
            s: ctx.manifests[s]["metrics"] for s in ("distill", "prune") if s in ctx.manifests
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


__all__ = ["DeployedModel", "build_summary", "stage_bundle", "stage_report"]
