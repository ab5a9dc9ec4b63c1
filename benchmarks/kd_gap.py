"""How much of the teacher–student gap can KD close on the default image task, and why not more?

The default recipe's student (24k parameters) learns Fashion-MNIST from 10,000 images for 10
epochs; its teacher (0.81M parameters, 91.73%) saw all 60,000. Each *arm* below changes one
thing, trains the same student and reports held-out top-1 on the 10,000 test images:

  vanilla / kd            the recipe's budget (10 epochs): CE only / 0.1 CE + 0.9 KD (T = 4);
  vanilla-30 / kd-30      the same, 30 epochs (a longer schedule);
  kd-T{1,2,8}, kd-pure    KD temperature, and KD without any label term (weight 1.0, T = 4);
  consistent-30           "consistent and patient" teaching (Beyer et al., "Knowledge
                          distillation: A good teacher is patient and consistent", CVPR 2022):
                          teacher and student see the *same* random augmentation of every image
                          (2-pixel shift + horizontal flip), the teacher run online, pure KD
                          (T = 4), 30 epochs;
  augment-30              the same augmentation and schedule with CE only (is it the teacher
                          or the augmentation?);
  ceiling-60k             the student trained with CE on all 60,000 labelled images for 15
                          epochs: what this architecture reaches with six times the labels (the
                          capacity ceiling for "closing the gap" with 10k images);
  ceiling-60k-kd          the same with 0.1 CE + 0.9 KD.

Gap closed = (arm − vanilla) / (teacher − vanilla), vanilla at the recipe's 10-epoch budget.
Optimiser and schedule are the recipe's (SGD momentum 0.9, weight decay 5e-4, one-cycle, lr 0.05,
batch 128). One torch thread (this 2-core machine is shared). Rows are appended to the JSON as
they finish, and a re-run skips the (arm, seed) pairs already there.

    python benchmarks/kd_gap.py [--arms ...] [--seeds 0]

Writes benchmarks/results/kd_gap.json and the "kd-gap" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console
from torch import nn

from edgedistill.config import Recipe
from edgedistill.distill.kd import kd_loss
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.metrics import predict_logits, topk_accuracy
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.stages.distill import teacher_logits_for
from edgedistill.report.benchmarks import update_section, write_results
from edgedistill.students import build_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "kd_gap.json"
KD_TERMS = (LossTermSpec("ce", 0.1), LossTermSpec("kd", 0.9, temperature=4.0))

# arm -> (training images, epochs, loss terms or an online mode)
ARMS: dict[str, dict[str, Any]] = {
    "vanilla": {"limit": 10_000, "epochs": 10, "terms": (LossTermSpec("ce", 1.0),)},
    "kd": {"limit": 10_000, "epochs": 10, "terms": KD_TERMS},
    "kd-T1": {
        "limit": 10_000, "epochs": 10,
        "terms": (LossTermSpec("ce", 0.1), LossTermSpec("kd", 0.9, temperature=1.0)),
    },
    "kd-T2": {
        "limit": 10_000, "epochs": 10,
        "terms": (LossTermSpec("ce", 0.1), LossTermSpec("kd", 0.9, temperature=2.0)),
    },
    "kd-T8": {
        "limit": 10_000, "epochs": 10,
        "terms": (LossTermSpec("ce", 0.1), LossTermSpec("kd", 0.9, temperature=8.0)),
    },
    "kd-pure": {"limit": 10_000, "epochs": 10, "terms": (LossTermSpec("kd", 1.0, temperature=4.0),)},
    "vanilla-30": {"limit": 10_000, "epochs": 30, "terms": (LossTermSpec("ce", 1.0),)},
    "kd-30": {"limit": 10_000, "epochs": 30, "terms": KD_TERMS},
    "augment-30": {"limit": 10_000, "epochs": 30, "online": "ce"},
    "consistent-30": {"limit": 10_000, "epochs": 30, "online": "kd"},
    "ceiling-60k": {"limit": None, "epochs": 15, "terms": (LossTermSpec("ce", 1.0),)},
    "ceiling-60k-kd": {"limit": None, "epochs": 15, "terms": KD_TERMS},
}  # fmt: skip


def load_context(limit: int | None, work: Path, console: Console) -> RunContext:
    """The default recipe's run context with ``train_limit`` replaced (None: all 60k)."""
    path = ROOT / "students" / "fashion_mnist.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["data"] = {k: v for k, v in raw["data"].items() if k != "train_limit"}
    if limit is not None:
        raw["data"]["train_limit"] = limit
    recipe = Recipe.from_dict(raw, base_dir=path.parent, source=str(path))
    return RunContext(recipe, work / f"limit-{limit or 'all'}", console=console)


