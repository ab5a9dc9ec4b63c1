"""Latency-driven vs MACs-driven pruning on a compute-bound student, both with KD recovery.

The default Fashion-MNIST recipe with a wide student (ConvNet widths [64, 128, 256]: 29.6
MMACs per image, where batch-1 latency is compute, not per-call overhead) is distilled once
per seed. Its student is then pruned by the prune stage in two ways, each followed by the
recipe's KD recovery fine-tuning:

* latency-driven: ``prune.target_latency`` (p50 on ONNX Runtime measured against the unpruned
  student, widths at the multiple the runtime is measured to like);
* MACs-driven: ``prune.target_macs_ratio``, once at the MACs each latency-driven model ended
  at (**equal MACs**) and over a sweep of ratios (for **equal accuracy**: the fastest
  MACs-driven model at least as accurate as the latency-driven one).

Afterwards every model (deploy form, exported with the project's exporter) and the unpruned
student are timed together on ONNX Runtime, batch 1, the recipe's threads, interleaved call by
call, ``--repeats`` times; each speed-up is p50(unpruned) / p50(pruned) with a bootstrap 95%
interval (:func:`edgedistill.bench.stats.bootstrap_ratio_ci`). Accuracy is the prune stage's
test top-1 after recovery.

    python benchmarks/latency_prune.py                 # full: about 2-3 hours on 2 cores
    python benchmarks/latency_prune.py --quick         # minutes: proves the script works

The full run writes benchmarks/results/latency_prune.json and the ``latency-prune`` block of
BENCHMARKS.md; ``--quick`` writes both into its work folder only (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from edgedistill.bench.stats import bootstrap_ratio_ci
from edgedistill.compress.latency_meter import RuntimeLatencyMeter
from edgedistill.config import Recipe
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import count_macs
from edgedistill.pipeline.run import run_pipeline
from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.students.io import load_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "students" / "fashion_mnist.yaml"
WIDTHS = [64, 128, 256]
SECTION = "latency-prune"


def base_recipe(seed: int, quick: bool) -> dict[str, Any]:
    """The default recipe with the wide student (quick: a tiny, meaningless schedule)."""
    raw: dict[str, Any] = yaml.safe_load(RECIPE.read_text())
    raw["name"] = f"latency-prune-s{seed}"
    raw["seed"] = seed
    raw["student"]["config"] = {"widths": WIDTHS}
    raw["student"]["max_teacher_param_fraction"] = 0.5
    if quick:
        raw["data"]["train_limit"] = 500
        raw["distill"]["epochs"] = 1
        raw["prune"]["finetune_epochs"] = 1
    return raw


def with_prune(raw: dict[str, Any], **prune: Any) -> Recipe:
    """``raw`` with its prune target replaced (recovery settings kept)."""
    section = {k: v for k, v in raw["prune"].items() if k not in ("target_macs_ratio",)}
    out = {**raw, "prune": {**section, **prune}}
    return Recipe.from_dict(out, base_dir=RECIPE.parent, source=str(RECIPE))


def prune_variant(
    raw: dict[str, Any], out: Path, keep: Path, console: Console, **prune: Any
) -> dict[str, Any]:
    """Run the prune stage with ``prune`` (distill is reused), keep its folder, return a row."""
    started = time.perf_counter()
    ctx = run_pipeline(
        with_prune(raw, **prune), out, until="prune", console=Console(file=io.StringIO())
    )
    shutil.rmtree(keep, ignore_errors=True)
    shutil.copytree(ctx.stage_dir("prune"), keep)
    metrics = ctx.manifests["prune"]["metrics"]
    row = {
        "prune": prune,
        "folder": str(keep),
        "top1": metrics["pruned_top1"],
        "student_top1": metrics["student_top1"],
        "top1_before_recovery": metrics["top1_after_pruning_before_finetune"],
        "macs_ratio": metrics["macs_ratio"],
        "params_ratio": metrics["params_ratio"],
        "widths": metrics["widths"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if "latency" in metrics:
        row["search"] = metrics["latency"]
    console.print({k: v for k, v in row.items() if k not in ("search", "folder")})
    return row


def deploy_exporter(shape: tuple[int, ...]) -> Any:
    def export(model: torch.nn.Module, path: Path) -> None:
        to_deploy = getattr(model, "to_deploy", None)
        export_onnx(to_deploy() if callable(to_deploy) else model, shape, path)

    return export


def time_models(
    models: dict[str, torch.nn.Module],
    shape: tuple[int, ...],
    *,
    threads: int,
    rounds: int,
    repeats: int,
) -> dict[str, list[dict[str, Any]]]:
    """Per repeat: every model's p50 and speed-up over ``unpruned`` (bootstrap 95% CI)."""
    names = list(models)
    timings: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with RuntimeLatencyMeter(
        "onnxruntime", shape, threads=threads, exporter=deploy_exporter(shape)
    ) as meter:
        for repeat in range(repeats):
            samples = meter.samples([(n, models[n]) for n in names], rounds=rounds)
            base = samples[names.index("unpruned")]
            for name, values in zip(names, samples, strict=True):
                ratio, low, high = bootstrap_ratio_ci(values, base, seed=repeat)
                timings[name].append(
                    {
                        "p50_ms": round(float(np.median(values)), 5),
                        "speedup": round(ratio, 3),
                        "speedup_ci": [round(low, 3), round(high, 3)],
                    }
                )
    return timings


