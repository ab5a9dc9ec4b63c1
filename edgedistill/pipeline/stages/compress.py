"""Compression stages: ``prune`` (structured channels to a MACs target, then KD recovery)
and ``quantize`` (ONNX Runtime static INT8, QDQ, calibrated on training samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgedistill.artifacts import read_json
from edgedistill.compress.calibration import output_distortion
from edgedistill.compress.prune import prune_channels
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.metrics import predict_logits
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.distill import train_in_stage, train_settings
from edgedistill.progress import progress_bar
from edgedistill.students.io import load_model, save_model


def stage_prune(ctx: RunContext) -> dict[str, Any]:
    """Structured channel pruning to a MACs target, then KD recovery fine-tuning."""
    cfg = ctx.recipe.prune
    inputs = {
        **ctx.output_hashes("distill"),
        "prune": cfg.model_dump(mode="json"),
        "distill": ctx.recipe.distill.model_dump(mode="json"),
        "teacher": ctx.teacher.weights_sha256 if ctx.has_teacher else None,
        "data": ctx.data_sha256,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        if not cfg.enabled:
            return StageOutcome(outputs=[], metrics={"enabled": False})
        task = ctx.task
        student = load_model(ctx.stage_dir("distill"), "student")
        before_top1 = task.score(predict_logits(student, ctx.x_test))
        result = prune_channels(
            student,
            task.input.shape,
            target_macs_ratio=cfg.target_macs_ratio,
            round_to=cfg.round_to,
            importance=cfg.importance,
            distortion=output_distortion(student, task.calibration(512, ctx.recipe.seed)),
            input_dtype=torch.int64 if task.input.dtype == "int64" else torch.float32,
        )
        pruned = result.model
        no_finetune_top1 = task.score(predict_logits(pruned, ctx.x_test))
        history: list[dict[str, float]] = []
        if cfg.finetune_epochs > 0:
            settings = train_settings(ctx, cfg.finetune_epochs, cfg.finetune_lr)
            history = train_in_stage(ctx, pruned, settings, stage_dir, fingerprint, "prune")
        top1 = task.score(predict_logits(pruned, ctx.x_test))
        arch = read_json(ctx.output("distill", "student.json"))["arch"]
        outputs = save_model(pruned, arch, stage_dir, "student-pruned")
        if history:
            outputs.append("train_log.csv")
        return StageOutcome(
            outputs=outputs,
            metrics={
                "pruned_top1": top1,
                "student_top1": before_top1,
                "top1_after_pruning_before_finetune": no_finetune_top1,
                "macs_ratio": round(result.macs_ratio, 4),
                "params_ratio": round(result.params_after / result.params_before, 4),
                "pruning_steps": result.steps,
                "widths": pruned.current_config().get("widths"),  # type: ignore[operator]
            },
        )

    return ctx.run_stage("prune", inputs, body)


def stage_quantize(ctx: RunContext) -> dict[str, Any]:
    """Post-training static INT8 (ORT QDQ) of every student, calibrated on training data."""
    cfg = ctx.recipe.quantize
    inputs = {
        **ctx.output_hashes("export"),
        "quantize": cfg.model_dump(mode="json"),
        "data": ctx.data_sha256,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        if not cfg.enabled:
            return StageOutcome([], {"enabled": False, "models": []})
        sources = [m for m in ctx.manifests["export"]["metrics"]["models"] if m != "teacher"]
        calibration = ctx.task.calibration(cfg.calibration_samples, ctx.recipe.seed).numpy()
        keep_float_until = cfg.keep_float_until
        if keep_float_until == "auto":
            student = load_model(ctx.stage_dir("distill"), "student")
            keep_float_until = getattr(student, "float_frontend_until", None)
        outputs = []
        kept_float: list[str] = []
        with progress_bar(ctx.console, "quantize", len(sources)) as advance:
            for source in sources:
                target = stage_dir / f"{source}-int8.onnx"
                kept_float = quantize_onnx_static(
                    ctx.output("export", f"{source}.onnx"),
                    target,
                    calibration,
                    per_channel=cfg.per_channel,
                    method=cfg.calibration_method,
                    reduce_range=cfg.reduce_range,
                    op_types=cfg.op_types,
                    keep_float_until=keep_float_until,
                    activations=cfg.activations,
                )
                outputs.append(target.name)
                advance(1, source)
        return StageOutcome(
            outputs,
            {
                "models": sources,
                "calibration_samples": len(calibration),
                "kept_float_until": keep_float_until,
                "nodes_kept_float": len(kept_float),
            },
        )

    return ctx.run_stage("quantize", inputs, body)
