"""Does the teacher cache pay off? KD epochs with cached teacher logits vs recomputing them.

Same student, data, optimiser and seed; the only difference is where the teacher's logits
come from: read from the on-disk cache (what `edgedistill distill` does after its first pass)
or computed by running the teacher on every batch (what a naive KD loop does every epoch).
Both are timed in one run, alternating, on the default recipe's data.

    python benchmarks/teacher_cache.py [--recipe students/fashion_mnist.yaml] [--epochs 2]

Writes benchmarks/results/teacher_cache.json and the "teacher-cache" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from edgedistill.config import load_recipe
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.metrics import count_macs
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.stages.distill import teacher_logits_for
from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.students import build_model

ROOT = Path(__file__).resolve().parents[1]


class OnlineTeacherLogits:
    """Array-like [N, K] whose rows are computed by the teacher when indexed (no cache)."""

    def __init__(self, teacher: Any, x: torch.Tensor, num_classes: int) -> None:
        self.teacher, self.x, self.shape = teacher, x, (len(x), num_classes)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.teacher(self.x[torch.as_tensor(idx)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "students" / "fashion_mnist.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-cache")
    args = parser.parse_args()

    console = Console(stderr=True)
    recipe = load_recipe(args.recipe)
    ctx = RunContext(recipe, args.work, console=console)
    torch.set_num_threads(ctx.threads())
    x_student = ctx.task.input.prepare(ctx.task.x_train)
    x_teacher = ctx.teacher_input.prepare(ctx.task.x_train)
    y = torch.as_tensor(ctx.task.y_train)
    start = time.perf_counter()
    cached, hit = teacher_logits_for(ctx, ctx.task.x_train, "train")
    first_pass = time.perf_counter() - start
    k = ctx.task.num_classes
    config = {"in_channels": ctx.task.input.shape[0], "num_classes": k, **recipe.student.config}
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=recipe.distill.batch_size,
        lr=recipe.distill.lr,
        ce_weight=0.1,
        kd_weight=0.9,
        seed=recipe.seed,
    )
    sources = {"cached": cached, "recomputed": OnlineTeacherLogits(ctx.teacher, x_teacher, k)}
    rows = []
    repeats = 3
    for repeat in range(repeats):
        for name, logits in sources.items():
            torch.manual_seed(recipe.seed)
            model = build_model(recipe.student.arch, config)
            result = train_student(model, x_student, y, settings, teacher_logits=logits)
            per_epoch = result.seconds / args.epochs
            rows.append(
                {"source": name, "repeat": repeat, "seconds_per_epoch": round(per_epoch, 2)}
            )
            console.print(f"{name:<10} {per_epoch:6.1f} s/epoch")

    def seconds(source: str) -> list[float]:
        return [r["seconds_per_epoch"] for r in rows if r["source"] == source]

    # The machine is shared: compare within each repeat (the two variants ran back to back)
    # and take the median of those ratios.
    per_repeat = [
        rec / cac for rec, cac in zip(seconds("recomputed"), seconds("cached"), strict=True)
    ]
    speedup = float(np.median(per_repeat))
    shape = ctx.task.input.shape
    cost_ratio = count_macs(ctx.teacher.model, shape) / count_macs(
        build_model(recipe.student.arch, config), shape
    )
    doc = write_results(
        ROOT / "benchmarks" / "results" / "teacher_cache.json",
        rows,
        speedup=round(speedup, 2),
        per_repeat_speedups=[round(r, 2) for r in per_repeat],
        teacher_student_macs_ratio=round(cost_ratio, 1),
        first_pass_seconds=round(first_pass, 1),
        cache_hit_at_start=hit,
        train_samples=len(y),
    )
    env = doc["environment"]
    shown = {s: ", ".join(f"{v:.1f}" for v in seconds(s)) for s in sources}
    body = "\n".join(
        [
            "## Teacher output cache",
            "",
            f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
            f"KD epochs over {len(y):,} Fashion-MNIST images; teacher/student MACs ratio "
            f"{cost_ratio:.0f}×. {repeats} repeats, each timing both variants back to back.",
            "",
            "| teacher logits | seconds per epoch, per repeat |",
            "|---|---|",
            f"| recomputed every batch | {shown['recomputed']} |",
            f"| read from the cache | {shown['cached']} |",
            "",
            f"Epochs after the first are **{speedup:.1f}× faster** with the cache (median of the "
            f"per-repeat ratios {', '.join(f'{r:.1f}' for r in per_repeat)}; bar: ≥ 3×). "
            f"Filling it (one teacher pass) took {first_pass:.1f} s"
            + (" (already cached at start)" if hit else "")
            + ". Raw: `benchmarks/results/teacher_cache.json`.",
        ]
    )
    update_section(ROOT / "BENCHMARKS.md", "teacher-cache", body)
    console.print(f"cache speed-up {speedup:.1f}x")


if __name__ == "__main__":
    main()
