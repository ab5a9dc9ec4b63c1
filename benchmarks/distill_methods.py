"""Which distillation method helps most? The same student trained by each method, 3 seeds.

Tasks:
  image  the default recipe's task: Fashion-MNIST, 10k training images, 10 epochs, the shipped
         ConvNet teacher (0.81M parameters) and the 24k-parameter student;
  imu    the seglearn smartwatch set (real 6-axis IMU, 7 exercises), leave-subjects-out
         (subjects 9 and 10 held out); the teacher is a wide 1-D CNN trained here on the same
         training windows (cross-entropy, seed 0), the student a small 1-D CNN.

Methods (same student, data, optimiser, schedule and epochs; only the loss differs):
  vanilla  CE;  kd  0.1 CE + 0.9 Hinton KD (T = 4);  dkd  CE + DKD (alpha 1, beta 8, T = 4,
  2-epoch warm-up);  fitnets  CE + FitNets hint from the student's middle stage to the
  teacher's (1x1 adapter);  pskd  PS-KD (alpha_T 0.8 reached at the last epoch, plain labels
  at epoch 0, as the official code), no teacher;  layered  an auxiliary exit after each stage,
  every exit with CE (weight 1) and KD from the deepest exit (weight 1, T = 3), no teacher;
  byot  BYOT at the weights of its reference code (luanyunteng/pytorch-be-your-own-teacher:
  T = 3, alpha = 0.1, beta = 1e-6): (1 - alpha) * sum of CE + alpha * sum of KD + beta * summed
  squared feature distance (here as a mean-squared hint of weight beta * batch * D / (1 - alpha),
  the term weight 1 - alpha);  lsskd  LSSKD / HSAKD self-distillation (edgedistill.distill.lsskd):
  a joint (class x transformation) head after every stage, the deployed head on plain labels,
  deepest joint head -> shallower heads and -> main head by KL (T = 3), transformations 4
  rotations (images) or identity / time reversal / axis rotation (IMU);  lsskd-soft  the same
  with LSSKD's label softening by the previous epoch's predictions (alpha_T 0.8);  teacher  the
  teacher itself.

    python benchmarks/distill_methods.py [--tasks image imu] [--seeds 0 1 2] \
        [--image-epochs 10] [--imu-epochs 30] [--train-limit N]

The rotation methods forward M x the batch (M = 4 images, 3 IMU) at the same number of
optimizer steps; the seconds column shows what that costs.

Writes benchmarks/results/distill_methods.json and the "distill-methods" table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgedistill.config import load_recipe
from edgedistill.data.imu import load_watch_dataset
from edgedistill.distill.lsskd import lsskd_student
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.metrics import count_params, predict_logits, topk_accuracy
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.stages.distill import teacher_features_for, teacher_logits_for
from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.students import build_model
from edgedistill.students.multi_exit import MultiExitStudent
from edgedistill.teachers.image import tap_features

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("vanilla", "kd", "dkd", "fitnets", "pskd", "layered", "byot", "lsskd", "lsskd-soft")
TEACHER_METHODS = ("kd", "dkd", "fitnets")
RESULTS = ROOT / "benchmarks" / "results" / "distill_methods.json"
MULTI_EXIT_METHODS = ("layered", "byot")
LSSKD_METHODS = ("lsskd", "lsskd-soft")
BYOT_ALPHA, BYOT_BETA = 0.1, 1e-6  # reference code's KD and feature weights (T = 3)


def method_terms(
    method: str, *, hint_tap: str, transforms: str, byot_feature_weight: float = 0.0
) -> tuple[LossTermSpec, ...]:
    """The loss terms of each method (documented in the module docstring)."""
    a = BYOT_ALPHA
    terms = {
        "vanilla": (LossTermSpec("ce", 1.0),),
        "kd": (LossTermSpec("ce", 0.1), LossTermSpec("kd", 0.9, temperature=4.0)),
        "dkd": (
            LossTermSpec("ce", 1.0),
            LossTermSpec("dkd", 1.0, temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=2),
        ),
        "fitnets": (
            LossTermSpec("ce", 1.0),
            LossTermSpec("fitnets", 1.0, teacher_tap=hint_tap, student_stage=1),
        ),
        "pskd": (LossTermSpec("pskd", 1.0, alpha_T=0.8),),
        "layered": (LossTermSpec("layered", 1.0, transforms="none", temperature=3.0),),
        "byot": (
            LossTermSpec(
                "layered",
                1 - a,
                transforms="none",
                temperature=3.0,
                exit_kd_weight=a / (1 - a),
                feature_weight=byot_feature_weight,
            ),
        ),
        "lsskd": (LossTermSpec("lsskd", 1.0, transforms=transforms, temperature=3.0),),
        "lsskd-soft": (
            LossTermSpec("lsskd", 1.0, transforms=transforms, temperature=3.0, alpha_T=0.8),
        ),
    }
    return terms[method]


class Task:
    """Everything one task needs: data, teacher outputs and how to build the student."""

    def __init__(
        self,
        name: str,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_test: torch.Tensor,
        y_test: np.ndarray,
        build_student: Callable[[], nn.Module],
        teacher_logits: np.ndarray,
        teacher_hints: np.ndarray,
        teacher_top1: float,
        teacher_params: int,
        settings: dict[str, Any],
        hint_tap: str,
        transforms: str,
    ) -> None:
        self.name, self.x_train, self.y_train = name, x_train, y_train
        self.x_test, self.y_test = x_test, y_test
        self.build_student, self.teacher_logits = build_student, teacher_logits
        self.teacher_hints, self.teacher_top1 = teacher_hints, teacher_top1
        self.teacher_params, self.settings = teacher_params, settings
        self.hint_tap, self.transforms = hint_tap, transforms


def _limit(x: Any, n: int | None) -> Any:
    return x if n is None else x[:n]


def image_task(console: Console, work: Path, epochs: int | None, limit: int | None) -> Task:
    recipe = load_recipe(ROOT / "students" / "fashion_mnist.yaml")
    ctx = RunContext(recipe, work / "image", console=console)
    images = _limit(ctx.task.x_train, limit)
    logits, _ = teacher_logits_for(ctx, images, "train")
    test_logits, _ = teacher_logits_for(ctx, ctx.task.x_test, "test")
    hints = teacher_features_for(ctx, images, "stages.1", 7)  # [N, 64, 7, 7]
    shape = ctx.task.input.shape
    config = {"in_channels": shape[0], "num_classes": ctx.task.num_classes}
    config.update(recipe.student.config)
    cfg = recipe.distill
    return Task(
        "image",
        ctx.task.input.prepare(images),
        torch.as_tensor(_limit(ctx.task.y_train, limit)),
        ctx.x_test,
        ctx.y_test,
        lambda: build_model(recipe.student.arch, config),
        np.asarray(logits),
        np.asarray(hints),
        topk_accuracy(test_logits, ctx.y_test),
        count_params(ctx.teacher.model),
        {"epochs": epochs or cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr},
        "stages.1",
        "rotate4",
    )


def imu_task(console: Console, epochs: int, limit: int | None) -> Task:
    data = load_watch_dataset()
    norm = data.normalization
    x_train, x_test = _limit(norm.apply(data.x_train), limit), norm.apply(data.x_test)
    y_train = torch.as_tensor(_limit(data.y_train, limit))
    k = len(data.labels)
    teacher_cfg = {"in_channels": 6, "num_classes": k, "widths": [64, 128, 256], "dropout": 0.2}
    torch.manual_seed(0)
    teacher = build_model("imu_cnn", teacher_cfg)
    started = time.perf_counter()
    train_student(
        teacher,
        x_train,
        y_train,
        TrainSettings(epochs=epochs, batch_size=64, lr=0.05, seed=0),
    )
    teacher.eval()
    console.print(f"imu teacher trained in {time.perf_counter() - started:.0f} s")
    with torch.inference_mode():
        logits = teacher(x_train).numpy()
        hints = tap_features(teacher, x_train, ["stages.1"])["stages.1"].numpy()
    student_cfg = {"in_channels": 6, "num_classes": k, "widths": [16, 32, 64]}
    return Task(
        "imu",
        x_train,
        y_train,
        x_test,
        data.y_test,
        lambda: build_model("imu_cnn", student_cfg),
        logits,
        hints,
        topk_accuracy(predict_logits(teacher, x_test), data.y_test),
        count_params(teacher),
        {"epochs": epochs, "batch_size": 64, "lr": 0.05},
        "stages.1",
        "imu",
    )


def run_method(task: Task, method: str, seed: int) -> tuple[float, float, nn.Module]:
    """Train the task's student by ``method``; returns (test top-1 %, seconds, student)."""
    torch.manual_seed(seed)
    student: nn.Module = task.build_student()
    if method in MULTI_EXIT_METHODS:
        student = MultiExitStudent(student, num_transforms=1)
    elif method in LSSKD_METHODS:
        student = lsskd_student(student, task.transforms)
    dim = 0
    if isinstance(student, MultiExitStudent) and method == "byot":  # deepest pooled width D
        dim = int(cast(nn.Linear, student.backbone.classifier).in_features)
    batch = int(task.settings["batch_size"])
    terms = method_terms(
        method, hint_tap=task.hint_tap, transforms=task.transforms,
        byot_feature_weight=BYOT_BETA * batch * dim / (1 - BYOT_ALPHA),
    )  # fmt: skip
    settings = TrainSettings(seed=seed, terms=terms, **task.settings)
    result = train_student(
        student,
        task.x_train,
        task.y_train,
        settings,
        teacher_logits=task.teacher_logits if method in ("kd", "dkd") else None,
        teacher_features={task.hint_tap: task.teacher_hints} if method == "fitnets" else None,
    )
    if isinstance(student, MultiExitStudent):
        student = student.plain_student()  # what would be deployed: exits removed
    top1 = topk_accuracy(predict_logits(student, task.x_test), task.y_test)
    return top1, result.seconds, student


