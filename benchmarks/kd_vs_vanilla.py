"""Does the teacher help? The default student distilled vs the same student without a teacher.

Same architecture, data, optimiser, schedule and epochs; the only difference is the loss:
vanilla = cross-entropy only; KD = the recipe's terms (0.1 CE + 0.9 Hinton KD, T = 4).
Three seeds each (seed changes the initialisation and the data order). Held-out accuracy on
the 10,000 Fashion-MNIST test images.

    python benchmarks/kd_vs_vanilla.py [--recipe students/fashion_mnist.yaml] [--seeds 0 1 2]

Writes benchmarks/results/kd_vs_vanilla.json and the "kd-vs-vanilla" table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from rich.console import Console

from edgedistill.config import load_recipe
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.metrics import count_params, predict_logits, topk_accuracy
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.stages.distill import teacher_logits_for
from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.students import build_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=ROOT / "students" / "fashion_mnist.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-kd")
    args = parser.parse_args()

    console = Console(stderr=True)
    recipe = load_recipe(args.recipe)
    ctx = RunContext(recipe, args.work, console=console)
    torch.set_num_threads(ctx.threads())
    x_train = ctx.task.input.prepare(ctx.task.x_train)
    y_train = torch.as_tensor(ctx.task.y_train)
    teacher_logits, _ = teacher_logits_for(ctx, ctx.task.x_train, "train")
    teacher_test, _ = teacher_logits_for(ctx, ctx.task.x_test, "test")
    teacher_top1 = topk_accuracy(teacher_test, ctx.y_test)
    terms = {t.name: t for t in recipe.distill.terms}
    shape = ctx.task.input.shape
    config = {
        "in_channels": shape[0],
        "num_classes": ctx.task.num_classes,
        **recipe.student.config,
    }

    rows = []
    for seed in args.seeds:
        for method in ("vanilla", "kd"):
            settings = TrainSettings(
                epochs=recipe.distill.epochs,
                batch_size=recipe.distill.batch_size,
                lr=recipe.distill.lr,
                momentum=recipe.distill.momentum,
                weight_decay=recipe.distill.weight_decay,
                ce_weight=1.0 if method == "vanilla" else terms["ce"].weight,
                kd_weight=0.0 if method == "vanilla" else terms["kd"].weight,
                temperature=terms["kd"].temperature,
                seed=seed,
            )
            torch.manual_seed(seed)
            model = build_model(recipe.student.arch, config)
            result = train_student(
                model,
                x_train,
                y_train,
                settings,
                teacher_logits=teacher_logits if method == "kd" else None,
            )
            top1 = topk_accuracy(predict_logits(model, ctx.x_test), ctx.y_test)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "top1": round(top1, 2),
                    "epochs": settings.epochs,
                    "seconds": round(result.seconds, 1),
                }
            )
            console.print(f"seed {seed} {method:<7} top-1 {top1:.2f}%  ({result.seconds:.0f} s)")

    mean = {
        m: statistics.mean(r["top1"] for r in rows if r["method"] == m) for m in ("vanilla", "kd")
    }
    std = {
        m: statistics.pstdev([r["top1"] for r in rows if r["method"] == m])
        for m in ("vanilla", "kd")
    }
    gain = mean["kd"] - mean["vanilla"]
    doc = write_results(
        ROOT / "benchmarks" / "results" / "kd_vs_vanilla.json",
        rows,
        recipe=str(
            args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe
        ),
        teacher_top1=round(teacher_top1, 2),
        train_samples=len(y_train),
        student_params=count_params(model),
        mean=mean,
        std=std,
        gain=round(gain, 2),
    )
    per_seed = {
        m: ", ".join(f"{r['top1']:.2f}" for r in rows if r["method"] == m)
        for m in ("vanilla", "kd")
    }
    env = doc["environment"]
    body = "\n".join(
        [
            "## Distilled student vs the same student without a teacher",
            "",
            f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}.",
            f"Fashion-MNIST, {len(y_train)} training images, {recipe.distill.epochs} epochs each, "
            f"student {count_params(model):,} parameters; teacher top-1 {teacher_top1:.2f}%.",
            "Top-1 % on the 10,000 test images.",
            "",
            "| student | mean ± std (3 seeds) | per seed |",
            "|---|---|---|",
            f"| vanilla (CE only) | {mean['vanilla']:.2f} ± {std['vanilla']:.2f} | {per_seed['vanilla']} |",
            f"| distilled (0.1 CE + 0.9 KD, T={terms['kd'].temperature:g}) | {mean['kd']:.2f} ± {std['kd']:.2f} | {per_seed['kd']} |",
            "",
            f"Gain from the teacher: **{gain:+.2f} top-1 points** (bar: ≥ +1.0). Raw: "
            "`benchmarks/results/kd_vs_vanilla.json`.",
        ]
    )
    update_section(ROOT / "BENCHMARKS.md", "kd-vs-vanilla", body)
    console.print(f"gain {gain:+.2f} points (vanilla {mean['vanilla']:.2f}, kd {mean['kd']:.2f})")


if __name__ == "__main__":
    main()
