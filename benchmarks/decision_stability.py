"""Does the INT8-or-FP32 decision hold when the machine gets busy? Record it.

    python benchmarks/decision_stability.py [--recipe students/fashion_mnist.yaml]
        [--out runs/bench-decision] [--trials 3] [--quick]

Trains the recipe once (up to the verify stage; cached on a re-run), then re-runs the profile
stage (and bundle + report after it) ``--trials`` times on the machine as it is and
``--trials`` times while another process keeps one core busy (a ``multiprocessing`` busy
loop). Each trial records both decisions from the same profile run: the old single-p50 rule
(INT8 when its sequential ONNX Runtime p50 is lower) and the shipped decision (the
interleaved comparison's bootstrap interval must exclude 1), with the ratio, its interval,
the load warning and the student-vs-teacher torch p50s. Writes
benchmarks/results/decision_stability.json and the "decision-stability" section of
BENCHMARKS.md.

``--quick`` checks that the script works (a few minutes on an idle 2-core machine; 10.5 min
measured at load average 13): the smoke recipe, one trial per condition, batch 1 only, torch +
ONNX Runtime, into runs/bench-decision-quick; it writes
benchmarks/results/decision_stability_quick.json and prints the section instead of editing
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from edgedistill.config import Recipe, read_yaml
from edgedistill.pipeline.run import run_pipeline
from edgedistill.pipeline.stages.bundle import final_fp32, recommend
from edgedistill.report.benchmarks import update_section, write_results

ROOT = Path(__file__).resolve().parents[1]
QUICK_PROFILE = {"runtimes": ["torch", "onnxruntime"], "batch_sizes": [1], "warmup": 5, "runs": 100}


def _spin(stop: Any) -> None:
    """Keep one core busy until ``stop`` is set (pure Python: holds its own GIL only)."""
    while not stop.is_set():
        total = 0
        for i in range(200_000):
            total += i * i


@contextmanager
def one_core_busy(enabled: bool) -> Iterator[None]:
    """A busy-loop process for the duration of the block (nothing when not ``enabled``)."""
    if not enabled:
        yield
        return
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_spin, args=(stop,), daemon=True)
    proc.start()
    time.sleep(1.0)  # let it reach its loop before anything is timed
    try:
        yield
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def load(path: Path, quick: bool) -> Recipe:
    """The recipe, with the quick profile settings when ``quick``."""
    raw = read_yaml(path, "recipe")
    if quick:
        raw["profile"] = {**(raw.get("profile") or {}), **QUICK_PROFILE}
    return Recipe.from_dict(raw, base_dir=path.resolve().parent, source=str(path))


def trial(recipe: Recipe, out: Path, condition: str, index: int) -> dict[str, Any]:
    """Re-run profile, bundle and report; both decisions and their numbers."""
    (out / "profile" / "manifest.json").unlink(missing_ok=True)  # profile runs again
    console = Console(file=io.StringIO(), width=300)
    start = time.perf_counter()
    ctx = run_pipeline(recipe, out, console=console)
    seconds = time.perf_counter() - start
    latency = json.loads((out / "profile" / "latency.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    b1 = {(e["model"], e["runtime"]): e["p50"] for e in latency["entries"] if int(e["batch"]) == 1}
    fp32 = final_fp32(ctx)
    fp32_ms, int8_ms = b1.get((fp32, "onnxruntime")), b1.get((f"{fp32}-int8", "onnxruntime"))
    old_file, _ = recommend(fp32_ms, int8_ms)
    rec = summary["recommended"]
    return {
        "condition": condition,
        "trial": index,
        "seconds": round(seconds, 1),
        "fp32_model": fp32,
        "sequential_p50_ms": {"fp32": fp32_ms, "int8": int8_ms},
        "single_p50_decision": old_file,
        "decision": rec["file"],
        "comparison": rec.get("decision"),
        "ratio": rec.get("ratio"),
        "ci": [rec.get("ci_low"), rec.get("ci_high")],
        "reason": rec["reason"],
        "load_warning": latency.get("load_warning"),
        "load": latency.get("load"),
        "torch_p50_ms": {
            "teacher": b1.get(("teacher", "torch")),
            fp32: b1.get((fp32, "torch")),
        },
    }


def section(
    rows: list[dict[str, Any]], doc: dict[str, Any], stable: dict[str, Any], raw: str
) -> str:
    """The BENCHMARKS.md section."""
    env = doc["environment"]
    lines = [
        "## INT8-or-FP32 decision under load",
        "",
        f"`{doc['command']}` — {env.get('cpu')}, {env.get('cpu_count')} cores, {doc['date']}. "
        "The profile stage re-run on the machine as it was and while another process kept one "
        "core busy; each row is one profile run, both rules applied to it.",
        "",
        "| condition | trial | single p50 FP32 / INT8 (ms) | single-p50 rule | INT8/FP32 ratio "
        "(95% CI) | shipped | load warning |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = r["sequential_p50_ms"]
        seq = (
            f"{p50['fp32']:.4f} / {p50['int8']:.4f}"
            if p50["fp32"] is not None and p50["int8"] is not None
            else "–"
        )
        ratio = (
            f"{r['ratio']:.3f} ({r['ci'][0]:.3f}–{r['ci'][1]:.3f}), {r['comparison']}"
            if r["ratio"] is not None
            else "–"
        )
        lines.append(
            f"| {r['condition']} | {r['trial']} | {seq} | `{r['single_p50_decision']}` | "
            f"{ratio} | `{r['decision']}` | {'yes' if r['load_warning'] else 'no'} |"
        )
    lines += [
        "",
        f"Distinct decisions over all {len(rows)} runs: single-p50 rule "
        f"{stable['single_p50_rule']}, interleaved comparison {stable['interleaved']}. "
        f"Raw: `benchmarks/results/{raw}` (load signals, reasons, torch p50s).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke recipe, one trial each")
    args = parser.parse_args()
    default = "fashion_mnist_smoke.yaml" if args.quick else "fashion_mnist.yaml"
    recipe_path = args.recipe or ROOT / "students" / default
    out = args.out or ROOT / "runs" / ("bench-decision-quick" if args.quick else "bench-decision")
    trials = args.trials or (1 if args.quick else 3)
    recipe = load(recipe_path, args.quick)

    start = time.perf_counter()
    run_pipeline(recipe, out, until="verify", console=Console())  # train once (cached)
    train_seconds = time.perf_counter() - start
    rows = []
    for condition, busy in (("idle", False), ("one core busy", True)):
        with one_core_busy(busy):
            for i in range(trials):
                rows.append(trial(recipe, out, condition, i + 1))
                r = rows[-1]
                print(
                    f"{condition} #{i + 1}: single-p50 {r['single_p50_decision']}, "
                    f"interleaved {r['decision']} ({r['comparison']}, ratio {r['ratio']}, "
                    f"CI {r['ci']}), warning: {bool(r['load_warning'])}",
                    flush=True,
                )
    stable = {
        "single_p50_rule": len({r["single_p50_decision"] for r in rows}),
        "interleaved": len({r["decision"] for r in rows}),
    }
    name = "decision_stability_quick.json" if args.quick else "decision_stability.json"
    doc = write_results(
        ROOT / "benchmarks" / "results" / name,
        rows,
        recipe=str(
            recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path
        ),
        quick=args.quick,
        trials=trials,
        train_seconds=round(train_seconds, 1),
        distinct_decisions=stable,
    )
    body = section(rows, doc, stable, name)
    if args.quick:
        print(body)
    else:
        update_section(ROOT / "BENCHMARKS.md", "decision-stability", body)
    print(json.dumps({"distinct_decisions": stable}, indent=1))


if __name__ == "__main__":
    main()
