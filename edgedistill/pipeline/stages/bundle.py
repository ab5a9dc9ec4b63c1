"""The ``bundle`` stage: one app-ready folder for every modality (:func:`write_bundle`), and
the one INT8-or-FP32 decision of the chain (:func:`recommend`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgedistill.artifacts import read_json
from edgedistill.bench.compare import prefer_candidate
from edgedistill.errors import StageError
from edgedistill.pipeline.context import RunContext, StageOutcome
from edgedistill.pipeline.stages.export import DeployedModel, deployed_models
from edgedistill.pipeline.stages.report import latency_b1, latency_comparison

FP32_FILE, INT8_FILE = "model.onnx", "model-int8.onnx"
SAMPLES = 8
README_REVISION = 2  # part of the stage's inputs: a new README layout rewrites old bundles


def final_fp32(ctx: RunContext) -> str:
    """The model the chain ships: the pruned student, or the student when pruning is off."""
    return "student-pruned" if ctx.recipe.prune.enabled else "student"


def recommend(
    fp32_ms: float | None, int8_ms: float | None, comparison: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Which bundled file to ship and why: INT8 only when it is faster than FP32 in ONNX
    Runtime at batch 1 (both already passed the verify gates). With the profile stage's
    interleaved ``comparison`` (a latency.json row), "faster" means its interval excludes 1
    (:func:`~edgedistill.bench.compare.prefer_candidate`); within noise, FP32 ships.

    Returns:
        (file name, one-line reason).
    """
    if int8_ms is None:
        return FP32_FILE, "no INT8 model (quantize disabled) or no INT8 latency"
    if comparison is not None:
        use_int8, why = prefer_candidate(comparison, baseline="FP32", candidate="INT8")
        return (INT8_FILE if use_int8 else FP32_FILE), why
    if fp32_ms is None:
        return FP32_FILE, "no ONNX Runtime latency to compare INT8 with"
    faster = int8_ms < fp32_ms
    reason = (
        f"INT8 is {'faster' if faster else 'not faster'} than FP32 in ONNX Runtime at batch 1 "
        f"({int8_ms:.4f} vs {fp32_ms:.4f} ms p50)"
    )
    return (INT8_FILE if faster else FP32_FILE), reason


def stage_bundle(ctx: RunContext) -> dict[str, Any]:
    """A folder an app can embed: models, manifest with sha256 of every file, samples,
    ``example.py`` (numpy + onnxruntime) for raw input of the task's modality, README."""
    upstream = [s for s in ("export", "quantize", "verify", "profile") if s in ctx.manifests]
    teacher = _teacher_provenance(ctx)
    inputs = {
        **ctx.output_hashes(*upstream),
        "data": ctx.data_sha256,
        "teacher": teacher,
        "readme": README_REVISION,
    }

    def body(stage_dir: Path, fingerprint: str) -> StageOutcome:
        from edgedistill.export.bundle import BundledModel, write_bundle
        from edgedistill.export.bundle_readme import verify_gates

        task = ctx.task
        bundle = stage_dir / "app"  # the stage's own manifest.json stays one level up
        deployed = {m.name: m for m in deployed_models(ctx)}
        fp32 = final_fp32(ctx)
        chosen = {FP32_FILE: deployed[fp32]}
        if f"{fp32}-int8" in deployed:
            chosen[INT8_FILE] = deployed[f"{fp32}-int8"]
        verify = ctx.manifests["verify"]["metrics"]
        latency = latency_b1(ctx)

        def p50(name: str) -> float | None:
            value = latency.get(name, {}).get("onnxruntime", {}).get("p50")
            return None if value is None else float(value)

        int8_ms = p50(f"{fp32}-int8") if INT8_FILE in chosen else None
        comparison = latency_comparison(ctx, fp32, f"{fp32}-int8")
        recommended, reason = recommend(p50(fp32), int8_ms, comparison)
        count = min(SAMPLES, len(task.y_test))
        picks = np.sort(np.random.default_rng(0).choice(len(task.y_test), count, replace=False))
        models = {
            file: BundledModel(
                onnx=_onnx_of(m),
                precision=m.precision,
                source=m.name,
                metric=verify.get(f"{m.name}_top1"),
                latency_ms_batch1=latency.get(m.name, {}),
            )
            for file, m in chosen.items()
        }
        write_bundle(
            bundle,
            name=ctx.recipe.name,
            dataset=task.name,
            input_spec=task.input,
            labels=task.labels,
            models=models,
            recommended=recommended,
            recommended_reason=reason,
            samples=task.x_test[picks],
            sample_labels=[int(y) for y in task.y_test[picks]],
            metrics={k: v for k, v in verify.items() if isinstance(v, int | float)},
            latency={"batch1_ms": {m.source: m.latency_ms_batch1 for m in models.values()}},
            metric=task.metric,
            environment=_profile_environment(ctx),
            verify=verify_gates(
                read_json(ctx.output("verify", "verify.json")),
                ctx.recipe.gates.model_dump(mode="json"),
                {file: m.name for file, m in chosen.items()},
                metric="top-1" if task.metric == "top1" else task.metric,
            ),
            teacher=teacher,
        )
        outputs = sorted(p.relative_to(stage_dir).as_posix() for p in bundle.iterdir())
        model = chosen[recommended].name
        return StageOutcome(
            outputs,
            {"recommended": recommended, "model": model, "reason": reason, "path": str(bundle)},
        )

    return ctx.run_stage("bundle", inputs, body)


def _profile_environment(ctx: RunContext) -> dict[str, Any] | None:
    """The machine the profile stage measured on (None without a profile stage)."""
    if "profile" not in ctx.manifests:
        return None
    return dict(read_json(ctx.output("profile", "latency.json")).get("environment") or {})


def _teacher_provenance(ctx: RunContext) -> dict[str, Any] | None:
    """Where the run's teacher came from (its card, or the video backbone of a cross-modal
    run), read without loading the teacher."""
    from edgedistill.export.bundle_readme import teacher_provenance

    cfg = ctx.recipe.teacher
    if cfg is None:
        return None
    if cfg.card is not None:
        try:
            card = yaml.safe_load(Path(cfg.card).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise StageError(f"bundle: cannot read teacher card {cfg.card}: {exc}") from None
        if not isinstance(card, dict):
            raise StageError(f"bundle: teacher card {cfg.card} is not a mapping")
        return teacher_provenance(card, card_file=Path(cfg.card).name)
    if cfg.video is None:
        return None
    from edgedistill.errors import EdgeDistillError
    from edgedistill.teachers.image import imagenet_weights

    video = cfg.video.model_dump(mode="json")
    try:
        path, digest = imagenet_weights(cfg.video.backbone)
    except EdgeDistillError:  # the weights package is gone since the pretrain stage ran
        return teacher_provenance(video=video)
    return teacher_provenance(
        video=video, video_weights_sha256=digest, video_weights_file=path.name
    )


def _onnx_of(model: DeployedModel) -> Path:
    """A bundled (student) model's ONNX file; only a teacher can be torch-only."""
    if model.onnx is None:
        raise StageError(f"{model.name} has no ONNX file to bundle")
    return model.onnx
