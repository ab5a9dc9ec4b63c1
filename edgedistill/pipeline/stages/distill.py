"""The ``distill`` stage: train the student from the frozen teacher's cached outputs.

Also the teacher-cache helpers and the training loop wrapper the ``prune`` stage's recovery
fine-tuning shares. A recipe without a teacher card trains with label and self-distillation
terms only; after a ``pretrain`` stage the student starts from the pre-trained weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.markup import escape
from torch import nn

from edgedistill.artifacts import atomic_write_json, atomic_write_text
from edgedistill.distill.layered import NUM_IMAGE_TRANSFORMS, NUM_IMU_TRANSFORMS
from edgedistill.distill.lsskd import lsskd_student
from edgedistill.distill.objective import TEACHER_TERMS, LossTermSpec
from edgedistill.distill.terms import TEACHER_LOGITS, TERMS
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.early_exits import exit_logits
from edgedistill.errors import RecipeError
from edgedistill.faults import maybe_die
from edgedistill.metrics import count_macs, count_params, predict_logits
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.progress import progress_bar
from edgedistill.students import build_model
from edgedistill.students.io import save_model
from edgedistill.students.multi_exit import MultiExitStudent
from edgedistill.teachers import cached_teacher_logits, teacher_cache_key

__all__ = ["stage_distill", "teacher_features_for", "teacher_logits_for", "train_in_stage"]


def teacher_logits_for(ctx: RunContext, images: Any, split: str) -> tuple[Any, bool]:
    """Cached teacher logits over ``images`` (computed once per content hash)."""
    import hashlib

    data_hash = hashlib.sha256(images.tobytes()).hexdigest()
    key = teacher_cache_key(
        teacher_sha256=ctx.teacher.weights_sha256,
        data_sha256=data_hash,
        transform={"normalization": ctx.teacher_input.normalization()},
        taps=["logits"],
    )
    with progress_bar(ctx.console, "teacher", len(images)) as advance:
        return cached_teacher_logits(
            ctx.teacher,
            images,
            ctx.teacher_input.prepare,
            key=key,
            cache_dir=ctx.out / "cache",
            batch_size=ctx.recipe.distill.teacher_batch_size,
            on_batch=lambda n: advance(n, f"{split} logits"),
        )


LAYERED_TRANSFORM_COUNT = {"none": 1, "rotate4": NUM_IMAGE_TRANSFORMS, "imu": NUM_IMU_TRANSFORMS}


def teacher_feature_requests(settings: TrainSettings) -> dict[str, tuple[int | None, str]]:
    """The cached teacher layers the weighted terms read (``needs`` teacher_features, their
    ``teacher_taps()``): tap -> (the term's ``hint_size`` pooling, the term's name).

    Raises:
        RecipeError: two terms read one layer pooled to different sizes.
    """
    requests: dict[str, tuple[int | None, str]] = {}
    for spec in settings.loss_terms():
        if "teacher_features" not in spec.config.needs or spec.weight <= 0:
            continue
        pool = getattr(spec.config, "hint_size", None)
        for tap in TERMS.get(spec.name)(spec.config).teacher_taps():
            if tap in requests and requests[tap][0] != pool:
                other, size = requests[tap][1], requests[tap][0]
                raise RecipeError(
                    f"distill.terms: {other} and {spec.name} read teacher layer '{tap}' pooled "
                    f"to {size} and {pool}; give both the same hint_size"
                )
            requests[tap] = (pool, spec.name)
    return requests


def teacher_features_for(
    ctx: RunContext, images: Any, tap: str, hint_size: int | None, *, term: str = "fitnets"
) -> np.ndarray:
    """Cached teacher features of layer ``tap`` over ``images`` (FitNets hints, AT and RKD
    teacher layers; ``term`` names the term asking, in errors).

    Maps are average-pooled to ``hint_size`` (per spatial/temporal axis) before caching, which
    keeps the memory-mapped cache small (e.g. 10k × 64 × 7 × 7 float32 = 125 MB).
    """
    import hashlib

    from edgedistill.teachers.image import tap_features

    if tap not in dict(ctx.teacher.model.named_modules()):
        layers = [name for name, _ in ctx.teacher.model.named_children()]
        raise RecipeError(
            f"distill.terms: {term} teacher_tap '{tap}' is not a layer of teacher "
            f"{ctx.teacher.name} (top-level layers: {', '.join(layers)}; "
            "use dotted names such as stages.1)"
        )

    def features(x: torch.Tensor) -> torch.Tensor:
        feat = tap_features(ctx.teacher.model, x, [tap])[tap]
        if hint_size is not None and feat.dim() == 4:
            feat = F.adaptive_avg_pool2d(feat, hint_size)
        elif hint_size is not None and feat.dim() == 3:
            feat = F.adaptive_avg_pool1d(feat, hint_size)
        return feat

    key = teacher_cache_key(
        teacher_sha256=ctx.teacher.weights_sha256,
        data_sha256=hashlib.sha256(images.tobytes()).hexdigest(),
        transform={"normalization": ctx.teacher_input.normalization(), "pool": hint_size},
        taps=[tap],
    )
    with progress_bar(ctx.console, "teacher", len(images)) as advance:
        cached, _ = cached_teacher_logits(
            features,
            images,
            ctx.teacher_input.prepare,
            key=key,
            cache_dir=ctx.out / "cache",
            batch_size=ctx.recipe.distill.teacher_batch_size,
            on_batch=lambda n: advance(n, f"{tap} features"),
            prefix="teacher-features",
        )
    return cached


def train_settings(ctx: RunContext, epochs: int, lr: float) -> TrainSettings:
    cfg = ctx.recipe.distill
    return TrainSettings(
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        seed=ctx.recipe.seed,
        terms=tuple(LossTermSpec(**term.model_dump()) for term in cfg.terms),
        schedule=cfg.schedule,
        grad_clip=cfg.grad_clip,
        early_stopping_patience=cfg.early_stopping_patience,
    )


def train_in_stage(
    ctx: RunContext,
    model: nn.Module,
    settings: TrainSettings,
    stage_dir: Path,
    fingerprint: str,
    label: str,
) -> list[dict[str, float]]:
    task = ctx.task
    x_train = task.train_inputs
    y_train = torch.as_tensor(task.y_train)
    teacher_logits = None
    if any(t.name in TEACHER_TERMS and t.weight > 0 for t in settings.loss_terms()):
        teacher_logits, _ = teacher_logits_for(ctx, task.x_train, "train")
    teacher_features = {
        tap: teacher_logits_for(ctx, task.x_train, "train")[0]
        if tap == TEACHER_LOGITS  # rkd's teacher_tap: logits
        else teacher_features_for(ctx, task.x_train, tap, pool, term=term)
        for tap, (pool, term) in teacher_feature_requests(settings).items()
    }
    x_val, y_val = ctx.x_test, ctx.y_test  # logged only, never used to pick weights
    if settings.early_stopping_patience is not None:
        # Early stopping picks an epoch, so it must look at data held out of training, not
        # at the test split the report's accuracy comes from.
        # Only labelled images can judge accuracy (-1 marks unlabelled ones).
        labelled = np.flatnonzero(task.labelled)
        if len(labelled) < 2:
            raise RecipeError(
                "distill.early_stopping_patience needs labelled training images to hold out "
                "(data.use_labels is false)"
            )
        order = labelled[np.random.default_rng(ctx.recipe.seed + 2).permutation(len(labelled))]
        n_val = max(1, round(ctx.recipe.distill.validation_fraction * len(labelled)))
        val_idx = np.sort(order[:n_val])
        train_idx = np.setdiff1d(np.arange(len(y_train)), val_idx)
        x_val, y_val = x_train[val_idx], task.y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        if teacher_logits is not None:
            teacher_logits = np.asarray(teacher_logits)[train_idx]
        teacher_features = {k: np.asarray(v)[train_idx] for k, v in teacher_features.items()}
    steps = settings.epochs * -(-len(y_train) // settings.batch_size)

    def evaluate(m: nn.Module) -> float:
        return task.score(predict_logits(m, x_val), y_val)

    with progress_bar(ctx.console, label, steps) as advance:
        last = [0]

        def on_step(step: int, total: int, text: str) -> None:
            advance(step - last[0], text)
            last[0] = step
            maybe_die(f"{label}_batch", step)  # tests only

        result = train_student(
            model,
            x_train,
            y_train,
            settings,
            teacher_logits=teacher_logits,
            teacher_features=teacher_features,
            evaluate=evaluate,
            checkpoint_path=stage_dir / "checkpoint.pt",
            fingerprint=fingerprint,
            log_csv=stage_dir / "train_log.csv",
            tensorboard_dir=stage_dir / "tensorboard",
            progress=on_step,
            warn=lambda message: ctx.console.print(
                f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True
            ),
        )
    if result.resumed_from_epoch:
        ctx.console.print(f"  resumed {label} from epoch {result.resumed_from_epoch}")
    return result.history


def build_student(ctx: RunContext) -> nn.Module:
    """The recipe's student for this task, initialised from the recipe seed."""
    task, recipe = ctx.task, ctx.recipe
    config: dict[str, Any] = {"num_classes": task.num_classes}
    if task.input.dtype == "float32" and len(task.input.shape) >= 2:
        config["in_channels"] = task.input.shape[0]
    config.update(recipe.student.config)
    torch.manual_seed(recipe.seed)
    return build_model(recipe.student.arch, config)


