"""Time the default recipe end to end, then an immediate re-run, and record the results.

    python benchmarks/default_run.py [--recipe students/fashion_mnist.yaml] [--out runs/bench-default]

Runs ``edgedistill run`` as a user would (a fresh run directory, then the same command again),
measures wall time of both, checks the bars of the foundation issue on the run's
summary.json, and writes benchmarks/results/default_run.json plus the "default-run" section
of BENCHMARKS.md. Every speed number is a ratio measured within this one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.report.render import summary_table

ROOT = Path(__file__).resolve().parents[1]


def run(recipe: Path, out: Path) -> float:
    start = time.perf_counter()
    cli = [sys.executable, "-m", "edgedistill", "run", str(recipe), "--out", str(out)]
    subprocess.run(cli, check=True)
    return time.perf_counter() - start


def ratio_table(summary: dict) -> list[str]:
    """Markdown rows: pruned vs unpruned and INT8 vs FP32, per runtime and batch size."""
    sweep = {
        (m["name"], e["runtime"], int(e["batch"])): e["p50"]
        for m in summary["models"]
        for e in m["latency_sweep_ms"]
    }
    pairs = [
        ("student-pruned vs student", "student", "student-pruned"),
        ("student-int8 vs student", "student", "student-int8"),
        ("student-pruned-int8 vs student-pruned", "student-pruned", "student-pruned-int8"),
        ("student-pruned-int8 vs student", "student", "student-pruned-int8"),
    ]
    keys = sorted({(rt, b) for (_, rt, b) in sweep if rt != "torch"})
    lines = ["| comparison | " + " | ".join(f"{rt} b{b}" for rt, b in keys) + " |"]
    lines.append("|---|" + "---|" * len(keys))
    for label, base, cand in pairs:
        cells = []
        for rt, b in keys:
            if (base, rt, b) in sweep and (cand, rt, b) in sweep:
                cells.append(f"{sweep[(base, rt, b)] / sweep[(cand, rt, b)]:.2f}×")
            else:
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "students" / "fashion_mnist.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-default")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    first = run(args.recipe, args.out)
    rerun = run(args.recipe, args.out)
    summary = json.loads((args.out / "summary.json").read_text())
    rows = {m["name"]: m for m in summary["models"]}
    teacher_torch = rows["teacher"]["latency_ms"]["torch"]["p50"]
    checks = {
        "default run wall time <= 600 s": first <= 600,
        "immediate re-run <= 30 s": rerun <= 30,
        "student-pruned-int8 accuracy drop vs student-pruned <= 1.0": rows["student-pruned"][
            "accuracy"
        ]
        - rows["student-pruned-int8"]["accuracy"]
        <= 1.0,
        "student-int8 accuracy drop vs student <= 1.0": rows["student"]["accuracy"]
        - rows["student-int8"]["accuracy"]
        <= 1.0,
        "student-pruned MACs <= 0.7x student": rows["student-pruned"]["macs"]
        <= 0.7 * rows["student"]["macs"],
        "student-pruned within 1.0 point of student": rows["student"]["accuracy"]
        - rows["student-pruned"]["accuracy"]
        <= 1.0,
        "student-pruned-int8 (ORT, b1) >= 20x faster than teacher (torch eager)": teacher_torch
        / rows["student-pruned-int8"]["latency_ms"]["onnxruntime"]["p50"]
        >= 20,
        "student-int8 (ORT, b1) >= 20x faster than teacher (torch eager)": teacher_torch
        / rows["student-int8"]["latency_ms"]["onnxruntime"]["p50"]
        >= 20,
    }
    doc = write_results(
        ROOT / "benchmarks" / "results" / "default_run.json",
        summary["models"],
        recipe=str(
            args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe
        ),
        wall_seconds=round(first, 1),
        rerun_seconds=round(rerun, 1),
        speedups=summary["speedups"],
        checks=checks,
        profile_environment=summary["environment"],
    )
    header, table_rows = summary_table(summary)
    env = summary["environment"]
    body = "\n".join(
        [
            "## Default recipe end to end",
            "",
            f"`{doc['command']}` — {env.get('cpu')}, {env.get('cpu_count')} cores, "
            f"{env.get('threads')} threads for latency, {doc['date']}.",
            f"Wall time: **{first:.0f} s** for the whole chain from an empty run directory; "
            f"immediate re-run: **{rerun:.1f} s** (every stage skipped).",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in table_rows],
            "",
            "Accuracy: top-1 % on the 10,000 Fashion-MNIST test images, in ONNX Runtime. Latency: "
            "batch 1, median / 90th percentile of 200 timed calls after 20 warm-up calls, "
            "OpenVINO with the f32 precision hint. Speed-ups measured in the same run:",
            "",
            *[f"- {k}: **{v:.1f}×**" for k, v in summary["speedups"].items()],
            "",
            "Compression speed-ups by batch size (p50 ratio, same run; > 1 means faster):",
            "",
            *ratio_table(summary),
            "",
            "Bars:",
            "",
            *[f"- {'✅' if ok else '❌'} {name}" for name, ok in checks.items()],
            "",
            "Raw: `benchmarks/results/default_run.json` (includes the batch sweep 1/8/32 per runtime).",
        ]
    )
    update_section(ROOT / "BENCHMARKS.md", "default-run", body)
    print(json.dumps({"wall_seconds": first, "rerun_seconds": rerun, "checks": checks}, indent=1))


if __name__ == "__main__":
    main()
