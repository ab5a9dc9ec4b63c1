"""The cross-modal recipe end to end: video teacher -> IMU student -> INT8 bundle, timed.

Runs ``edgedistill crossmodal students/egocentric_comodo.yaml`` from an empty run directory
(the synthetic data and teacher embeddings included), then runs the bundle's ``example.py`` on
the raw sample window it ships (CSV and .npy), exactly as an app developer would.

    python benchmarks/crossmodal_deploy.py [--recipe students/egocentric_comodo.yaml]

Writes benchmarks/results/crossmodal_deploy.json and the "crossmodal-deploy" section of
BENCHMARKS.md.
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "students" / "egocentric_comodo.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-crossmodal-deploy")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cli = [sys.executable, "-m", "edgedistill.cli.app", "crossmodal", str(args.recipe)]
    started = time.perf_counter()
    subprocess.run([*cli, "--out", str(args.work)], check=True)
    first = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*cli, "--out", str(args.work)], check=True, capture_output=True)
    rerun = time.perf_counter() - started
    summary = json.loads((args.work / "summary.json").read_text())
    bundle = args.work / "deploy" / "bundle"
    examples = {}
    for sample in ("sample_window.csv", "sample_window.npy"):
        done = subprocess.run(
            [sys.executable, str(bundle / "example.py"), str(bundle / sample)],
            check=True,
            capture_output=True,
            text=True,
        )
        examples[sample] = done.stdout.strip()
    manifest = json.loads((bundle / "manifest.json").read_text())
    deploy = summary["deploy"]
    rows = [
        {"metric": "seconds_first_run", "value": round(first, 1)},
        {"metric": "seconds_rerun", "value": round(rerun, 1)},
        {"metric": "teacher_probe_top1", "value": summary["teacher_probe_top1"]},
        *(
            {"metric": f"student_probe_top1_{k}", "value": v}
            for k, v in summary["student_probe_top1"].items()
        ),
        {"metric": "top1_torch", "value": deploy["top1_torch"]},
        {"metric": "top1_onnx_fp32", "value": deploy["top1_onnx_fp32"]},
        {"metric": "top1_onnx_int8", "value": deploy["top1_onnx_int8"]},
        {"metric": "int8_accuracy_drop", "value": deploy["int8_accuracy_drop"]},
    ]
    doc = write_results(
        ROOT / "benchmarks" / "results" / "crossmodal_deploy.json",
        rows,
        recipe=str(args.recipe.relative_to(ROOT))
        if args.recipe.is_relative_to(ROOT)
        else str(args.recipe),
        summary=summary,
        examples=examples,
        input_spec=manifest["input"],
    )
    env = doc["environment"]
    lat = deploy["latency_ms"]
    lines = [
        "## Cross-modal recipe end to end: video teacher → IMU INT8 bundle",
        "",
        f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
        f"`edgedistill crossmodal {doc['recipe']}` from an empty run directory: **{first:.0f} s** "
        f"(synthetic data, teacher embeddings, pre-training, fine-tuning, prune, INT8, verify, "
        f"profile, bundle); unchanged re-run {rerun:.0f} s.",
        "",
        "| | value |",
        "|---|---|",
        f"| teacher linear probe (held-out subjects) | {summary['teacher_probe_top1']:.1f}% |",
        *(
            f"| student linear probe after label-free pre-training, {k} labels | {v:.1f}% |"
            for k, v in summary["student_probe_top1"].items()
        ),
        f"| fine-tuned student, torch (after prune + recovery) | {deploy['top1_torch']:.2f}% |",
        f"| FP32 ONNX / INT8 ONNX | {deploy['top1_onnx_fp32']:.2f}% / {deploy['top1_onnx_int8']:.2f}% |",
        f"| INT8 loss vs FP32 (bar ≤ 1 point) | {'✅' if deploy['int8_accuracy_drop'] <= 1 else '❌'} "
        f"{deploy['int8_accuracy_drop']:+.2f} points |",
        f"| MACs before → after pruning | {deploy['macs_before']:,} → {deploy['macs_after']:,} |",
        f"| batch-1 p50: torch / ORT FP32 / ORT INT8 | {lat['torch']['p50']:.3f} / "
        f"{lat['onnxruntime_fp32']['p50']:.3f} / {lat['onnxruntime_int8']['p50']:.3f} ms |"
        if {"torch", "onnxruntime_fp32", "onnxruntime_int8"} <= set(lat)
        else f"| latency (ms) | {json.dumps(lat)} |",
        f"| bundle recommends | `{deploy['recommended']}` |",
        "",
        "The bundle's example on the raw window it ships (`python example.py sample_window.csv`):",
        "",
        "```",
        examples["sample_window.csv"],
        "```",
        "",
        "Raw: `benchmarks/results/crossmodal_deploy.json`.",
    ]
    update_section(ROOT / "BENCHMARKS.md", "crossmodal-deploy", "\n".join(lines))


if __name__ == "__main__":
    main()
