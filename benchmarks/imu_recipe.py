"""The real-IMU recipe over seeds: the distilled student vs the same student without the
teacher, and what pruning and INT8 cost — each measured through the whole chain.

For every seed, ``students/seglearn_watch.yaml`` runs twice through ``run_pipeline`` (every
stage, from an empty folder): as shipped (CE + KD from the frozen IMU teacher) and with the
teacher's terms removed (CE only, the same student, data, epochs and schedule). Accuracy is
top-1 % on the held-out subjects 9 and 10, measured in ONNX Runtime by the verify stage.
Profiling is cut to ONNX Runtime at batch 1 here (this script is about accuracy).

    python benchmarks/imu_recipe.py [--seeds 0 1 2]

Writes benchmarks/results/imu_recipe.json and the "imu-recipe" section of BENCHMARKS.md.
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
RECIPE = ROOT / "students" / "seglearn_watch.yaml"


def variant(seed: int, teacher: bool) -> Recipe:
    """The shipped recipe with ``seed``; without the teacher's terms when ``teacher`` is off."""
    raw: dict[str, Any] = yaml.safe_load(RECIPE.read_text())
    raw["seed"] = seed
    raw["name"] = f"{raw['name']}-{'kd' if teacher else 'ce'}-s{seed}"
    if not teacher:
        raw["distill"]["terms"] = [{"name": "ce", "weight": 1.0}]
    raw["profile"] = {"runtimes": ["onnxruntime"], "batch_sizes": [1], "runs": 100}
    return Recipe.from_dict(raw, base_dir=RECIPE.parent, source=str(RECIPE))


def accuracies(out: Path) -> dict[str, float]:
    summary = read_json(out / "summary.json")
    return {row["name"]: row["accuracy"] for row in summary["models"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-imu-recipe")
    args = parser.parse_args()
    console = Console(stderr=True)
    rows = []
    for seed in args.seeds:
        for teacher in (True, False):
            out = args.work / f"{'kd' if teacher else 'ce'}-s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            run_pipeline(variant(seed, teacher), out, console=Console(file=io.StringIO()))
            acc = accuracies(out)
            row = {
                "seed": seed,
                "method": "distilled (CE + KD)" if teacher else "without teacher (CE)",
                "seconds": round(time.perf_counter() - started, 1),
                **{name: acc[name] for name in acc},
            }
            rows.append(row)
            console.print(row)
    doc = write_results(ROOT / "benchmarks" / "results" / "imu_recipe.json", rows)
    env = doc["environment"]

    def stat(method: str, key: str) -> str:
        values = [r[key] for r in rows if r["method"] == method and key in r]
        if len(values) < 2:
            return f"{values[0]:.2f}" if values else "–"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    def drops(method: str) -> list[float]:
        return [
            r["student-pruned"] - r["student-pruned-int8"] for r in rows if r["method"] == method
        ]

    teacher_top1 = next(r["teacher"] for r in rows if "teacher" in r)
    lines = [
        "## Real IMU recipe: distilled vs without the teacher, pruned, INT8",
        "",
        f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
        "`students/seglearn_watch.yaml` through every stage, seeds "
        f"{', '.join(map(str, args.seeds))} (mean ± std): seglearn smartwatch IMU, subjects "
        "9–10 held out, top-1 % in ONNX Runtime. The teacher "
        f"(`teachers/seglearn_watch_imu_cnn.yaml`) scores {teacher_top1:.2f}%.",
        "",
        "| method | student | student-pruned | student-pruned-int8 | INT8 drop (bar ≤ 1.0) |",
        "|---|---|---|---|---|",
    ]
    for method in ("distilled (CE + KD)", "without teacher (CE)"):
        d = drops(method)
        worst = max(d)
        lines.append(
            f"| {method} | {stat(method, 'student')} | {stat(method, 'student-pruned')} | "
            f"{stat(method, 'student-pruned-int8')} | {'✅' if worst <= 1 else '❌'} worst "
            f"{worst:+.2f} (mean {statistics.mean(d):+.2f}) |"
        )
    lines += ["", "Raw: `benchmarks/results/imu_recipe.json`."]
    update_section(ROOT / "BENCHMARKS.md", "imu-recipe", "\n".join(lines))


if __name__ == "__main__":
    main()