def augment(raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift by up to 2 pixels (zero padding) and horizontal flip, per image.

    Args:
        raw: [B, 1, H, W] float images in [0, 255].
    """
    b, _, h, w = raw.shape
    padded = F.pad(raw, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (b,), generator=generator)
    dx = torch.randint(0, 5, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, 1, h, w + 4)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, 1, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def normalise(raw: torch.Tensor, norm: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    return (raw / norm["divisor"] - mean) / std


def train_online(ctx: RunContext, student: nn.Module, epochs: int, loss: str, seed: int) -> float:
    """Train with a fresh augmentation per image and step; ``kd``: the teacher sees the same view.

    Returns seconds spent.
    """
    cfg = ctx.recipe.distill
    raw = torch.as_tensor(np.asarray(ctx.task.x_train), dtype=torch.float32)
    labels = torch.as_tensor(ctx.task.y_train)
    student_norm, teacher_norm = ctx.task.input.normalization(), ctx.teacher_input.normalization()
    teacher = ctx.teacher.model.eval()
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(
        student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    steps = epochs * -(-len(raw) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=steps)
    started = time.perf_counter()
    student.train()
    for _ in range(epochs):
        order = torch.randperm(len(raw), generator=generator)
        for start in range(0, len(raw), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            view = augment(raw[idx], generator)
            logits = student(normalise(view, student_norm))
            if loss == "kd":
                with torch.inference_mode():
                    target = teacher(normalise(view, teacher_norm))
                value = kd_loss(logits, target.clone(), temperature=4.0)
            else:
                value = F.cross_entropy(logits, labels[idx])
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
            scheduler.step()
    student.eval()
    return time.perf_counter() - started


def run_arm(arm: str, seed: int, work: Path, console: Console) -> dict[str, Any]:
    spec = ARMS[arm]
    ctx = load_context(spec["limit"], work, console)
    test_ctx = ctx
    config = {
        "in_channels": ctx.task.input.shape[0],
        "num_classes": ctx.task.num_classes,
        **ctx.recipe.student.config,
    }
    torch.manual_seed(seed)
    student = build_model(ctx.recipe.student.arch, config)
    if "online" in spec:
        seconds = train_online(ctx, student, spec["epochs"], spec["online"], seed)
    else:
        terms = spec["terms"]
        logits = None
        if any(t.name == "kd" for t in terms):
            logits, _ = teacher_logits_for(ctx, ctx.task.x_train, "train")
        cfg = ctx.recipe.distill
        result = train_student(
            student,
            ctx.task.input.prepare(ctx.task.x_train),
            torch.as_tensor(ctx.task.y_train),
            TrainSettings(
                epochs=spec["epochs"], batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                terms=terms,
            ),
            teacher_logits=None if logits is None else np.asarray(logits),
        )  # fmt: skip
        seconds = result.seconds
    top1 = topk_accuracy(predict_logits(student, test_ctx.x_test), test_ctx.y_test)
    return {
        "arm": arm, "seed": seed, "train_images": len(ctx.task.y_train),
        "epochs": spec["epochs"], "metric": "top1", "value": round(top1, 2),
        "seconds": round(seconds, 1),
    }  # fmt: skip


def teacher_top1(work: Path, console: Console) -> float:
    ctx = load_context(10_000, work, console)
    logits, _ = teacher_logits_for(ctx, ctx.task.x_test, "test")
    return round(topk_accuracy(logits, ctx.y_test), 2)


def summarise(rows: list[dict[str, Any]], teacher: float) -> list[str]:
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    base = statistics.mean(r["value"] for r in by_arm.get("vanilla", [{"value": float("nan")}]))
    lines = [
        "| arm | images | epochs | seeds | top-1 per seed | mean | gap closed | s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        got = sorted(by_arm.get(arm, []), key=lambda r: r["seed"])
        if not got:
            continue
        mean = statistics.mean(r["value"] for r in got)
        closed = (mean - base) / (teacher - base) * 100 if arm != "vanilla" else 0.0
        seeds = ", ".join(str(r["seed"]) for r in got)
        per_seed = ", ".join(f"{r['value']:.2f}" for r in got)
        secs = statistics.mean(r["seconds"] for r in got)
        lines.append(
            f"| {arm} | {got[0]['train_images']:,} | {got[0]['epochs']} | {seeds} | {per_seed} "
            f"| {mean:.2f} | {closed:.0f}% | {secs:.0f} |"
        )
    return lines


def findings(rows: list[dict[str, Any]], teacher: float) -> list[str]:
    """What the arms say about the issue's bar (KD closes >= 50% of the teacher-vanilla gap)."""
    mean = {
        arm: statistics.mean(r["value"] for r in rows if r["arm"] == arm)
        for arm in {r["arm"] for r in rows}
    }
    lines = []

    def closed(arm: str, base: str, top: float) -> float:
        return (mean[arm] - mean[base]) / (top - mean[base]) * 100

    if {"kd", "vanilla"} <= mean.keys():
        lines.append(
            f"- Recipe budget (10 epochs): KD closes **{closed('kd', 'vanilla', teacher):.0f}%** "
            "of the teacher–vanilla gap (bar: 50%)."
        )
    if {"kd-30", "vanilla-30"} <= mean.keys():
        lines.append(
            f"- Equal longer budget (30 epochs each): KD {mean['kd-30']:.2f} vs CE "
            f"{mean['vanilla-30']:.2f}, **{closed('kd-30', 'vanilla-30', teacher):.0f}%** of "
            "that gap; against the 10-epoch vanilla, KD at 30 epochs closes "
            f"{closed('kd-30', 'vanilla', teacher):.0f}%."
        )
    if {"ceiling-60k", "vanilla"} <= mean.keys():
        ceiling = max(mean["ceiling-60k"], mean.get("ceiling-60k-kd", 0.0))
        lines.append(
            f"- Capacity: this student trained on all 60,000 labelled images reaches "
            f"{ceiling:.2f} ({teacher - ceiling:.2f} under the teacher), so with 10k images the "
            f"reachable gap is at most {ceiling - mean['vanilla']:.2f} points of the "
            f"{teacher - mean['vanilla']:.2f}; KD-30 closes "
            + (f"{closed('kd-30', 'vanilla', ceiling):.0f}% " if "kd-30" in mean else "")
            + "of that reachable gap."
        )
    if {"consistent-30", "augment-30", "kd-30", "vanilla-30"} <= mean.keys():
        lines.append(
            f"- Consistent teaching (shared random view, 30 epochs) {mean['consistent-30']:.2f} "
            f"vs fixed-view KD {mean['kd-30']:.2f}; the same augmentation with CE "
            f"{mean['augment-30']:.2f} vs {mean['vanilla-30']:.2f} without: at this budget the "
            "small student underfits and harder inputs cost more than they teach (the paper's "
            "gains come from schedules of thousands of epochs)."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-kd-gap")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    console = Console(stderr=True)
    torch.set_num_threads(args.threads)
    previous = json.loads(RESULTS.read_text()).get("rows", []) if RESULTS.exists() else []
    rows: list[dict[str, Any]] = list(previous)
    done = {(r["arm"], r["seed"]) for r in rows}
    teacher = teacher_top1(args.work, console)
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            row = run_arm(arm, seed, args.work, console)
            rows.append(row)
            console.print(f"{arm:<15} seed {seed}: {row['value']:.2f} ({row['seconds']:.0f} s)")
            doc = write_results(RESULTS, rows, teacher_top1=teacher)
    doc = write_results(RESULTS, rows, teacher_top1=teacher)
    env = doc["environment"]
    body = "\n".join(
        [
            "## How much of the teacher–student gap KD closes on images, and the ceiling",
            "",
            f"`python benchmarks/kd_gap.py` — {env['cpu']}, {env['cpu_count']} cores, "
            f"{doc['date']}, one torch thread. Default recipe's student (24,058 parameters) "
            f"and teacher ({teacher:.2f}%); held-out top-1 on the 10,000 test images. Arms are "
            "described in the script's docstring; gap closed is relative to `vanilla` (10 "
            "epochs, 10k images).",
            "",
            *summarise(rows, teacher),
            "",
            *findings(rows, teacher),
            "",
            "Raw rows: `benchmarks/results/kd_gap.json`.",
        ]
    )
    update_section(ROOT / "BENCHMARKS.md", "kd-gap", body)


if __name__ == "__main__":
    main()