def summarise(rows: list[dict[str, Any]], task: str) -> dict[str, dict[str, float]]:
    out = {}
    for method in (*METHODS, "teacher"):
        values = [r["value"] for r in rows if r["task"] == task and r["method"] == method]
        if values:
            out[method] = {
                "mean": round(statistics.mean(values), 2),
                "std": round(statistics.pstdev(values), 2),
            }
    return out


def verdicts(summary: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The issue's two expectations, checked on the measured means."""
    lines = []
    image = summary.get("image")
    if image and "vanilla" in image and all(m in image for m in TEACHER_METHODS):
        vanilla, teacher = image["vanilla"]["mean"], image["teacher"]["mean"]
        best = max(TEACHER_METHODS, key=lambda m: image[m]["mean"])
        closed = (image[best]["mean"] - vanilla) / max(teacher - vanilla, 1e-9) * 100
        mark = "✅" if closed >= 50 else "❌"
        lines.append(
            f"- {mark} image: the best teacher-based method ({best}) closes **{closed:.0f}%** of "
            f"the teacher–vanilla gap ({vanilla:.2f} → {image[best]['mean']:.2f}, teacher "
            f"{teacher:.2f}; bar ≥ 50%)."
        )
    bars = {  # method: {task: minimum gain over vanilla}
        "lsskd": {"image": 1.0, "imu": 0.0},
        "lsskd-soft": {"image": 1.0, "imu": 0.0},
        "pskd": {"image": 0.0, "imu": 0.0},
    }
    for task, rows in summary.items():
        for method, bar in bars.items():
            if method not in rows or "vanilla" not in rows or task not in bar:
                continue
            gain = rows[method]["mean"] - rows["vanilla"]["mean"]
            mark = "✅" if gain >= bar[task] else "❌"
            lines.append(
                f"- {mark} {task}: {method} vs vanilla, no teacher: **{gain:+.2f}** points "
                f"(bar ≥ {bar[task]:+.1f})."
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["image", "imu"], choices=["image", "imu"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="task:method pairs not run (e.g. image:lsskd-soft)"
    )
    parser.add_argument("--image-epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--imu-epochs", type=int, default=30)
    parser.add_argument(
        "--train-limit", type=int, default=None,
        help="use only the first N training samples of each task (budget comparisons)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-methods")
    parser.add_argument(
        "--results", type=Path, default=RESULTS,
        help="JSON to write; BENCHMARKS.md gets the main table for the default and a section "
        "of its own for another file in benchmarks/results/ (none elsewhere)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1: on a shared 2-core machine 2 threads ran 7x slower)",
    )  # fmt: skip
    args = parser.parse_args()
    console = Console(stderr=True)
    torch.set_num_threads(args.threads)
    # Rows of earlier runs are kept (tasks, methods or seeds run separately, e.g. image and IMU
    # in two processes); a row of this run replaces the earlier one with the same key.
    previous = json.loads(args.results.read_text()) if args.results.exists() else {}
    info: dict[str, Any] = dict(previous.get("tasks", {}))
    known = (*METHODS, "teacher")  # rows of retired methods (e.g. layered+ssl) are dropped
    rows = [_with_budget(r, info) for r in previous.get("rows", []) if r["method"] in known]
    for name in args.tasks:
        task = (
            image_task(console, args.work, args.image_epochs, args.train_limit)
            if name == "image"
            else imu_task(console, args.imu_epochs, args.train_limit)
        )
        info[name] = {
            "train_samples": len(task.y_train),
            "test_samples": len(task.y_test),
            "student_params": count_params(task.build_student()),
            "teacher_params": task.teacher_params,
            **task.settings,
        }
        _replace(rows, {"method": "teacher", "task": name, "seed": 0, "metric": "top1",
                        "value": round(task.teacher_top1, 2)})  # fmt: skip
        for seed in args.seeds:
            for method in args.methods:
                if f"{name}:{method}" in args.skip:
                    continue
                top1, seconds, _ = run_method(task, method, seed)
                _replace(rows, {
                    "method": method, "task": name, "seed": seed, "metric": "top1",
                    "value": round(top1, 2), "seconds": round(seconds, 1),
                    "epochs": task.settings["epochs"], "train_samples": len(task.y_train),
                })  # fmt: skip
                console.print(
                    f"{name} seed {seed} {method:<8} top-1 {top1:6.2f}  ({seconds:.0f} s)"
                )
                write_results(args.results, rows, tasks=info)  # nothing lost on a crash
    tasks = [t for t in ("image", "imu") if t in info]
    current = [r for r in rows if r["method"] == "teacher" or _in_budget(r, info)]
    summary = {name: summarise(current, name) for name in tasks}
    doc = write_results(args.results, rows, tasks=info, summary=summary)
    env = doc["environment"]
    methods = [m for m in (*METHODS, "teacher") if any(m in summary[t] for t in tasks)]
    header = "| method | " + " | ".join(f"{t} top-1 (mean ± std)" for t in tasks) + " |"
    table = [header, "|---" * (len(tasks) + 1) + "|"]
    for method in methods:
        cells = []
        for t in tasks:
            s = summary[t].get(method)
            cells.append("—" if s is None else f"{s['mean']:.2f} ± {s['std']:.2f}")
        table.append(f"| {method} | " + " | ".join(cells) + " |")
    seconds_lines = []
    for t in tasks:
        per = {
            m: statistics.mean(r["seconds"] for r in current
                               if r["task"] == t and r["method"] == m and "seconds" in r)
            for m in methods
            if any(r["task"] == t and r["method"] == m and "seconds" in r for r in current)
        }  # fmt: skip
        seconds_lines.append(
            f"- {t}, training seconds per run (mean; one thread, shared machine): "
            + ", ".join(f"{m} {v:.0f}" for m, v in per.items())
            + "."
        )
    seed_lines = []
    for t in tasks:
        for m in methods:
            got = sorted(
                (r for r in current if r["task"] == t and r["method"] == m and m != "teacher"),
                key=lambda r: r["seed"],
            )
            if got:
                seed_lines.append(
                    f"{t} {m}: " + ", ".join(f"seed {r['seed']} {r['value']:.2f}" for r in got)
                )
    task_lines = [
        f"- {t}: {i['train_samples']} training / {i['test_samples']} test samples, "
        f"{i['epochs']} epochs, batch {i['batch_size']}, student {i['student_params']:,} "
        f"parameters, teacher {i['teacher_params']:,}."
        for t, i in info.items()
    ]
    body = "\n".join(
        [
            "## Distillation methods, same student",
            "",
            f"`python benchmarks/distill_methods.py` (last: `{doc['command']}`) — {env['cpu']}, "
            f"{env['cpu_count']} cores, {doc['date']}.",
            "Held-out top-1 %, mean ± std over seeds. The teacher row is one model (std 0). "
            "Method settings are in the script's docstring.",
            *task_lines,
            "",
            *table,
            "",
            *verdicts(summary),
            *seconds_lines,
            "",
            "<details><summary>Per-seed values</summary>",
            "",
            *(f"- {line}" for line in seed_lines),
            "",
            "</details>",
            "",
            "Raw rows: `benchmarks/results/distill_methods.json`.",
        ]
    )
    if args.results.resolve() == RESULTS.resolve():
        update_section(ROOT / "BENCHMARKS.md", "distill-methods", body)
    elif args.results.resolve().parent == RESULTS.parent.resolve():
        # A budget comparison kept in benchmarks/results/ gets its own section.
        budget = body.replace(
            "## Distillation methods, same student",
            f"## Distillation methods, same student, other budget ({args.results.stem})",
        ).replace(
            "benchmarks/results/distill_methods.json", f"benchmarks/results/{args.results.name}"
        )
        update_section(ROOT / "BENCHMARKS.md", args.results.stem.replace("_", "-"), budget)


def _with_budget(row: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Rows written before budgets were recorded ran at the task's recorded budget."""
    if row["method"] == "teacher" or "epochs" in row or row["task"] not in info:
        return row
    task = info[row["task"]]
    return {**row, "epochs": task["epochs"], "train_samples": task["train_samples"]}


def _in_budget(row: dict[str, Any], info: dict[str, Any]) -> bool:
    task = info.get(row["task"], {})
    return bool(
        row.get("epochs") == task.get("epochs")
        and row.get("train_samples") == task.get("train_samples")
    )


def _replace(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    key = ("method", "task", "seed", "epochs", "train_samples")
    rows[:] = [r for r in rows if any(r.get(k) != row.get(k) for k in key)]
    rows.append(row)


if __name__ == "__main__":
    main()
