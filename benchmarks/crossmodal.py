"""Cross-modal distillation, video -> IMU, without labels: does the IMU student learn activities?

Data: the synthetic paired egocentric set (``edgedistill.data.egocentric``: 10 subjects x 7
activities x 12 clips of 2 s; video 64x64 at 10 fps, IMU 6-axis at 50 Hz),
subject-disjoint: subjects 7, 8, 9 held out. Teacher: ImageNet MobileNetV2 per frame at 64 px,
mid-level features (``features[:11]``, 64 channels) pooled to a 4x4 grid, + temporal
statistics; its target for the student is the motion blocks (std, |frame-to-frame
difference|, trend), standardised and PCA-reduced to 128 dimensions on the training clips.
Student: ``imu_cnn`` (widths 32/64/128), 20 epochs of pre-training without labels.

Rows, per seed: linear probe (logistic regression) on frozen student features with all labels
and with 5 and 20 labels per class, for COMODO (tuned temperatures teacher 0.05 / student 0.1,
and the paper's 0.1 / 0.05), InfoNCE, normalised L2, the random-init student and the supervised
student (cross-entropy with all labels), plus the teacher's own probe with mean-only pooling vs
motion-aware pooling. Also: fine-tuning with 1 / 10 / 100 % of labels (COMODO-pretrained vs
scratch), transfer to real IMU (seglearn smartwatch, leave-subjects-out; BasicMotions) with 10 %
of labels, and a COMODO queue-size ablation.

    python benchmarks/crossmodal.py [--seeds 0 1 2] [--epochs 20]

Writes benchmarks/results/crossmodal.json and the "crossmodal*" tables in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from edgedistill.crossmodal_chain import (
    build_imu_student,
    encode_video_teacher,
    finetune_classifier,
    pretrain_student,
    teacher_targets,
)
from edgedistill.data.egocentric import EgocentricConfig, load_or_generate_egocentric
from edgedistill.data.imu import ImuNormalization, load_basic_motions, load_watch_dataset
from edgedistill.distill.objective import LossTermSpec
from edgedistill.metrics import predict_logits, topk_accuracy
from edgedistill.probe import extract_features, linear_probe, subsample_labels
from edgedistill.report.benchmarks import update_section, write_results

ROOT = Path(__file__).resolve().parents[1]
TEST_SUBJECTS = (7, 8, 9)
STUDENT = {"in_channels": 6, "widths": [32, 64, 128]}
SHOTS = (None, 20, 5)
LOSSES = {
    "comodo": LossTermSpec(
        "comodo", 1.0, temperature=0.05, student_temperature=0.1, queue_size=4096
    ),
    "comodo (paper temps 0.1/0.05)": LossTermSpec(
        "comodo", 1.0, temperature=0.1, student_temperature=0.05, queue_size=4096
    ),
    "infonce": LossTermSpec("infonce", 1.0, temperature=0.1, queue_size=0),
    "l2": LossTermSpec("l2", 1.0),
}


def shot_name(k: int | None) -> str:
    return "all" if k is None else f"{k}/class"


def probe_rows(method: str, seed: int, train_f: np.ndarray, y_tr: np.ndarray,
               test_f: np.ndarray, y_te: np.ndarray) -> list[dict[str, Any]]:  # fmt: skip
    """Linear-probe accuracy with all labels and k per class (k-shot: the label subset's seed
    is the run's seed, so three seeds also average three subsets)."""
    rows = []
    for k in SHOTS:
        result = linear_probe(train_f, y_tr, test_f, y_te, labels_per_class=k, seed=seed)
        rows.append({"table": "probe", "method": method, "seed": seed, "shots": shot_name(k),
                     "value": round(result.accuracy, 2)})  # fmt: skip
    return rows


def mean_std(rows: list[dict[str, Any]], **match: Any) -> tuple[float, float, int]:
    values = [r["value"] for r in rows if all(r.get(k) == v for k, v in match.items())]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.mean(values), statistics.pstdev(values), len(values)


def cell(rows: list[dict[str, Any]], **match: Any) -> str:
    m, s, n = mean_std(rows, **match)
    return "—" if n == 0 else f"{m:.1f} ± {s:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--queue-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-crossmodal")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    started = time.perf_counter()

    # ---- data and teacher ------------------------------------------------------------------
    paired = load_or_generate_egocentric(EgocentricConfig(frame_size=64), args.work / "cache")
    train_idx, test_idx = paired.subject_split(TEST_SUBJECTS)
    norm = ImuNormalization.from_windows(paired.imu[train_idx])
    x_all = norm.apply(paired.imu)
    x_tr, x_te = x_all[train_idx], x_all[test_idx]
    y_tr, y_te = paired.labels[train_idx], paired.labels[test_idx]
    k = len(paired.classes)
    t0 = time.perf_counter()
    emb = encode_video_teacher(paired, args.work / "cache")
    console.print(f"teacher embeddings {emb.values.shape} in {time.perf_counter() - t0:.0f} s")
    targets = teacher_targets(emb, train_idx)
    rows: list[dict[str, Any]] = []
    teacher_rows = (
        ("teacher: mean pooling", ("mean",)),
        ("teacher: motion-aware pooling", ("mean", "std", "absdiff", "trend")),
        ("teacher: motion blocks (the distillation target)", ("std", "absdiff", "trend")),
    )
    for name, stats in teacher_rows:
        feats = emb.blocks(stats)
        for seed in args.seeds:
            rows += probe_rows(name, seed, feats[train_idx], y_tr, feats[test_idx], y_te)

    # ---- students: random init, supervised, cross-modal losses ------------------------------
    cfg = {**STUDENT, "num_classes": k}
    pretrained: dict[tuple[str, int], torch.nn.Module] = {}
    for seed in args.seeds:
        model = build_imu_student(cfg, seed)
        rows += probe_rows("random init", seed, extract_features(model, x_tr), y_tr,
                           extract_features(model, x_te), y_te)  # fmt: skip
        sup = build_imu_student(cfg, seed)
        finetune_classifier(sup, x_tr, torch.as_tensor(y_tr), k, epochs=args.epochs, seed=seed)
        rows += probe_rows("supervised (all labels)", seed, extract_features(sup, x_tr), y_tr,
                           extract_features(sup, x_te), y_te)  # fmt: skip
        for method, term in LOSSES.items():
            model = build_imu_student(cfg, seed)
            result = pretrain_student(
                model, x_tr, targets[train_idx], term, epochs=args.epochs, seed=seed
            )
            rows += probe_rows(method, seed, extract_features(model, x_tr), y_tr,
                               extract_features(model, x_te), y_te)  # fmt: skip
            pretrained[(method, seed)] = model
            console.print(f"seed {seed} {method:<30} probe(all) {rows[-3]['value']:.1f}  "
                          f"5/class {rows[-1]['value']:.1f}  ({result.seconds:.0f} s)")  # fmt: skip

    # ---- fine-tuning with a fraction of the labels -----------------------------------------
    import copy

    for seed in args.seeds:
        for fraction in (0.01, 0.1, 1.0):
            idx = subsample_labels(y_tr, fraction, seed=seed)
            for method in ("comodo", "scratch"):
                model = (copy.deepcopy(pretrained[("comodo", seed)]) if method == "comodo"
                         else build_imu_student(cfg, seed))  # fmt: skip
                finetune_classifier(model, x_tr[idx], torch.as_tensor(y_tr[idx]), k,
                                    epochs=args.finetune_epochs, seed=seed)  # fmt: skip
                rows.append({"table": "finetune", "method": method, "seed": seed,
                             "fraction": fraction, "labels": len(idx),
                             "value": round(topk_accuracy(predict_logits(model, x_te), y_te), 2)})  # fmt: skip

    # ---- transfer to real IMU (10 % of labels) ----------------------------------------------
    for dataset in ("seglearn watch", "BasicMotions"):
        data = load_watch_dataset() if dataset == "seglearn watch" else load_basic_motions()
        dnorm = data.normalization
        rx_tr, rx_te = dnorm.apply(data.x_train), dnorm.apply(data.x_test)
        kk = len(data.labels)
        for seed in args.seeds:
            idx = subsample_labels(data.y_train, 0.1, seed=seed)
            for method in ("comodo-pretrained", "scratch"):
                model = (copy.deepcopy(pretrained[("comodo", seed)]) if method != "scratch"
                         else build_imu_student(cfg, seed))  # fmt: skip
                finetune_classifier(model, rx_tr[idx], torch.as_tensor(data.y_train[idx]), kk,
                                    epochs=args.finetune_epochs, seed=seed)  # fmt: skip
                rows.append({"table": "transfer", "dataset": dataset, "method": method,
                             "seed": seed, "labels": len(idx), "window": list(data.input_shape),
                             "value": round(topk_accuracy(predict_logits(model, rx_te), data.y_test), 2)})  # fmt: skip

    # ---- queue-size ablation (COMODO, tuned temperatures) ----------------------------------
    for size in args.queue_sizes:
        for seed in args.seeds:
            term = LossTermSpec(
                "comodo", 1.0, temperature=0.05, student_temperature=0.1, queue_size=size
            )
            model = build_imu_student(cfg, seed)
            pretrain_student(model, x_tr, targets[train_idx], term, epochs=args.epochs, seed=seed)
            for r in probe_rows(f"queue {size}", seed, extract_features(model, x_tr), y_tr,
                                extract_features(model, x_te), y_te):  # fmt: skip
                rows.append({**r, "table": "queue", "queue_size": size})

    write_and_report(
        args, rows, paired, len(train_idx), len(test_idx), time.perf_counter() - started
    )


