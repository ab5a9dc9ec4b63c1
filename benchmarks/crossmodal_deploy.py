"""The main job end to end, twice from scratch, then re-run in place: time, accuracy,
reproducibility.

Runs ``edgedistill run students/egocentric_comodo.yaml`` into two empty run folders (the
synthetic data, teacher embeddings, pre-training, fine-tuning, prune, INT8, verify, profile,
bundle and report each time), compares the bundled models byte for byte, re-runs the first
folder in place (every stage must be skipped), then runs the bundle's ``example.py`` on the raw
sample window it ships (CSV and .npy), exactly as an app developer would.

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

from edgedistill.artifacts import sha256_file
from edgedistill.report.benchmarks import update_section, write_results

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("model.onnx", "model-int8.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "students" / "egocentric_comodo.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-crossmodal-deploy")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cli = [sys.executable, "-m", "edgedistill.cli.app", "run", str(args.recipe)]
    runs, seconds = [args.work / "a", args.work / "b"], []
    for folder in runs:
        started = time.perf_counter()
        subprocess.run([*cli, "--out", str(folder)], check=True)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    rerun_log = subprocess.run(
        [*cli, "--out", str(runs[0])], check=True, capture_output=True, text=True
    ).stderr
    rerun = time.perf_counter() - started
    skipped = rerun_log.count("unchanged, skipped")
    hashes = {
        name: [sha256_file(folder / "bundle" / "app" / name) for folder in runs] for name in MODELS
    }
    identical = all(a == b for a, b in hashes.values())
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in runs]
    summary = summaries[0]
    same_accuracy = [[m["accuracy"] for m in s["models"]] for s in summaries] == [
        [m["accuracy"] for m in summary["models"]]
    ] * 2
    bundle = runs[0] / "bundle" / "app"
    examples = {}
    for sample in ("sample_window.csv", "sample_window.npy"):
        done = subprocess.run(
            [sys.executable, str(bundle / "example.py"), str(bundle / sample)],
            check=True,
            capture_output=True,
            text=True,
        )
        examples[sample] = done.stdout.strip()
    rows_by_name = {m["name"]: m for m in summary["models"]}
    fp32, int8 = rows_by_name["student-pruned"], rows_by_name["student-pruned-int8"]
    pretrain = summary.get("pretrain", {})
    rows = [
        {"metric": "seconds_first_run", "value": round(seconds[0], 1)},
        {"metric": "seconds_second_fresh_run", "value": round(seconds[1], 1)},
        {"metric": "seconds_rerun_in_place", "value": round(rerun, 1)},
        {"metric": "stages_skipped_on_rerun", "value": skipped},
        {"metric": "bundled_models_byte_identical", "value": identical},
        {"metric": "accuracies_identical", "value": same_accuracy},
        {"metric": "teacher_probe_top1", "value": pretrain.get("teacher_probe_top1")},
        *(
            {"metric": f"student_probe_top1 ({k})", "value": v}
            for k, v in pretrain.get("student_probe_top1", {}).items()
        ),
        *({"metric": f"top1 {m['name']}", "value": m["accuracy"]} for m in summary["models"]),
    ]
    doc = write_results(
        ROOT / "benchmarks" / "results" / "crossmodal_deploy.json",
        rows,
        recipe=str(args.recipe.relative_to(ROOT))
        if args.recipe.is_relative_to(ROOT)
        else str(args.recipe),
        hashes=hashes,
        summary=summary,
        examples=examples,
    )
    env = doc["environment"]
    p50 = {
        name: row["latency_ms"].get(runtime, {}).get("p50")
        for name, row in (("fp32", fp32), ("int8", int8))
        for runtime in ("onnxruntime",)
    }
    drop = fp32["accuracy"] - int8["accuracy"]
    lines = [
        "## The main job end to end: video teacher → IMU INT8 bundle",
        "",
        f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
        f"`edgedistill run {doc['recipe']}` from an empty run folder: **{seconds[0]:.0f} s** and "
        f"{seconds[1]:.0f} s in a second empty folder (synthetic data, teacher embeddings, "
        "pre-training, fine-tuning, prune, INT8, verify, profile, bundle, report); unchanged "
        f"re-run in place {rerun:.1f} s with {skipped} of 9 stages skipped.",
        f"Bundled `model.onnx` and `model-int8.onnx` byte-identical across the two fresh runs: "
        f"**{'yes' if identical else 'NO'}**; same accuracies: {'yes' if same_accuracy else 'NO'}.",
        "",
        "| | value |",
        "|---|---|",
        f"| teacher linear probe (held-out subjects) | {pretrain.get('teacher_probe_top1')}% |",
        *(
            f"| student linear probe after label-free pre-training, {k} | {v:.1f}% |"
            for k, v in pretrain.get("student_probe_top1", {}).items()
        ),
        *(f"| {m['name']} (ONNX Runtime) | {m['accuracy']:.2f}% |" for m in summary["models"]),
        f"| INT8 loss vs FP32 (bar ≤ 1 point) | {'✅' if drop <= 1 else '❌'} {drop:+.2f} points |",
        f"| MACs student-pruned | {fp32['macs']:,} |",
        f"| batch-1 p50 ORT FP32 / INT8 | {p50['fp32']:.4f} / {p50['int8']:.4f} ms |",
        f"| bundle recommends | `{summary['recommended']['file']}` ({summary['recommended']['reason']}) |",
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
