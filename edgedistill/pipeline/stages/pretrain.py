"""The ``pretrain`` stage: label-free pre-training of the student before ``distill``.

``method: crossmodal`` (COMODO, InfoNCE or normalised L2) against a frozen video teacher of the
paired stream. Steps (:mod:`edgedistill.crossmodal_chain`): the teacher's clip embeddings
(cached in ``cache/``), the target (motion statistics, standardised and PCA-reduced on the
training clips only), pre-training on every training window, labelled or not (resumable per
epoch), and linear probes of the frozen features — the numbers that say whether pre-training
helped.

``method: dino`` (Caron et al., ICCV 2021; :func:`~edgedistill.distill.dino_pretrain.pretrain_dino`):
the student's backbone against its own EMA teacher on two augmented views of every training
sample (image crops/flips/contrast, or IMU rotations/scaling/shift/jitter), resumable per epoch;
linear probes of the frozen features before and after say whether it helped.

The distill stage starts from ``student.safetensors``. Without a ``pretrain`` section the
stage records ``enabled: false`` and costs nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.config import PretrainConfig
from edgedistill.crossmodal_chain import encode_video_teacher, pretrain_student, teacher_targets
from edgedistill.distill.dino_pretrain import Augment, augment_image, augment_imu, pretrain_dino
from edgedistill.distill.objective import LossTermSpec
from edgedistill.errors import RecipeError
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.distill import build_student
from edgedistill.progress import progress_bar
from edgedistill.students.io import save_model

PROBE_SHOTS = (None, 20, 5)
"""Linear probes on all labels, then 20 and 5 labelled windows per class."""


def stage_pretrain(ctx: RunContext) -> dict[str, Any]:
    """Pre-train the student without labels: on the paired stream's teacher embeddings
    (``method: crossmodal``) or by DINO self-distillation (``method: dino``)."""
    recipe = ctx.recipe
    cfg = recipe.pretrain
    if cfg is not None and cfg.method == "dino":
        return _stage_dino(ctx, cfg)
    teacher = recipe.teacher.video if recipe.teacher is not None else None
    # without the DINO fields, so cross-modal fingerprints stay those of earlier versions
    dumped = None if cfg is None else cfg.model_dump(mode="json", exclude={"method", "dino"})
    inputs = {
        "pretrain": dumped,
        "teacher": None if teacher is None else teacher.model_dump(mode="json"),
        "student": recipe.student.model_dump(mode="json"),
        "seed": recipe.seed,
        "data": ctx.data_sha256 if cfg is not None else None,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        if cfg is None or teacher is None:
            return StageOutcome([], {"enabled": False})
        task = ctx.task
        split = task.paired
        if split is None:
            raise RecipeError("pretrain needs paired data (data.source: paired)")
        windows = split.windows
        with progress_bar(ctx.console, "pretrain", len(windows)) as advance:
            embeddings = encode_video_teacher(
                windows,
                ctx.out / "cache",
                backbone=teacher.backbone,
                image_size=teacher.image_size,
                layer=teacher.layer,
                grid=teacher.grid,
                progress=lambda n: advance(n, "video teacher embeddings"),
            )
        train_idx, test_idx = split.train_index, split.test_index
        targets = teacher_targets(
            embeddings, train_idx, stats=tuple(teacher.target_stats), pca_dim=teacher.pca_dim
        )[train_idx]
        model = build_student(ctx)
        term = LossTermSpec(**cfg.term.model_dump())
        steps = cfg.epochs * -(-len(targets) // cfg.batch_size)
        with progress_bar(ctx.console, "pretrain", steps) as advance:
            last = [0]

            def on_step(step: int, total: int, text: str) -> None:
                advance(step - last[0], text)
                last[0] = step

            result = pretrain_student(
                model,
                task.train_inputs,
                targets,
                term,
                epochs=cfg.epochs,
                seed=recipe.seed,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                checkpoint_path=stage_dir / "checkpoint.pt",
                fingerprint=fingerprint,
                progress=on_step,
            )
        if result.resumed_from_epoch:
            ctx.console.print(f"  resumed pretrain from epoch {result.resumed_from_epoch}")
        outputs = save_model(model, recipe.student.arch, stage_dir, "student")
        probes = _probes(ctx, model, embeddings.values[train_idx], embeddings.values[test_idx])
        return StageOutcome(
            outputs,
            {
                "enabled": True,
                "term": term.name,
                "epochs": len(result.history),
                "windows": len(targets),
                **probes,
            },
        )

    return ctx.run_stage("pretrain", inputs, body)


def _probes(
    ctx: RunContext, model: Any, teacher_train: np.ndarray, teacher_test: np.ndarray
) -> dict[str, Any]:
    """Linear probes (held-out groups) of the teacher's embeddings and the student's frozen
    features, on the labelled training windows: all labels, 20 and 5 per class."""
    from edgedistill.probe import extract_features, linear_probe

    task, seed = ctx.task, ctx.recipe.seed
    labelled = task.labelled
    y_train = task.y_train[labelled]
    teacher = linear_probe(teacher_train[labelled], y_train, teacher_test, task.y_test).accuracy
    features_train = extract_features(model, task.train_inputs)[labelled]
    features_test = extract_features(model, task.test_inputs)
    fewest = int(np.bincount(y_train, minlength=task.num_classes).min())
    student: dict[str, float] = {}
    for shots in PROBE_SHOTS:
        if shots is not None and shots > fewest:  # k-shot needs k windows of every class
            continue
        name = "all labels" if shots is None else f"{shots} per class"
        result = linear_probe(
            features_train, y_train, features_test, task.y_test, labels_per_class=shots, seed=seed
        )
        student[name] = round(result.accuracy, 2)
    return {"teacher_probe_top1": round(teacher, 2), "student_probe_top1": student}


def dino_augment(task: Any) -> tuple[Augment, str]:
    """The DINO view augmentation for the task's input, and its name.

    Raises:
        RecipeError: a modality without one (audio, text).
    """
    shape = tuple(task.input.shape)
    if task.modality == "image" and len(shape) == 3:
        return augment_image, "image"
    if task.modality == "imu" and len(shape) == 2:
        if shape[0] % 3 == 0:  # rotate accelerometer/gyroscope triples together
            return augment_imu, "imu"
        return functools.partial(augment_imu, rotate=False), "imu (no rotation)"
    raise RecipeError(
        f"pretrain.method: dino has view augmentations for image [C, H, W] and imu [C, T] "
        f"inputs, not {task.modality} {list(shape)}; remove the pretrain section"
    )


def _stage_dino(ctx: RunContext, cfg: PretrainConfig) -> dict[str, Any]:
    """DINO-pre-train the student's backbone on every training sample, without labels."""
    recipe = ctx.recipe
    inputs = {
        "pretrain": cfg.model_dump(mode="json", exclude={"term"}),
        "student": recipe.student.model_dump(mode="json"),
        "seed": recipe.seed,
        "data": ctx.data_sha256,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        task = ctx.task
        augment, augment_name = dino_augment(task)
        x = task.train_inputs
        if len(x) < cfg.batch_size:
            raise RecipeError(
                f"pretrain.batch_size {cfg.batch_size} exceeds the {len(x)} training samples; "
                "lower it"
            )
        model = build_student(ctx)
        before = _feature_probe(ctx, model)
        # A checkpoint of other inputs (another student, say) must not be resumed.
        checkpoint = stage_dir / f"dino-checkpoint-{fingerprint[:16]}.pt"
        for stale in stage_dir.glob("dino-checkpoint-*.pt"):
            if stale != checkpoint:
                stale.unlink()
        steps = cfg.epochs * (len(x) // cfg.batch_size)
        with progress_bar(ctx.console, "pretrain", steps) as advance:
            last = [0]

            def on_step(step: int, total: int, text: str) -> None:
                advance(step - last[0], text)
                last[0] = step

            result = pretrain_dino(
                model,
                x,
                cfg.dino_settings(recipe.seed),
                augment=augment,
                checkpoint_path=checkpoint,
                progress=on_step,
            )
        if result.resumed_from_epoch:
            ctx.console.print(f"  resumed pretrain from epoch {result.resumed_from_epoch}")
        outputs = save_model(model, recipe.student.arch, stage_dir, "student")
        after = _feature_probe(ctx, model)
        final = result.history[-1]
        collapse = ("loss", "teacher_entropy", "teacher_kl_uniform", "teacher_std")
        return StageOutcome(
            outputs,
            {
                "enabled": True,
                "method": "dino",
                "term": "dino",
                "epochs": len(result.history),
                "samples": len(x),
                "augment": augment_name,
                **{k: round(final[k], 4) for k in collapse},
                **({} if after is None else {"student_probe_top1": {"all labels": after}}),
                **({} if before is None else {"random_init_probe_top1": before}),
            },
        )

    return ctx.run_stage("pretrain", inputs, body)


def _feature_probe(ctx: RunContext, model: Any) -> float | None:
    """Top-1 of a linear probe of the frozen features on the labelled training samples, on the
    held-out split; None without two labelled classes."""
    from edgedistill.probe import extract_features, linear_probe

    task = ctx.task
    labelled = task.labelled
    if len(np.unique(task.y_train[labelled])) < 2:
        return None
    train = extract_features(model, task.train_inputs)[labelled]
    test = extract_features(model, task.test_inputs)
    result = linear_probe(train, task.y_train[labelled], test, task.y_test, seed=ctx.recipe.seed)
    return round(result.accuracy, 2)