def write_and_report(args: argparse.Namespace, rows: list[dict[str, Any]], paired: Any,
                     n_train: int, n_test: int, seconds: float) -> None:  # fmt: skip
    doc = write_results(
        ROOT / "benchmarks" / "results" / "crossmodal.json", rows,
        data={"source": paired.source, "train_clips": n_train, "test_clips": n_test,
              "test_subjects": list(TEST_SUBJECTS), "classes": list(paired.classes)},
        student=STUDENT, epochs=args.epochs, seconds=round(seconds),
    )  # fmt: skip
    env = doc["environment"]
    head = f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}, {seconds / 60:.0f} min."
    probe = [r for r in rows if r["table"] == "probe"]
    methods = list(dict.fromkeys(r["method"] for r in probe))
    table = [
        "| features | probe, all labels | 20 labels/class | 5 labels/class |",
        "|---|---|---|---|",
    ]
    for m in methods:
        table.append(
            f"| {m} | "
            + " | ".join(cell(probe, method=m, shots=shot_name(s)) for s in SHOTS)
            + " |"
        )
    rand_all = mean_std(probe, method="random init", shots="all")[0]
    rand_5 = mean_std(probe, method="random init", shots="5/class")[0]
    checks = [
        f"- {'✅' if rand_all <= 85 else '❌'} not saturated: random-init probe {rand_all:.1f}% (bar ≤ 85%)."
    ]
    losses = [m for m in ("comodo", "infonce", "l2")]
    for m in losses:
        g_all = mean_std(probe, method=m, shots="all")[0] - rand_all
        g_5 = mean_std(probe, method=m, shots="5/class")[0] - rand_5
        ok = g_all >= 10 and g_5 >= 20
        checks.append(f"- {'✅' if ok else '❌'} {m} vs random init: {g_all:+.1f} (all labels, bar ≥ +10), "
                      f"{g_5:+.1f} (5/class, bar ≥ +20).")  # fmt: skip
    best5 = max(mean_std(probe, method=m, shots="5/class")[0] for m in losses)
    c5 = mean_std(probe, method="comodo", shots="5/class")[0]
    checks.append(f"- {'✅' if best5 - c5 <= 2 else '❌'} COMODO at 5/class {c5:.1f} vs best of the three "
                  f"{best5:.1f} (bar: within 2 points).")  # fmt: skip
    ft = [r for r in rows if r["table"] == "finetune"]
    ft_table = ["| labels used | COMODO-pretrained | from scratch |", "|---|---|---|"]
    for fraction in (0.01, 0.1, 1.0):
        n = next(r["labels"] for r in ft if r["fraction"] == fraction)
        ft_table.append(f"| {fraction:.0%} ({n} windows) | {cell(ft, method='comodo', fraction=fraction)} | "
                        f"{cell(ft, method='scratch', fraction=fraction)} |")  # fmt: skip
    tr = [r for r in rows if r["table"] == "transfer"]
    tr_table = [
        "| real IMU set (10% of labels) | COMODO-pretrained | from scratch |",
        "|---|---|---|",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in tr):
        n = next(r["labels"] for r in tr if r["dataset"] == ds)
        tr_table.append(f"| {ds} ({n} labelled windows) | {cell(tr, dataset=ds, method='comodo-pretrained')} | "
                        f"{cell(tr, dataset=ds, method='scratch')} |")  # fmt: skip
    qu = [r for r in rows if r["table"] == "queue"]
    q_table = ["| queue size | probe, all labels | 5 labels/class |", "|---|---|---|"]
    for size in args.queue_sizes:
        q_table.append(
            f"| {size} | {cell(qu, queue_size=size, shots='all')} | {cell(qu, queue_size=size, shots='5/class')} |"
        )
    intro = (f"Synthetic paired egocentric data ({paired.source}; {n_train} training / {n_test} held-out "
             f"clips, subjects {', '.join(map(str, TEST_SUBJECTS))} held out), seeds "
             f"{', '.join(map(str, args.seeds))}, {args.epochs} epochs of label-free pre-training. "
             "Top-1 % on held-out subjects, mean ± std over seeds.")  # fmt: skip
    update_section(ROOT / "BENCHMARKS.md", "crossmodal", "\n".join([
        "## Cross-modal distillation: video teacher → IMU student, no labels", "", head, intro, "",
        *table, "", *checks, "", "Raw rows: `benchmarks/results/crossmodal.json`."]))  # fmt: skip
    update_section(ROOT / "BENCHMARKS.md", "crossmodal-transfer", "\n".join([
        "## Cross-modal pre-training, then fine-tuning with few labels", "", head, "",
        "Paired synthetic task, held-out subjects, fine-tuned end to end "
        f"({args.finetune_epochs} epochs):", "", *ft_table, "",
        "Transfer to real IMU recordings (the synthetic pre-training never saw them):", "", *tr_table]))  # fmt: skip
    update_section(ROOT / "BENCHMARKS.md", "crossmodal-queue", "\n".join([
        "## COMODO queue-size ablation", "", head, "",
        f"The paired training set has {n_train} clips, so queues longer than that hold repeats of "
        "the same (fixed) teacher embeddings.", "", *q_table]))  # fmt: skip


if __name__ == "__main__":
    main()
