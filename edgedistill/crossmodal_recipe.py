"""The ``crossmodal`` recipe: video teacher → IMU student without labels, to a deployed bundle.

    edgedistill crossmodal students/egocentric_comodo.yaml [--out runs/egocentric-comodo]

Steps (each cached in the run directory; an interrupted run resumes): paired data (synthetic
egocentric set, or a folder in the :mod:`edgedistill.data.paired_io` layout) → frozen video
teacher embeddings → label-free cross-modal pre-training (resumable checkpoints) → linear-probe
report → fine-tuning with the labels the recipe allows → prune → INT8 → export → verify →
profile → bundle whose example program classifies a raw IMU window
(:mod:`edgedistill.imu_deploy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from rich.console import Console

from edgedistill.artifacts import atomic_save, atomic_write_json, read_json, sha256_json
from edgedistill.config import (
    LossTerm,
    _resolve,
    _Section,
    describe_validation_error,
    read_yaml,
)
from edgedistill.crossmodal_chain import (
    build_imu_student,
    encode_video_teacher,
    finetune_classifier,
    pretrain_student,
    teacher_targets,
)
from edgedistill.data.paired import PairedWindows
from edgedistill.distill.objective import LossTermSpec
from edgedistill.errors import RecipeError
from edgedistill.probe import extract_features, linear_probe, subsample_labels


class PairedDataConfig(_Section):
    """Where the paired windows come from."""

    source: Literal["synthetic", "folder"] = "synthetic"
    folder: Path | None = Field(default=None, description="paired_io layout root (source=folder)")

    @field_validator("folder")
    @classmethod
    def _relative_to_recipe(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    window_s: float = Field(default=2.0, gt=0)
    stride_s: float = Field(default=2.0, gt=0)
    imu_rate_hz: float = Field(default=50.0, gt=0)
    fps: float = Field(default=10.0, gt=0)
    frame_size: int = Field(default=64, ge=8)
    test_subjects: tuple[int, ...] = (7, 8, 9)
    synthetic: dict[str, Any] = Field(
        default_factory=dict, description="EgocentricConfig overrides (source=synthetic)"
    )


class VideoTeacherConfig(_Section):
    """The frozen video teacher and the target it gives the student."""

    backbone: Literal["mobilenet_v2", "efficientnet_lite0"] = "mobilenet_v2"
    image_size: int = Field(default=64, ge=32)
    layer: int | None = Field(
        default=11, ge=1, description="mobilenet_v2: mid-level layer of the frame feature"
    )
    grid: int = Field(default=4, ge=1, description="spatial grid the frame feature keeps")
    target_stats: tuple[Literal["mean", "std", "absdiff", "trend"], ...] = (
        "std",
        "absdiff",
        "trend",
    )
    pca_dim: int | None = Field(default=128, ge=2)


class ImuStudentConfig(_Section):
    arch: Literal["imu_cnn", "imu_tcn"] = "imu_cnn"
    config: dict[str, Any] = Field(default_factory=lambda: {"widths": [32, 64, 128]})


class PretrainConfig(_Section):
    term: LossTerm = LossTerm(
        name="comodo", weight=1.0, temperature=0.2, student_temperature=0.2, queue_size=4096
    )
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=0.05, gt=0)


class FinetuneConfig(_Section):
    epochs: int = Field(default=30, ge=1)
    label_fraction: float = Field(default=1.0, gt=0, le=1)
    lr: float = Field(default=0.05, gt=0)


class ImuDeployConfig(_Section):
    prune_ratio: float | None = Field(default=0.7, gt=0, lt=1)
    finetune_epochs: int = Field(default=5, ge=0)
    int8_max_drop: float = Field(default=1.0, ge=0)
    threads: int = Field(default=1, ge=1)
    runs: int = Field(default=200, ge=10)


class CrossModalRecipe(_Section):
    """A complete cross-modal recipe (YAML sections of the same names)."""

    name: str
    seed: int = 0
    threads: int = Field(default=1, ge=1)
    data: PairedDataConfig = PairedDataConfig()
    teacher: VideoTeacherConfig = VideoTeacherConfig()
    student: ImuStudentConfig = ImuStudentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    deploy: ImuDeployConfig = ImuDeployConfig()

    @classmethod
    def load(cls, path: Path) -> CrossModalRecipe:
        """Parse and validate a YAML recipe; errors name the field, value and what is allowed."""
        raw = read_yaml(Path(path), "cross-modal recipe")
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: expected a mapping of sections")
        try:  # relative paths (data.folder) resolve against the recipe's folder
            recipe = cls.model_validate(raw, context={"base_dir": Path(path).resolve().parent})
        except ValidationError as exc:
            raise RecipeError(f"{path}: {describe_validation_error(exc, cls)}") from None
        if recipe.pretrain.term.name not in ("comodo", "infonce", "l2"):
            raise RecipeError(
                f"{path}: pretrain.term.name = {recipe.pretrain.term.name}: "
                "must be one of comodo, infonce, l2"
            )
        if recipe.data.source == "folder" and recipe.data.folder is None:
            raise RecipeError(f"{path}: data.folder is required when data.source is 'folder'")
        return recipe


def load_paired(recipe: CrossModalRecipe, cache_dir: Path) -> PairedWindows:
    """The recipe's paired windows (generated and cached, or read from the folder)."""
    data = recipe.data
    if data.source == "folder":
        from edgedistill.data.paired_io import load_paired_folder

        assert data.folder is not None
        return load_paired_folder(
            data.folder,
            window_s=data.window_s,
            stride_s=data.stride_s,
            imu_rate_hz=data.imu_rate_hz,
            fps=data.fps,
            frame_size=data.frame_size,
        )
    from edgedistill.data.egocentric import EgocentricConfig, load_or_generate_egocentric

    try:
        config = EgocentricConfig(
            clip_seconds=data.window_s,
            fps=data.fps,
            imu_rate_hz=data.imu_rate_hz,
            frame_size=data.frame_size,
            seed=recipe.seed,
            **data.synthetic,
        )
    except TypeError as exc:
        raise RecipeError(f"data.synthetic: {exc}") from None
    return load_or_generate_egocentric(config, cache_dir)