def summarise(rows: list[dict[str, Any]], timings: dict[str, list[dict[str, Any]]]) -> None:
    """Attach timings and the equal-MACs / equal-accuracy partners to each row (in place)."""
    for row in rows:
        row["timing"] = timings[row["name"]]
        row["speedup_median"] = float(np.median([t["speedup"] for t in row["timing"]]))
    macs_rows = [r for r in rows if r["method"] == "macs"]
    for row in [r for r in rows if r["method"] == "latency"]:
        twin = next(r for r in macs_rows if r["name"] == f"macs@{row['name']}")
        row["equal_macs"] = twin["name"]
        as_good = [r for r in macs_rows if r["top1"] >= row["top1"]]
        row["equal_accuracy"] = (
            max(as_good, key=lambda r: r["speedup_median"])["name"] if as_good else None
        )


def table(rows: list[dict[str, Any]]) -> list[str]:
    by_name = {(r["seed"], r["name"]): r for r in rows}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "none as accurate"
        t = r["timing"]
        ci = f"{min(x['speedup_ci'][0] for x in t):.2f}–{max(x['speedup_ci'][1] for x in t):.2f}"
        return f"{r['speedup_median']:.2f}× ({ci}), {r['top1']:.2f}%, MACs {r['macs_ratio']:.2f}"

    lines = [
        "| seed | latency target | latency-driven: speed-up (CI), top-1, MACs | "
        "MACs-driven at equal MACs | fastest MACs-driven at ≥ its top-1 | unpruned top-1 | "
        "width multiple found | candidates timed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in [r for r in rows if r["method"] == "latency"]:
        twin = by_name[(r["seed"], r["equal_macs"])]
        partner = by_name.get((r["seed"], r["equal_accuracy"])) if r["equal_accuracy"] else None
        lines.append(
            f"| {r['seed']} | {r['prune']['target_latency']} | {cell(r)} | {cell(twin)} | "
            f"{cell(partner)} | {r['student_top1']:.2f}% | {r['search']['width_multiple']} | "
            f"{r['search']['candidates_measured']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny schedule; results in --work")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--latency-targets", type=float, nargs="+", default=None)
    parser.add_argument("--macs-targets", type=float, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds a repeat")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    lat_targets = args.latency_targets or ([0.8] if quick else [0.65, 0.5])
    macs_targets = args.macs_targets or ([0.6] if quick else [0.8, 0.65, 0.5, 0.4, 0.3])
    repeats = args.repeats or (1 if quick else 3)
    rounds = args.rounds or (2 if quick else 20)
    work = args.work or ROOT / "runs" / ("bench-latency-prune" + ("-quick" if quick else ""))
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        raw = base_recipe(seed, quick)
        out, keep = work / f"s{seed}" / "run", work / f"s{seed}" / "pruned"
        distilled = run_pipeline(with_prune(raw), out, until="distill", console=console)
        student = load_model(distilled.stage_dir("distill"), "student")
        shape = tuple(distilled.task.input.shape)
        macs = count_macs(student, shape)
        console.print(f"seed {seed}: student {macs / 1e6:.1f} MMACs")
        seed_rows: list[dict[str, Any]] = []
        for target in lat_targets:
            extra = {"max_candidates": 32} if quick else {}
            row = prune_variant(
                raw, out, keep / f"latency-{target}", console, target_latency=target, **extra
            )
            seed_rows.append({"name": f"latency-{target}", "method": "latency", **row})
            twin = min(max(row["macs_ratio"], 0.01), 0.99)
            twin_row = prune_variant(
                raw, out, keep / f"macs@latency-{target}", console, target_macs_ratio=twin
            )
            seed_rows.append({"name": f"macs@latency-{target}", "method": "macs", **twin_row})
        for target in macs_targets:
            row = prune_variant(
                raw, out, keep / f"macs-{target}", console, target_macs_ratio=target
            )
            seed_rows.append({"name": f"macs-{target}", "method": "macs", **row})
        models = {"unpruned": student}
        for r in seed_rows:
            models[r["name"]] = load_model(Path(r["folder"]), "student-pruned")
        threads = int(raw["profile"]["threads"])
        timings = time_models(models, shape, threads=threads, rounds=rounds, repeats=repeats)
        for r in seed_rows:
            r.update(seed=seed, student_macs=macs)
        summarise(seed_rows, timings)
        rows += seed_rows
        rows.append(
            {"name": "unpruned", "method": "none", "seed": seed, "timing": timings["unpruned"]}
        )
    results = (work if quick else ROOT / "benchmarks" / "results") / "latency_prune.json"
    doc = write_results(results, rows, recipe=str(RECIPE.relative_to(ROOT)), widths=WIDTHS)
    env = doc["environment"]
    lines = [
        "## Latency-driven vs MACs-driven pruning (compute-bound student)",
        "",
        f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
        f"`{RECIPE.relative_to(ROOT)}` with student widths {WIDTHS} "
        f"({rows[0]['student_macs'] / 1e6:.1f} MMACs), pruned then KD-recovered "
        f"({raw['prune']['finetune_epochs']} epochs); seeds {', '.join(map(str, seeds))}. "
        "Speed-up: p50(unpruned) / p50(pruned) on ONNX Runtime, batch 1, "
        f"{raw['profile']['threads']} threads, all models timed interleaved "
        f"({rounds} rounds × 20 calls each, {repeats} repeats; median speed-up, CI range "
        "over repeats). Top-1: test split after recovery. Equal MACs: `target_macs_ratio` set "
        "to the latency-driven model's MACs ratio (the MACs search stops at or just below "
        "it); equal accuracy: the fastest model of the MACs sweep "
        f"({', '.join(map(str, macs_targets))}) and the equal-MACs runs whose top-1 is at "
        "least the latency-driven model's.",
        "",
        *table(rows),
        "",
        f"Raw, per seed and repeat: `{results.relative_to(ROOT) if not quick else results}`.",
    ]
    markdown = work / "BENCHMARKS.md" if quick else ROOT / "BENCHMARKS.md"
    update_section(markdown, SECTION, "\n".join(lines))
    console.print("\n".join(lines))


if __name__ == "__main__":
    main()
