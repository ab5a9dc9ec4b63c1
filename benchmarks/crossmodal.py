"""Cross-modal distillation, video -> IMU, without labels: does the IMU student learn activities?

Data: the synthetic paired egocentric set (``edgedistill.data.egocentric``: 10 subjects x 7
activities x 36 clips of 2 s; video 64x64 at 10 fps, IMU 6-axis at 50 Hz), subject-disjoint:
subjects 7, 8, 9 held out (756 test clips). As in COMODO, paired video + IMU is cheap to record
and labels are not: pre-training uses every clip of the 7 training subjects WITHOUT labels
(1,764 clips), and the labelled set is 12 clips per subject and activity of those subjects
(588 clips). Probes, the supervised student and fine-tuning use only the labelled set; a last
probe column uses the labels of the whole pool, for comparison.

Teacher: ImageNet MobileNetV2 per frame at 64 px, mid-level features (``features[:11]``, 64
channels) pooled to a 4x4 grid, + temporal statistics; its target for the student is the motion
blocks (std, |frame-to-frame difference|, trend), standardised and PCA-reduced to 128
dimensions on the pre-training clips. Student: ``imu_cnn`` (widths 32/64/128), 20 epochs of
pre-training without labels.

COMODO's temperatures are tuned on a validation subject (subject 6, never a test subject): each
(teacher, student) pair pre-trains on subjects 0-5 and is scored by the 5-labels-per-class probe
on subject 6; the best pair is the "comodo" row, next to the paper's 0.1 / 0.05.

Rows, per seed: linear probe (logistic regression) on frozen student features with all labels
and with 5 and 20 labels per class, for COMODO, InfoNCE, normalised L2, the random-init student
and the supervised student (cross-entropy on the labelled set), plus the teacher's own probe
with mean-only pooling vs motion-aware pooling. Also: fine-tuning with 1 / 10 / 100 % of the
labelled set (COMODO-pretrained vs scratch), transfer to real IMU (seglearn smartwatch,
leave-subjects-out; BasicMotions) with 10 % of labels, and a COMODO queue-size ablation.

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
VALIDATION_SUBJECT = 6  # COMODO's temperatures are chosen on it, never on a test subject
CLIPS_PER_ACTIVITY = 36  # per subject: the unlabelled pre-training pool
LABELLED_PER_ACTIVITY = 12  # per subject: the labelled set (a subset of the pool)
STUDENT = {"in_channels": 6, "widths": [32, 64, 128]}
SHOTS = (None, 20, 5)
POOL_SHOTS = "all, whole pool"  # the probe column that uses every pre-training clip's label
PAPER_TEMPERATURES = (0.1, 0.05)
TEMPERATURES = ((0.05, 0.1), PAPER_TEMPERATURES, (0.1, 0.1), (0.2, 0.2), (0.2, 0.1), (0.5, 0.5))
BASELINES = {
    "infonce": LossTermSpec("infonce", 1.0, temperature=0.1, queue_size=0),
    "l2": LossTermSpec("l2", 1.0),
}


def comodo_term(temperatures: tuple[float, float], queue_size: int = 4096) -> LossTermSpec:
    """COMODO with (teacher, student) temperatures."""
    teacher, student = temperatures
    return LossTermSpec(
        "comodo", 1.0, temperature=teacher, student_temperature=student, queue_size=queue_size
    )


def shot_name(k: int | None) -> str:
    return "all" if k is None else f"{k}/class"


class Split:
    """Clip indices: ``pool`` (training subjects, pre-training without labels), ``labelled``
    (the labelled subset of the pool) and ``test`` (held-out subjects), plus the normalised
    IMU windows ``x`` and labels ``y`` of every clip."""

    def __init__(self, paired: Any, held_out: tuple[int, ...], test: Any = None) -> None:
        self.pool, held_out_clips = paired.subject_split(held_out)
        self.test = held_out_clips if test is None else test
        clip_in_cell = paired.recordings % CLIPS_PER_ACTIVITY
        self.labelled = self.pool[clip_in_cell[self.pool] < LABELLED_PER_ACTIVITY]
        norm = ImuNormalization.from_windows(paired.imu[self.pool])
        self.x, self.y = norm.apply(paired.imu), paired.labels


def probe_rows(
    method: str, seed: int, model: torch.nn.Module, split: Split
) -> list[dict[str, Any]]:
    """Linear-probe accuracy on the held-out subjects: labelled set with all labels and k per
    class (k-shot: the label subset's seed is the run's seed, so three seeds also average three
    subsets), then the whole pool's labels."""
    feats = extract_features(model, split.x)
    return probe_feature_rows(method, seed, feats, split)