def run_crossmodal(
    recipe: CrossModalRecipe, out: Path, *, console: Console | None = None
) -> dict[str, Any]:
    """Run every step; returns (and writes to ``out/summary.json``) the measured results."""
    console = console or Console(stderr=True)
    torch.set_num_threads(recipe.threads)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    paired = load_paired(recipe, cache)
    train_idx, test_idx = paired.subject_split(recipe.data.test_subjects)
    train_p, test_p = paired.subset(train_idx), paired.subset(test_idx)
    console.print(
        f"paired data: {len(train_p)} training / {len(test_p)} held-out windows, "
        f"{len(paired.classes)} classes ({paired.source})"
    )
    from edgedistill.data.imu import ImuNormalization

    norm = ImuNormalization.from_windows(train_p.imu)
    x_tr, x_te = norm.apply(train_p.imu), norm.apply(test_p.imu)
    y_tr, y_te = train_p.labels, test_p.labels
    emb = encode_video_teacher(
        paired,
        cache,
        backbone=recipe.teacher.backbone,
        image_size=recipe.teacher.image_size,
        layer=recipe.teacher.layer,
        grid=recipe.teacher.grid,
    )
    targets = teacher_targets(
        emb, train_idx, stats=tuple(recipe.teacher.target_stats), pca_dim=recipe.teacher.pca_dim
    )[train_idx]
    teacher_probe = linear_probe(emb.values[train_idx], y_tr, emb.values[test_idx], y_te).accuracy
    console.print(f"teacher linear probe (held-out subjects): {teacher_probe:.1f}%")

    config = {"in_channels": paired.imu.shape[1], "num_classes": len(paired.classes)}
    config.update(recipe.student.config)
    model = build_imu_student(config, recipe.seed, recipe.student.arch)
    fingerprint = sha256_json(
        {
            "data": paired.fingerprint(),
            "teacher": recipe.teacher.model_dump(mode="json"),
            "student": recipe.student.model_dump(mode="json"),
            "pretrain": recipe.pretrain.model_dump(mode="json"),
            "seed": recipe.seed,
        }
    )
    weights = out / "pretrain" / "student.pt"
    if _fresh(weights, fingerprint):
        model.load_state_dict(torch.load(weights, weights_only=True)["model"])
        console.print("pre-training unchanged, reused")
    else:
        term = LossTermSpec(**recipe.pretrain.term.model_dump())
        result = pretrain_student(
            model,
            x_tr,
            targets,
            term,
            epochs=recipe.pretrain.epochs,
            seed=recipe.seed,
            batch_size=recipe.pretrain.batch_size,
            lr=recipe.pretrain.lr,
            checkpoint_path=out / "pretrain" / "checkpoint.pt",
        )
        atomic_save(weights, lambda t: torch.save({"model": model.state_dict()}, t))
        atomic_write_json(weights.with_suffix(".json"), {"fingerprint": fingerprint})
        console.print(f"pre-trained ({term.name}) in {result.seconds:.0f} s")
    features_tr, features_te = extract_features(model, x_tr), extract_features(model, x_te)
    fewest = int(np.bincount(y_tr[y_tr >= 0]).min())
    probes = {
        str(k or "all"): linear_probe(
            features_tr, y_tr, features_te, y_te, labels_per_class=k, seed=recipe.seed
        ).accuracy
        for k in (None, 20, 5)
        if k is None or k <= fewest  # k-shot needs k labelled windows of every class
    }
    console.print(f"student linear probe: {probes}")
    labelled = subsample_labels(y_tr, recipe.finetune.label_fraction, seed=recipe.seed)
    finetune_classifier(
        model,
        x_tr[labelled],
        torch.as_tensor(y_tr[labelled]),
        len(paired.classes),
        epochs=recipe.finetune.epochs,
        seed=recipe.seed,
        lr=recipe.finetune.lr,
    )
    from edgedistill.imu_deploy import ImuInputSpec, deploy_imu_classifier

    spec = ImuInputSpec.from_paired(paired, norm)
    deployed = deploy_imu_classifier(
        model,
        spec=spec,
        x_train_raw=train_p.imu,
        y_train=y_tr,
        x_test_raw=test_p.imu,
        y_test=y_te,
        out_dir=out / "deploy",
        prune_ratio=recipe.deploy.prune_ratio,
        finetune_epochs=recipe.deploy.finetune_epochs,
        threads=recipe.deploy.threads,
        runs=recipe.deploy.runs,
        int8_max_drop=recipe.deploy.int8_max_drop,
        seed=recipe.seed,
    )
    summary = {
        "recipe": recipe.name,
        "data": {"source": paired.source, "train": len(train_p), "test": len(test_p)},
        "teacher_probe_top1": round(teacher_probe, 2),
        "student_probe_top1": {k: round(v, 2) for k, v in probes.items()},
        "finetune_labels": len(labelled),
        "deploy": deployed.as_dict(),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def _fresh(weights: Path, fingerprint: str) -> bool:
    meta = weights.with_suffix(".json")
    return (
        weights.is_file() and meta.is_file() and read_json(meta).get("fingerprint") == fingerprint
    )
