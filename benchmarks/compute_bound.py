"""INT8 on a compute-bound student: four quantizers, two runtimes, batch 1 and 8, noise-aware.

The default students are 1–2 MMACs, where a runtime's per-call overhead hides what INT8 buys.
This script takes a recipe whose student is ≥ 20 MMACs per sample (default:
``students/fashion_mnist_wide.yaml``, 29.6 MMACs), runs the chain up to ``export`` (distilled
FP32 student and its ONNX file), then quantizes that one FP32 model four ways:

  ort-ptq   ONNX Runtime static PTQ (the chain's default: per-channel, 7-bit weights);
  nncf-ptq  NNCF PTQ on the ONNX model (``quantize.backend: nncf``);
  nncf-ac   NNCF accuracy-controlled PTQ, max drop ``--gate`` on a validation subset of the
            *training* data (``quantize.accuracy_control``);
  qat-kd    NNCF quantization-aware training with the teacher's soft labels (``quantize.qat``),

and reports for each: test accuracy and its drop from FP32, and the INT8/FP32 latency ratio on
ONNX Runtime and OpenVINO at batch 1 and 8, each measured interleaved (FP32, INT8, FP32, …) with
a bootstrap 95% interval on the ratio of p50s (``edgedistill.bench.compare``), ``--repeats``
times. Compute efficiency: achieved GFLOP/s (2 × MACs × batch / p50) of the FP32 and INT8
models at batch 8 as a fraction of this machine's FP32 matmul throughput measured in the same run.

    python benchmarks/compute_bound.py [--recipe students/fashion_mnist_wide.yaml] [--repeats 3]

Writes benchmarks/results/compute_bound-<recipe>.json and the "compute-bound-<recipe>" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from edgedistill.bench.compare import compare_latency, current_loadavg
from edgedistill.compress.nncf_quantize import (
    export_qat_onnx,
    nncf_accuracy_controlled,
    nncf_ptq_onnx,
    qat_kd,
)
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.config import Recipe
from edgedistill.metrics import count_macs
from edgedistill.pipeline.run import run_pipeline
from edgedistill.pipeline.stages.compress import _validation_split
from edgedistill.pipeline.stages.distill import teacher_logits_for
from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.runtime import OnnxRuntimeRunner, OpenVinoRunner, run_batched
from edgedistill.students.io import load_model

ROOT = Path(__file__).resolve().parents[1]
QUANTIZERS = ("ort-ptq", "nncf-ptq", "nncf-ac", "qat-kd")


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """FP32 matmul throughput of this machine at ``threads`` (best of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def quantize_all(
    ctx: Any, fp32: Path, folder: Path, gate: float, console: Console
) -> dict[str, dict[str, Any]]:
    """Write the four INT8 models; returns per quantizer its file, seconds and notes."""
    cfg = ctx.recipe.quantize
    calibration = ctx.task.calibration(cfg.calibration_samples, ctx.recipe.seed).numpy()
    validation = _validation_split(ctx, cfg.validation_samples)
    out: dict[str, dict[str, Any]] = {}
    for name in QUANTIZERS:
        target, record = folder / f"{name}.onnx", folder / f"{name}.json"
        if target.exists() and record.exists():  # written by an earlier run of this script
            out[name] = {**json.loads(record.read_text()), "file": target}
            continue
        started = time.perf_counter()
        info: dict[str, Any] = {}
        if name == "ort-ptq":
            quantize_onnx_static(
                fp32, target, calibration, per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
            )  # fmt: skip
        elif name == "nncf-ptq":
            result = nncf_ptq_onnx(
                fp32, target, calibration, subset_size=len(calibration),
                reduce_range=cfg.reduce_range,
            )  # fmt: skip
            info["float_layers"] = result.get("float_layers", [])
        elif name == "nncf-ac":
            result = nncf_accuracy_controlled(
                fp32, target, calibration, validation, max_drop=gate, metric=ctx.task.score,
                subset_size=len(calibration), reduce_range=cfg.reduce_range,
            )  # fmt: skip
            info["float_layers"] = result.get("float_layers", [])
            info["validation_drop"] = result.get("accuracy_drop")
        else:
            student = load_model(ctx.stage_dir("distill"), "student")
            soft, _ = teacher_logits_for(ctx, ctx.task.x_train, "train")
            model = qat_kd(
                student, ctx.task.train_inputs, np.asarray(soft),
                calibration=torch.as_tensor(calibration), epochs=cfg.qat_epochs,
                lr=cfg.qat_lr, batch_size=ctx.recipe.distill.batch_size,
                seed=ctx.recipe.seed,
            )  # fmt: skip
            dtype = torch.int64 if ctx.task.input.dtype == "int64" else torch.float32
            export_qat_onnx(model, tuple(ctx.task.input.shape), target, input_dtype=dtype)
            info["epochs"] = cfg.qat_epochs
        info["seconds"] = round(time.perf_counter() - started, 1)
        record.write_text(json.dumps(info))
        out[name] = {**info, "file": target}
        console.print(f"{name}: written in {info['seconds']} s")
    return out


def accuracy(path: Path, x: np.ndarray, score: Any, threads: int) -> float:
    with OnnxRuntimeRunner(path, path.stem, threads) as runner:
        return float(score(run_batched(runner, x)))


def runner_for(runtime: str, path: Path, name: str, threads: int) -> Any:
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(path, name, threads)
    return OpenVinoRunner(path, name, threads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe", type=Path, default=ROOT / "students" / "fashion_mnist_wide.yaml"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--gate", type=float, default=0.3, help="accuracy-control max drop (pt)")
    parser.add_argument("--threads", type=int, default=2, help="runtime threads when timing")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    console = Console(stderr=True)
    # The FP32 student is what is quantized here: the prune stage is switched off (the
    # distill stage's fingerprint does not include it, so runs of the recipe share its work).
    raw = yaml.safe_load(args.recipe.read_text())
    raw["prune"] = {**raw.get("prune", {}), "enabled": False}
    recipe = Recipe.from_dict(raw, base_dir=args.recipe.parent, source=str(args.recipe))
    work = args.work or ROOT / "runs" / f"bench-compute-bound-{recipe.name}"
    ctx = run_pipeline(recipe, work, until="export", console=console)
    fp32 = ctx.output("export", "student.onnx")
    folder = work / "compute-bound"
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    models = quantize_all(ctx, fp32, folder, args.gate, console)
    x_test, score = np.asarray(ctx.x_test), ctx.task.score
    fp32_top1 = accuracy(fp32, x_test, score, args.threads)
    shape = tuple(ctx.task.input.shape)
    dtype = torch.int64 if ctx.task.input.dtype == "int64" else torch.float32
    macs = count_macs(load_model(ctx.stage_dir("distill"), "student"), shape, dtype=dtype)
    rows: list[dict[str, Any]] = [
        {"model": "fp32", "metric": ctx.task.metric_info.header, "value": round(fp32_top1, 2)}
    ]
    for name, info in models.items():
        top1 = accuracy(info["file"], x_test, score, args.threads)
        rows.append({
            "model": name, "metric": ctx.task.metric_info.header, "value": round(top1, 2),
            "drop": round(fp32_top1 - top1, 2), "quantize_seconds": info["seconds"],
            **{k: v for k, v in info.items() if k not in ("file", "seconds")},
        })  # fmt: skip
        console.print(f"{name}: {top1:.2f} (FP32 {fp32_top1:.2f})")
    throughput = matmul_gflops(args.threads)
    timing: list[dict[str, Any]] = []
    sample = x_test[:8]
    for repeat in range(args.repeats):
        for runtime in ("onnxruntime", "openvino"):
            for batch in (1, 8):
                x = np.ascontiguousarray(sample[:batch])
                for name, info in models.items():
                    a = runner_for(runtime, fp32, "FP32", args.threads)
                    b = runner_for(runtime, info["file"], name, args.threads)
                    cmp = compare_latency(a, b, x, rounds=args.rounds, seed=repeat)
                    p50_a = statistics.median(cmp.samples_a)
                    p50_b = statistics.median(cmp.samples_b)
                    timing.append({
                        "repeat": repeat, "runtime": runtime, "batch": batch, "model": name,
                        "fp32_p50_ms": round(p50_a, 4), "int8_p50_ms": round(p50_b, 4),
                        "speedup": round(p50_a / p50_b, 3),
                        "ratio_ci": [round(cmp.ci_low, 3), round(cmp.ci_high, 3)],
                        "decision": cmp.decision,
                        "fp32_gflops": round(2 * macs * batch / p50_a / 1e6, 1),
                        "int8_gflops": round(2 * macs * batch / p50_b / 1e6, 1),
                        "loadavg": current_loadavg(),
                    })  # fmt: skip
                    console.print(
                        f"repeat {repeat} {runtime} b{batch} {name}: INT8 {p50_a / p50_b:.2f}x "
                        f"faster (ratio CI {cmp.ci_low:.2f}–{cmp.ci_high:.2f})"
                    )
    doc = write_results(
        ROOT / "benchmarks" / "results" / f"compute_bound-{recipe.name}.json",
        rows,
        recipe=str(args.recipe.relative_to(ROOT) if args.recipe.is_absolute() else args.recipe),
        recipe_name=recipe.name,
        macs=macs,
        threads=args.threads,
        matmul_gflops=round(throughput, 1),
        timing=timing,
    )
    update_section(
        ROOT / "BENCHMARKS.md", f"compute-bound-{recipe.name}", render(doc, fp32_top1, macs)
    )


def render(doc: dict[str, Any], fp32_top1: float, macs: int) -> str:
    env, timing = doc["environment"], doc["timing"]
    lines = [
        f"## Compute-bound student ({doc['recipe']}): INT8 vs FP32, four quantizers",
        "",
        f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}; "
        f"{doc['threads']} runtime threads. Student {macs / 1e6:.1f} MMACs per sample; FP32 "
        f"test top-1 {fp32_top1:.2f}. Speed = FP32 p50 / INT8 p50 of interleaved runs, median "
        f"over {1 + max(t['repeat'] for t in timing)} repeats (per-repeat values in brackets); "
        "✓ when every repeat's 95% interval on the ratio excludes 1.",
        "",
        "| quantizer | top-1 | drop | ORT b1 | ORT b8 | OpenVINO b1 | OpenVINO b8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"][1:]:
        cells = []
        for runtime in ("onnxruntime", "openvino"):
            for batch in (1, 8):
                got = [
                    t for t in timing
                    if t["model"] == row["model"] and t["runtime"] == runtime
                    and t["batch"] == batch
                ]  # fmt: skip
                speeds = [t["speedup"] for t in got]
                sure = all(t["decision"] != "within_noise" for t in got)
                per = ", ".join(f"{s:.2f}" for s in speeds)
                cells.append(f"{statistics.median(speeds):.2f}× ({per}){' ✓' if sure else ''}")
        lines.append(
            f"| {row['model']} | {row['value']:.2f} | {row['drop']:+.2f} | "
            + " | ".join(cells)
            + " |"
        )
    b8 = [t for t in timing if t["batch"] == 8]
    best = max(b8, key=lambda t: t["int8_gflops"])
    fp32_best = max(t["fp32_gflops"] for t in b8)
    lines += [
        "",
        f"Compute efficiency (batch 8): FP32 reaches {fp32_best:.1f} GFLOP/s = "
        f"{fp32_best / doc['matmul_gflops'] * 100:.0f}% of this machine's FP32 matmul "
        f"({doc['matmul_gflops']:.0f} GFLOP/s, torch 1024² in the same run); the fastest INT8 "
        f"({best['model']}, {best['runtime']}) {best['int8_gflops']:.1f} GFLOP/s-equivalent "
        f"(the same model's MACs per second). Load average while timing: "
        f"{min(t['loadavg'] or 0 for t in timing):.1f}–{max(t['loadavg'] or 0 for t in timing):.1f}.",
        *(
            [
                "",
                f"⚠ The machine was loaded (load average above its {env['cpu_count']} cores): "
                "the matmul reference and the batch-8 rows (long calls, more often preempted) "
                "are unreliable; the interleaved batch-1 ratios are the numbers to read.",
            ]
            if max(t["loadavg"] or 0 for t in timing) > env["cpu_count"]
            else []
        ),
        "",
        f"Raw: `benchmarks/results/compute_bound-{doc['recipe_name']}.json`.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
