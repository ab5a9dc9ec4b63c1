"""One recipe over seeds and variants: does the teacher help, and what do pruning and INT8 cost?

For every seed, the recipe runs through every stage (``run_pipeline``, a fresh folder per run)
in each variant:

* ``distilled``: as shipped (the recipe's own loss terms, with its teacher);
* ``vanilla``: the same student, data, epochs and schedule with only ``ce`` (no teacher term);
* ``label_free``: every training label dropped (``data.use_labels: false``), ``kd`` only: the
  student learns from the teacher's soft labels alone.

The teacher is computed once: every run's ``cache/`` folder links to one shared cache (its
files are keyed by content hashes, so sharing is safe). Accuracy is the verify stage's (ONNX
Runtime for the student models); latency is batch-1 p50 of the profile stage, and the teacher
vs student speed-up is a ratio measured in the same run (the teacher in its fastest measured
runtime against the student in ONNX Runtime).

    python benchmarks/recipe_variants.py students/rotten_tomatoes_text.yaml \\
        --variants distilled vanilla --seeds 0 1 2 --section text-recipe

Writes benchmarks/results/<section>.json and the <section> block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from edgedistill.artifacts import read_json
from edgedistill.config import Recipe
from edgedistill.pipeline.run import run_pipeline
from edgedistill.report.benchmarks import update_section, write_results

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "distilled": "distilled (recipe's terms)",
    "vanilla": "without teacher (ce only)",
    "label_free": "label-free (kd only, no labels)",
}


def variant_recipe(path: Path, variant: str, seed: int, runs: int) -> Recipe:
    """The recipe at ``path`` with ``seed``, changed for ``variant`` (see the module doc)."""
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    raw["seed"] = seed
    raw["name"] = f"{raw['name']}-{variant}-s{seed}"
    if variant == "vanilla":
        raw["distill"]["terms"] = [{"name": "ce", "weight": 1.0}]
    elif variant == "label_free":
        raw["data"]["use_labels"] = False
        temperature = next(
            (t.get("temperature", 4.0) for t in raw["distill"]["terms"] if t["name"] == "kd"), 4.0
        )
        raw["distill"]["terms"] = [{"name": "kd", "weight": 1.0, "temperature": temperature}]
    elif variant != "distilled":
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    profile = raw.setdefault("profile", {})
    profile.update({"batch_sizes": [1], "runs": runs})
    return Recipe.from_dict(raw, base_dir=path.parent, source=str(path))


def run_row(out: Path) -> dict[str, Any]:
    """Accuracy, size and batch-1 latency of every model of a finished run."""
    summary = read_json(out / "summary.json")
    row: dict[str, Any] = {"metric": summary.get("accuracy_metric")}
    for model in summary["models"]:
        name = model["name"]
        row[name] = model["accuracy"]
        row[f"{name}:params"] = model["params"]
        row[f"{name}:macs"] = model["macs"]
        row[f"{name}:size_bytes"] = model["size_bytes"]
        row[f"{name}:p50_ms"] = {k: v["p50"] for k, v in model["latency_ms"].items()}
    teacher = row.get("teacher:p50_ms") or {}
    student = (row.get("student:p50_ms") or {}).get("onnxruntime")
    if teacher and student:
        runtime, fastest = min(teacher.items(), key=lambda kv: kv[1])
        row["teacher_runtime"] = runtime
        row["speedup_student_vs_teacher"] = round(fastest / student, 1)
    row["recommended"] = summary.get("recommended", {}).get("file")
    return row


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Markdown rows: one per variant (mean ± std over seeds) plus the teacher."""
    lines = [
        "| model | student | pruned | pruned INT8 | INT8 drop (worst) | params | MACs | ONNX KB "
        "| speed-up vs teacher (p50, batch 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        drops = [r["student-pruned"] - r["student-pruned-int8"] for r in runs]
        first = runs[0]
        speed = [r["speedup_student_vs_teacher"] for r in runs if "speedup_student_vs_teacher" in r]
        lines.append(
            f"| {VARIANTS[variant]} | {mean_std([r['student'] for r in runs])} | "
            f"{mean_std([r['student-pruned'] for r in runs])} | "
            f"{mean_std([r['student-pruned-int8'] for r in runs])} | {max(drops):+.2f} | "
            f"{first['student:params']:,} → {first['student-pruned:params']:,} | "
            f"{first['student:macs'] / 1e6:.2f}M → {first['student-pruned:macs'] / 1e6:.2f}M | "
            f"{first['student:size_bytes'] / 1024:.0f} → "
            f"{first['student-pruned-int8:size_bytes'] / 1024:.0f} (INT8) | "
            f"{'–' if not speed else f'{min(speed):.0f}–{max(speed):.0f}×'} |"
        )
    teacher = next((r for r in rows if "teacher" in r), None)
    if teacher is not None:
        p50 = teacher["teacher:p50_ms"]
        lines.append(
            f"| teacher | {teacher['teacher']:.2f} | | | | {teacher['teacher:params']:,} | "
            f"{teacher['teacher:macs'] / 1e6:.1f}M | {teacher['teacher:size_bytes'] / 1024:.0f} | "
            f"p50 {', '.join(f'{k} {v:.2f} ms' for k, v in p50.items())} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--variants", nargs="+", default=["distilled", "vanilla"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--section", required=True, help="results file and BENCHMARKS.md key")
    parser.add_argument("--title", default=None)
    parser.add_argument("--runs", type=int, default=100, help="timed runs per latency")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete earlier runs first (default: resume them; unchanged stages are skipped)",
    )
    args = parser.parse_args()
    recipe_path = args.recipe.resolve()
    work = args.work or ROOT / "runs" / f"bench-{args.section}"
    shared_cache = work / "shared-cache"
    shared_cache.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for variant in args.variants:
            out = work / f"{variant}-s{seed}"
            if args.fresh:
                shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "cache").exists():
                (out / "cache").symlink_to(shared_cache.resolve(), target_is_directory=True)
            recipe = variant_recipe(recipe_path, variant, seed, args.runs)
            started = time.perf_counter()
            run_pipeline(recipe, out, console=Console(file=io.StringIO()))
            row = {"variant": variant, "seed": seed, **run_row(out)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            console.print({k: v for k, v in row.items() if ":" not in k})
    results = ROOT / "benchmarks" / "results" / f"{args.section}.json"
    doc = write_results(results, rows, recipe=str(recipe_path.relative_to(ROOT)))
    env = doc["environment"]
    metric = rows[0].get("metric") or "accuracy"
    lines = [
        f"## {args.title or recipe_path.stem}",
        "",
        f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
        f"`{recipe_path.relative_to(ROOT)}` through every stage, seeds "
        f"{', '.join(map(str, args.seeds))} (mean ± std); {metric}. Speed-up: the teacher's "
        "batch-1 p50 in its fastest runtime over the FP32 student's in ONNX Runtime, measured "
        "in the same run (range over seeds).",
        "",
        *table(rows, args.variants),
        "",
        f"Raw, per seed: `{results.relative_to(ROOT)}`.",
    ]
    update_section(ROOT / "BENCHMARKS.md", args.section, "\n".join(lines))
    console.print("\n".join(lines))


if __name__ == "__main__":
    main()