def probe_feature_rows(
    method: str, seed: int, feats: np.ndarray, split: Split
) -> list[dict[str, Any]]:
    """:func:`probe_rows` for precomputed features of every clip."""
    rows = []
    y, test = split.y, split.test
    for k in SHOTS:
        result = linear_probe(feats[split.labelled], y[split.labelled], feats[test], y[test],
                              labels_per_class=k, seed=seed)  # fmt: skip
        rows.append({"table": "probe", "method": method, "seed": seed, "shots": shot_name(k),
                     "value": round(result.accuracy, 2)})  # fmt: skip
    result = linear_probe(feats[split.pool], y[split.pool], feats[test], y[test], seed=seed)
    rows.append({"table": "probe", "method": method, "seed": seed, "shots": POOL_SHOTS,
                 "value": round(result.accuracy, 2)})  # fmt: skip
    return rows


def select_temperatures(paired: Any, emb: Any, args: argparse.Namespace,
                        console: Console) -> tuple[tuple[float, float], list[dict[str, Any]]]:  # fmt: skip
    """COMODO (teacher, student) temperatures by the 5-shot probe on the validation subject.

    Pre-trains on the pool minus the validation subject (whose PCA target basis is refitted
    without it) and probes that subject's clips with 5 labels per class of the others."""
    val = np.flatnonzero(paired.subjects == VALIDATION_SUBJECT)
    split = Split(paired, (*TEST_SUBJECTS, VALIDATION_SUBJECT), test=val)
    targets = teacher_targets(emb, split.pool)
    rows = []
    for pair in TEMPERATURES:
        for seed in args.seeds:
            model = build_imu_student({**STUDENT, "num_classes": len(paired.classes)}, seed)
            pretrain_student(model, split.x[split.pool], targets[split.pool], comodo_term(pair),
                             epochs=args.epochs, seed=seed)  # fmt: skip
            feats = extract_features(model, split.x)
            result = linear_probe(feats[split.labelled], split.y[split.labelled], feats[val],
                                  split.y[val], labels_per_class=5, seed=seed)  # fmt: skip
            rows.append({"table": "temperature", "teacher": pair[0], "student": pair[1],
                         "seed": seed, "shots": "5/class", "value": round(result.accuracy, 2)})  # fmt: skip
        console.print(f"temperatures {pair}: validation 5/class "
                      f"{mean_std(rows, teacher=pair[0], student=pair[1])[0]:.1f}")  # fmt: skip
    best = max(TEMPERATURES, key=lambda p: mean_std(rows, teacher=p[0], student=p[1])[0])
    return best, rows


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
    parser.add_argument("--workers", type=int, default=2, help="processes generating the data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    started = time.perf_counter()

    # ---- data and teacher ------------------------------------------------------------------
    config = EgocentricConfig(frame_size=64, clips_per_activity=CLIPS_PER_ACTIVITY)
    paired = load_or_generate_egocentric(config, args.work / "cache", workers=args.workers)
    split = Split(paired, TEST_SUBJECTS)
    x, y = split.x, split.y
    k = len(paired.classes)
    t0 = time.perf_counter()
    emb = encode_video_teacher(paired, args.work / "cache")
    console.print(f"teacher embeddings {emb.values.shape} in {time.perf_counter() - t0:.0f} s")
    targets = teacher_targets(emb, split.pool)
    rows: list[dict[str, Any]] = []
    teacher_rows = (
        ("teacher: mean pooling", ("mean",)),
        ("teacher: motion-aware pooling", ("mean", "std", "absdiff", "trend")),
        ("teacher: motion blocks (the distillation target)", ("std", "absdiff", "trend")),
    )
    for name, stats in teacher_rows:
        feats = emb.blocks(stats)
        for seed in args.seeds:
            rows += probe_feature_rows(name, seed, feats, split)

    # ---- COMODO temperatures, chosen on the validation subject -------------------------------
    tuned, temperature_rows = select_temperatures(paired, emb, args, console)
    rows += temperature_rows
    losses = {
        "comodo": comodo_term(tuned),
        f"comodo (paper temps {PAPER_TEMPERATURES[0]}/{PAPER_TEMPERATURES[1]})": comodo_term(
            PAPER_TEMPERATURES
        ),
        **BASELINES,
    }

    # ---- students: random init, supervised, cross-modal losses ------------------------------
    cfg = {**STUDENT, "num_classes": k}
    lab = split.labelled
    pretrained: dict[tuple[str, int], torch.nn.Module] = {}
    for seed in args.seeds:
        rows += probe_rows("random init", seed, build_imu_student(cfg, seed), split)
        sup = build_imu_student(cfg, seed)
        finetune_classifier(sup, x[lab], torch.as_tensor(y[lab]), k, epochs=args.epochs, seed=seed)
        rows += probe_rows("supervised (labelled set)", seed, sup, split)
        for method, term in losses.items():
            model = build_imu_student(cfg, seed)
            result = pretrain_student(
                model, x[split.pool], targets[split.pool], term, epochs=args.epochs, seed=seed
            )
            rows += probe_rows(method, seed, model, split)
            pretrained[(method, seed)] = model
            console.print(f"seed {seed} {method:<30} probe(all) {rows[-4]['value']:.1f}  "
                          f"5/class {rows[-2]['value']:.1f}  ({result.seconds:.0f} s)")  # fmt: skip

    # ---- fine-tuning with a fraction of the labelled set -----------------------------------
    import copy

    y_test = y[split.test]
    for seed in args.seeds:
        for fraction in (0.01, 0.1, 1.0):
            idx = lab[subsample_labels(y[lab], fraction, seed=seed)]
            for method in ("comodo", "scratch"):
                model = (copy.deepcopy(pretrained[("comodo", seed)]) if method == "comodo"
                         else build_imu_student(cfg, seed))  # fmt: skip
                finetune_classifier(model, x[idx], torch.as_tensor(y[idx]), k,
                                    epochs=args.finetune_epochs, seed=seed)  # fmt: skip
                rows.append({"table": "finetune", "method": method, "seed": seed,
                             "fraction": fraction, "labels": len(idx),
                             "value": round(topk_accuracy(predict_logits(model, x[split.test]), y_test), 2)})  # fmt: skip

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
            model = build_imu_student(cfg, seed)
            pretrain_student(model, x[split.pool], targets[split.pool], comodo_term(tuned, size),
                             epochs=args.epochs, seed=seed)  # fmt: skip
            for r in probe_rows(f"queue {size}", seed, model, split):
                rows.append({**r, "table": "queue", "queue_size": size})

    write_and_report(args, rows, paired, split, tuned, time.perf_counter() - started)


def write_and_report(args: argparse.Namespace, rows: list[dict[str, Any]], paired: Any,
                     split: Split, tuned: tuple[float, float], seconds: float) -> None:  # fmt: skip
    n_pool, n_lab, n_test = len(split.pool), len(split.labelled), len(split.test)
    doc = write_results(
        ROOT / "benchmarks" / "results" / "crossmodal.json", rows,
        data={"source": paired.source, "pretrain_clips_unlabelled": n_pool,
              "labelled_clips": n_lab, "test_clips": n_test,
              "test_subjects": list(TEST_SUBJECTS), "validation_subject": VALIDATION_SUBJECT,
              "classes": list(paired.classes)},
        student=STUDENT, epochs=args.epochs, comodo_temperatures=list(tuned),
        seconds=round(seconds),
    )  # fmt: skip
    env = doc["environment"]
    head = f"`{doc['command']}` — {env['cpu']}, {env['cpu_count']} cores, {doc['date']}, {seconds / 60:.0f} min."
    probe = [r for r in rows if r["table"] == "probe"]
    methods = list(dict.fromkeys(r["method"] for r in probe))
    table = [
        f"| features | probe, all {n_lab} labels | 20 labels/class | 5 labels/class "
        f"| all {n_pool} pool labels |",
        "|---|---|---|---|---|",
    ]
    for m in methods:
        table.append(
            f"| {m} | "
            + " | ".join(
                cell(probe, method=m, shots=s) for s in (*map(shot_name, SHOTS), POOL_SHOTS)
            )
            + " |"
        )
    temp = [r for r in rows if r["table"] == "temperature"]
    t_table = ["| teacher τ | student τ | validation probe, 5 labels/class |", "|---|---|---|"]
    for t_teacher, t_student in TEMPERATURES:
        mark = " (chosen)" if (t_teacher, t_student) == tuned else ""
        t_table.append(f"| {t_teacher} | {t_student}{mark} | "
                       f"{cell(temp, teacher=t_teacher, student=t_student)} |")  # fmt: skip
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
    q_table = [f"| queue size | probe, all {n_lab} labels | 5 labels/class |", "|---|---|---|"]
    for size in args.queue_sizes:
        q_table.append(
            f"| {size} | {cell(qu, queue_size=size, shots='all')} | {cell(qu, queue_size=size, shots='5/class')} |"
        )
    intro = (f"Synthetic paired egocentric data ({paired.source}): pre-training without labels on "
             f"all {n_pool} clips of the 7 training subjects; the labelled set is {n_lab} of them "
             f"({LABELLED_PER_ACTIVITY} per subject and activity); {n_test} test clips of the held-out "
             f"subjects {', '.join(map(str, TEST_SUBJECTS))}. Seeds: {', '.join(map(str, args.seeds))}; "
             f"{args.epochs} epochs of label-free pre-training. Top-1 % on held-out subjects, "
             "mean ± std over seeds. Probes and the supervised student use the labelled set; the "
             "last column probes with the labels of the whole pool. COMODO's temperatures "
             f"(teacher {tuned[0]} / student {tuned[1]}) were chosen on validation subject "
             f"{VALIDATION_SUBJECT}, pre-training on subjects 0–5:")  # fmt: skip
    update_section(ROOT / "BENCHMARKS.md", "crossmodal", "\n".join([
        "## Cross-modal distillation: video teacher → IMU student, no labels", "", head, intro, "",
        *table, "", *checks, "", "COMODO temperature selection (validation subject, mean ± std over seeds):",
        "", *t_table, "", "Raw rows: `benchmarks/results/crossmodal.json`."]))  # fmt: skip
    update_section(ROOT / "BENCHMARKS.md", "crossmodal-transfer", "\n".join([
        "## Cross-modal pre-training, then fine-tuning with few labels", "", head, "",
        "Paired synthetic task, held-out subjects, fine-tuned end to end "
        f"({args.finetune_epochs} epochs):", "", *ft_table, "",
        "Transfer to real IMU recordings (the synthetic pre-training never saw them):", "", *tr_table]))  # fmt: skip
    update_section(ROOT / "BENCHMARKS.md", "crossmodal-queue", "\n".join([
        "## COMODO queue-size ablation", "", head, "",
        f"The pre-training pool has {n_pool} clips, so queues longer than that hold repeats of "
        "the same (fixed) teacher embeddings.", "", *q_table]))  # fmt: skip


if __name__ == "__main__":
    main()