def stage_distill(ctx: RunContext) -> dict[str, Any]:
    """Train the student: the recipe's loss terms over cached teacher outputs (if any), from
    the pre-trained weights when a ``pretrain`` stage ran."""
    recipe = ctx.recipe
    pretrained = ctx.manifests.get("pretrain", {}).get("outputs", {})
    inputs = {
        "data": ctx.data_sha256,
        "teacher": ctx.teacher.weights_sha256 if ctx.has_teacher else None,
        "teacher_normalization": ctx.teacher_input.normalization(),
        "student": recipe.student.model_dump(mode="json"),
        "distill": recipe.distill.model_dump(mode="json"),
        "seed": recipe.seed,
        **{f"pretrain/{k}": v for k, v in pretrained.items()},
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        task = ctx.task
        shape = task.input.shape
        student = build_student(ctx)
        if "student.safetensors" in pretrained:
            from edgedistill.students.io import load_model

            student.load_state_dict(load_model(ctx.stage_dir("pretrain"), "student").state_dict())
        layered = next((t for t in recipe.distill.terms if t.name == "layered"), None)
        lsskd = next((t for t in recipe.distill.terms if t.name == "lsskd"), None)
        trained: nn.Module = student
        if lsskd is not None:  # joint auxiliary heads, plain main head (LSSKD / HSAKD)
            trained = lsskd_student(student, lsskd.transforms)
        elif layered is not None:
            # Layered self-distillation trains auxiliary exits on the student's stages; the
            # chain continues with the plain student (exits removed), see MultiExitStudent.
            trained = MultiExitStudent(
                student, num_transforms=LAYERED_TRANSFORM_COUNT[layered.transforms]
            )
        teacher_metrics: dict[str, Any] = {}
        if ctx.has_teacher:
            teacher_params = count_params(ctx.teacher.model)
            limit = recipe.student.max_teacher_param_fraction
            if limit is not None and count_params(student) > limit * teacher_params:
                raise RecipeError(
                    f"student.config = {json.dumps(recipe.student.config)}: "
                    f"{count_params(student)} parameters exceed "
                    f"student.max_teacher_param_fraction={limit} of the teacher's {teacher_params}"
                )
            test_logits, _ = teacher_logits_for(ctx, task.x_test, "test")
            teacher_metrics = {
                "teacher_top1": task.score(np.asarray(test_logits)),
                "teacher_params": teacher_params,
                "teacher_macs": count_macs(ctx.teacher.model, shape, dtype=_dtype(task)),
            }
        settings = train_settings(ctx, recipe.distill.epochs, recipe.distill.lr)
        history = train_in_stage(ctx, trained, settings, stage_dir, fingerprint, "distill")
        extra: dict[str, Any] = {}
        exit_outputs: list[str] = []
        if isinstance(trained, MultiExitStudent):
            logits = exit_logits(trained, ctx.x_test)  # torch, every exit, test split
            extra = {"exit_top1": [round(task.score(z), 2) for z in logits]}
            if recipe.student.early_exits:
                extra["exits"], exit_outputs = _early_exit_report(ctx, trained, stage_dir, logits)
            student = trained.plain_student()
        outputs = save_model(student, recipe.student.arch, stage_dir, "student")
        atomic_write_json(stage_dir / "input.json", task.input.as_dict())
        return StageOutcome(
            outputs=[*outputs, "input.json", "train_log.csv", *exit_outputs],
            metrics={
                "student_top1": task.score(predict_logits(student, ctx.x_test)),
                **{k: v for k, v in teacher_metrics.items() if k == "teacher_top1"},
                "student_params": count_params(student),
                "student_macs": count_macs(student, shape, dtype=_dtype(task)),
                **{k: v for k, v in teacher_metrics.items() if k != "teacher_top1"},
                "epochs": len(history),
                "train_samples": len(task.y_train),
                "labelled_train_samples": int(task.labelled.sum()),
                "pretrained": "student.safetensors" in pretrained,
                **extra,
            },
        )

    return ctx.run_stage("distill", inputs, body)


def _dtype(task: Any) -> torch.dtype:
    return torch.int64 if task.input.dtype == "int64" else torch.float32


def _early_exit_report(
    ctx: RunContext, model: MultiExitStudent, stage_dir: Path, logits: list[np.ndarray]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Export every exit, verify each against torch (gate), profile each; write the report."""
    from edgedistill.early_exits import (
        cascade_table,
        evaluate_exits,
        exit_report_markdown,
        write_exit_report,
    )

    profile = ctx.recipe.profile
    folder = stage_dir / "exits"
    reports = evaluate_exits(
        model,
        ctx.x_test,
        ctx.y_test,
        folder,
        input_shape=tuple(ctx.task.input.shape),
        threads=profile.threads,
        warmup=profile.warmup,
        runs=profile.runs,
        parity_samples=ctx.recipe.gates.parity_samples,
        tolerance=ctx.recipe.gates.fp32_max_abs_diff,
    )
    cascade = cascade_table(
        logits,
        ctx.y_test,
        [r.cascade_macs for r in reports],
        baseline_macs=reports[-1].macs,
    )
    write_exit_report(reports, cascade, folder / "exits.json")
    atomic_write_text(folder / "exits.md", exit_report_markdown(reports, cascade))
    files = sorted(p.relative_to(stage_dir).as_posix() for p in folder.glob("*.onnx"))
    rows = [
        {"exit": r.index, "top1": r.top1_onnx, "macs": r.macs, "p50_ms": r.latency_ms["p50"]}
        for r in reports
    ]
    return rows, [*files, "exits/exits.json", "exits/exits.md"]
