"""Compression stages: ``prune`` (structured channels to a MACs or a measured latency
target, then KD recovery)
and ``quantize`` (static INT8 QDQ calibrated on training samples: ONNX Runtime or NNCF, with
QAT + KD when PTQ misses the accuracy gate)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedistill.artifacts import atomic_copy, atomic_write_json, read_json
from edgedistill.compress.calibration import output_distortion
from edgedistill.compress.latency_meter import RuntimeLatencyMeter, target_runtime
from edgedistill.compress.latency_prune import LatencyPruneResult, prune_to_latency
from edgedistill.compress.prune import PruneResult, prune_channels
from edgedistill.compress.qdq import layer_sensitivity
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.errors import RecipeError
from edgedistill.faults import maybe_die
from edgedistill.metrics import predict_logits
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.distill import (
    teacher_logits_for,
    train_in_stage,
    train_settings,
)
from edgedistill.progress import progress_bar
from edgedistill.runtime import OnnxRuntimeRunner, run_batched
from edgedistill.students.io import load_model, save_model


def stage_prune(ctx: RunContext) -> dict[str, Any]:
    """Structured channel pruning to a MACs target or to a latency target measured on the
    recipe's first ONNX runtime (``prune.target_latency``), then KD recovery fine-tuning."""
    cfg = ctx.recipe.prune
    inputs: dict[str, Any] = {
        **ctx.output_hashes("distill"),
        "prune": cfg.model_dump(mode="json"),
        "distill": ctx.recipe.distill.model_dump(mode="json"),
        "teacher": ctx.teacher.weights_sha256 if ctx.has_teacher else None,
        "data": ctx.data_sha256,
    }
    latency_on: dict[str, Any] = {}
    if cfg.target_latency is not None:  # MACs recipes keep their fingerprint
        latency_on = {
            "runtime": target_runtime(ctx.recipe.profile.runtimes),
            "threads": ctx.recipe.profile.threads,
        }
        inputs["latency_on"] = latency_on

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        if not cfg.enabled:
            return StageOutcome(outputs=[], metrics={"enabled": False})
        task = ctx.task
        student = load_model(ctx.stage_dir("distill"), "student")
        before_top1 = task.score(predict_logits(student, ctx.x_test))
        distortion = output_distortion(student, task.calibration(512, ctx.recipe.seed))
        dtype = torch.int64 if task.input.dtype == "int64" else torch.float32
        result: PruneResult | LatencyPruneResult
        if cfg.target_latency is not None:
            result = _prune_to_latency(ctx, student, cfg.target_latency, distortion, dtype)
        else:
            result = prune_channels(
                student,
                task.input.shape,
                target_macs_ratio=cfg.target_macs_ratio or 0.7,  # PruneConfig sets it
                round_to=cfg.round_to,
                importance=cfg.importance,
                distortion=distortion,
                input_dtype=dtype,
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
        metrics = {
            "pruned_top1": top1,
            "student_top1": before_top1,
            "top1_after_pruning_before_finetune": no_finetune_top1,
            "macs_ratio": round(result.macs_ratio, 4),
            "params_ratio": round(result.params_after / result.params_before, 4),
            "pruning_steps": result.steps,
            "widths": pruned.current_config().get("widths"),  # type: ignore[operator]
        }
        if isinstance(result, LatencyPruneResult):
            metrics["latency"] = {**latency_on, "batch": 1, **result.metrics()}
        return StageOutcome(outputs=outputs, metrics=metrics)

    return ctx.run_stage("prune", inputs, body)


def _prune_to_latency(
    ctx: RunContext,
    student: torch.nn.Module,
    target: float,
    distortion: Callable[[torch.nn.Module], float],
    dtype: torch.dtype,
) -> LatencyPruneResult:
    """Latency-driven pruning on the recipe's first ONNX runtime, with a progress bar of the
    candidates timed; prints the measured before/after line."""
    cfg, profile = ctx.recipe.prune, ctx.recipe.profile
    runtime = target_runtime(profile.runtimes)
    shape = tuple(ctx.task.input.shape)
    label = f"prune: timing candidates on {runtime}"
    with (
        RuntimeLatencyMeter(runtime, shape, threads=profile.threads, input_dtype=dtype) as meter,
        progress_bar(ctx.console, label, cfg.max_candidates) as advance,
    ):
        result = prune_to_latency(
            student,
            shape,
            target_latency=target,
            meter=meter,
            distortion=distortion,
            importance=cfg.importance,
            max_candidates=cfg.max_candidates,
            input_dtype=dtype,
            on_measure=advance,
            seed=ctx.recipe.seed,
        )
    low, high = result.ratio_ci
    ctx.console.print(
        f"[dim]prune: {runtime} p50 {result.p50_before_ms:.3f} -> {result.p50_after_ms:.3f} ms "
        f"({result.ratio:.2f}x, 95% CI {low:.2f}-{high:.2f}; target {target}), "
        f"widths multiple of {result.width_multiple}, {result.candidates_measured} candidates "
        f"timed in {result.seconds:.0f} s[/]"
    )
    return result


# The quantize options added with NNCF: fingerprinted only when one differs from its default,
# so a run made before they existed is not redone (its outputs are byte-identical anyway).
_NNCF_FIELDS = (
    "backend",
    "accuracy_control",
    "qat",
    "qat_epochs",
    "qat_lr",
    "validation_samples",
    "sensitivity",
)
SENSITIVITY_FILE = "sensitivity.json"


def _nncf_options_in_use(cfg: Any) -> bool:
    """Whether any quantize option added with NNCF differs from its default."""
    return any(getattr(cfg, k) != type(cfg).model_fields[k].default for k in _NNCF_FIELDS)


def _quantize_fingerprint(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.recipe.quantize
    dump = cfg.model_dump(mode="json")
    extra = {k: dump.pop(k) for k in _NNCF_FIELDS}
    if _nncf_options_in_use(cfg):
        dump.update(extra)
        dump["gate"] = ctx.recipe.gates.int8_max_accuracy_drop
        if cfg.qat != "never":
            dump["teacher"] = ctx.teacher.weights_sha256 if ctx.has_teacher else None
            dump["distill"] = ctx.recipe.distill.model_dump(mode="json")
    return dump


def _wants_sensitivity(cfg: Any) -> bool:
    if cfg.sensitivity == "auto":
        return bool(cfg.backend == "nncf" or cfg.qat != "never")
    return bool(cfg.sensitivity == "yes")


def _validation_split(ctx: RunContext, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` labelled *training* samples outside the calibration set (seeded): the
    held-out data INT8 drops are measured on inside this stage. Never the test split: the
    choices made on it (which layers stay float, whether to run QAT) would leak into the
    accuracy the report states."""
    task, cfg = ctx.task, ctx.recipe.quantize
    calibration = set(task.calibration_index(cfg.calibration_samples, ctx.recipe.seed).tolist())
    labelled = np.flatnonzero(task.labelled)
    if len(labelled) == 0:
        raise RecipeError(
            "quantize: accuracy_control, qat and sensitivity need labelled training samples "
            "(data.use_labels is false); set them off"
        )
    free = np.array([i for i in labelled if i not in calibration], dtype=np.int64)
    pool = free if len(free) >= min(n, 10) else labelled  # tiny sets: overlap calibration
    order = pool[np.random.default_rng(ctx.recipe.seed + 3).permutation(len(pool))]
    index = np.sort(order[:n])
    return task.input.prepare(task.x_train[index]).numpy(), task.y_train[index]


def _onnx_logits(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    with OnnxRuntimeRunner(path, path.stem, threads) as runner:
        return run_batched(runner, x)


def _ignored_types(path: Path, op_types: tuple[str, ...] | None) -> list[str] | None:
    """NNCF ignores op types, ONNX Runtime quantizes listed ones: the complement."""
    if not op_types:
        return None
    import onnx

    present = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return sorted(present - set(op_types))


def _soft_labels(ctx: RunContext, student: torch.nn.Module) -> tuple[np.ndarray, str]:
    """The teacher's cached training logits, or the FP32 student's own without a teacher."""
    task = ctx.task
    if ctx.has_teacher:
        logits, _ = teacher_logits_for(ctx, task.x_train, "train")
        logits = np.asarray(logits)
        if logits.shape[-1] == task.num_classes:
            return logits, "teacher"
    return predict_logits(student, task.train_inputs), "fp32-student"


def _qat(
    ctx: RunContext, source: str, target: Path, calibration: np.ndarray
) -> tuple[dict[str, Any], Path]:
    """QAT + KD of the torch model behind ``source``, exported to ``target``."""
    from edgedistill.compress.nncf_quantize import export_qat_onnx, qat_kd

    cfg, task = ctx.recipe.quantize, ctx.task
    stage = "distill" if source == "student" else "prune"
    student = load_model(ctx.stage_dir(stage), source)
    soft, soft_source = _soft_labels(ctx, student)
    kd = next((t for t in ctx.recipe.distill.terms if t.name == "kd"), None)
    model = qat_kd(
        student,
        task.train_inputs,
        soft,
        calibration=torch.as_tensor(calibration),
        epochs=cfg.qat_epochs,
        lr=cfg.qat_lr,
        batch_size=ctx.recipe.distill.batch_size,
        temperature=kd.temperature if kd is not None else 4.0,
        labels=task.y_train,
        ce_weight=0.0 if soft_source == "teacher" else 1.0,
        seed=ctx.recipe.seed,
    )
    export_qat_onnx(
        model,
        tuple(task.input.shape),
        target,
        input_dtype=torch.int64 if task.input.dtype == "int64" else torch.float32,
    )
    return {"soft_labels": soft_source, "epochs": cfg.qat_epochs, "lr": cfg.qat_lr}, target


def stage_quantize(ctx: RunContext) -> dict[str, Any]:
    """INT8 QDQ ONNX of every student, calibrated on training data: ONNX Runtime or NNCF PTQ
    (optionally accuracy-controlled), QAT + KD when PTQ misses the gate (``quantize.qat``),
    and the per-layer sensitivity table ``sensitivity.json``."""
    cfg = ctx.recipe.quantize
    inputs = {
        **ctx.output_hashes("export"),
        "quantize": _quantize_fingerprint(ctx),
        "data": ctx.data_sha256,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        if not cfg.enabled:
            return StageOutcome([], {"enabled": False, "models": []})
        if cfg.backend == "nncf" or cfg.qat != "never":
            from edgedistill.compress.nncf_quantize import require_nncf

            require_nncf("quantize.backend: nncf" if cfg.backend == "nncf" else "quantize.qat")
        sources = [m for m in ctx.manifests["export"]["metrics"]["models"] if m != "teacher"]
        calibration = ctx.task.calibration(cfg.calibration_samples, ctx.recipe.seed).numpy()
        keep_float_until = cfg.keep_float_until
        if keep_float_until == "auto":
            student = load_model(ctx.stage_dir("distill"), "student")
            keep_float_until = getattr(student, "float_frontend_until", None)
        sensitivity = _wants_sensitivity(cfg)
        validation = None
        if cfg.accuracy_control or cfg.qat != "never" or sensitivity:
            validation = _validation_split(ctx, cfg.validation_samples)
        outputs = []
        kept_float: list[str] = []
        paths: dict[str, dict[str, Any]] = {}
        tables: dict[str, list[dict[str, Any]]] = {}
        with progress_bar(ctx.console, "quantize", len(sources)) as advance:
            for source in sources:
                target = stage_dir / f"{source}-int8.onnx"
                fp32 = ctx.output("export", f"{source}.onnx")
                record: dict[str, Any] = {}
                if cfg.backend == "onnxruntime":
                    kept_float = quantize_onnx_static(
                        fp32,
                        target,
                        calibration,
                        per_channel=cfg.per_channel,
                        method=cfg.calibration_method,
                        reduce_range=cfg.reduce_range,
                        op_types=cfg.op_types,
                        keep_float_until=keep_float_until,
                        activations=cfg.activations,
                    )
                    record["path"] = "ptq-onnxruntime"
                else:
                    record.update(
                        _nncf_ptq(ctx, fp32, target, calibration, validation, keep_float_until)
                    )
                    kept_float = record.pop("nodes_kept_float")
                    record.update(keep_float_until=keep_float_until)
                if cfg.qat != "never" and validation is not None:
                    record.update(
                        _qat_if_needed(ctx, source, fp32, target, calibration, validation)
                    )
                if sensitivity and validation is not None:
                    tables[source] = layer_sensitivity(
                        fp32,
                        target,
                        validation[0],
                        labels=validation[1],
                        metric=ctx.task.score,
                        threads=ctx.threads(),
                    )
                paths[source] = record
                outputs.append(target.name)
                maybe_die("quantize_model", len(outputs))  # tests only
                advance(1, source)
        metrics: dict[str, Any] = {
            "models": sources,
            "calibration_samples": len(calibration),
            "kept_float_until": keep_float_until,
            "nodes_kept_float": len(kept_float),
        }
        if _nncf_options_in_use(cfg):  # default recipes keep today's metrics exactly
            metrics.update(backend=cfg.backend, paths=paths)
            if validation is not None:
                metrics["validation_samples"] = len(validation[1])
        if tables:
            atomic_write_json(
                stage_dir / SENSITIVITY_FILE,
                {
                    "method": "each quantized layer alone quantized (every other layer float); "
                    "metric drop and relative output error vs FP32 on a validation subset of "
                    "the training data",
                    "metric": ctx.task.metric_info.header,
                    "samples": len(validation[1]) if validation is not None else 0,
                    "models": tables,
                },
            )
            outputs.append(SENSITIVITY_FILE)
        return StageOutcome(outputs, metrics)

    return ctx.run_stage("quantize", inputs, body)


def _nncf_ptq(
    ctx: RunContext,
    fp32: Path,
    target: Path,
    calibration: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    keep_float_until: str | None,
) -> dict[str, Any]:
    """NNCF PTQ of one model (accuracy-controlled when asked); its record for the metrics."""
    from edgedistill.compress.nncf_quantize import nncf_accuracy_controlled, nncf_ptq_onnx

    cfg = ctx.recipe.quantize
    gate = ctx.recipe.gates.int8_max_accuracy_drop
    options: dict[str, Any] = {
        "subset_size": cfg.calibration_samples,
        "reduce_range": cfg.reduce_range,
        "ignored_types": _ignored_types(fp32, cfg.op_types),
        "keep_float_until": keep_float_until,
    }
    if cfg.accuracy_control and validation is not None:
        info = nncf_accuracy_controlled(
            fp32, target, calibration, validation, max_drop=gate, metric=ctx.task.score, **options
        )
        path = "ptq-nncf-accuracy-control"
    else:
        info = nncf_ptq_onnx(fp32, target, calibration, **options)
        path = "ptq-nncf"
    keep = ("nodes_kept_float", "float_layers", "accuracy_drop", "fp32_metric", "int8_metric")
    return {"path": path, **{k: info[k] for k in keep if k in info}}


def _qat_if_needed(
    ctx: RunContext,
    source: str,
    fp32: Path,
    target: Path,
    calibration: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """Measure PTQ's drop on the validation split; past the gate, QAT + KD replaces it."""
    gate, threads, score = ctx.recipe.gates.int8_max_accuracy_drop, ctx.threads(), ctx.task.score
    x, y = validation
    fp32_metric = score(_onnx_logits(fp32, x, threads), y)
    ptq_drop = fp32_metric - score(_onnx_logits(target, x, threads), y)
    record: dict[str, Any] = {"ptq_validation_drop": round(ptq_drop, 4), "gate": gate}
    if ptq_drop <= gate:
        return record
    with tempfile.TemporaryDirectory(prefix="edgedistill-qat-") as tmp:
        candidate = Path(tmp) / target.name
        info, _ = _qat(ctx, source, candidate, calibration)
        qat_drop = fp32_metric - score(_onnx_logits(candidate, x, threads), y)
        record.update(qat=info, qat_validation_drop=round(qat_drop, 4))
        if qat_drop < ptq_drop:  # keep whichever INT8 model is better on held-out data
            atomic_copy(candidate, target)
            record["path"] = "qat-kd"
    return record
