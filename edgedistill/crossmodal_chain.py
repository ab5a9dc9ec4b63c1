"""Cross-modal distillation, step by step: a frozen video teacher teaches an IMU student.

The steps COMODO's recipe takes (Chen et al., 2025, arXiv:2503.07259), as plain functions the
``crossmodal`` recipe and ``benchmarks/crossmodal.py`` share:

1. :func:`encode_video_teacher` — clip embeddings of the frozen per-frame ImageNet teacher with
   temporal statistics, computed once and cached (COMODO pre-encodes its video the same way).
2. :func:`teacher_targets` — the distillation target: the motion blocks of the embedding
   (appearance mean dropped: it is dominated by the scene, which an IMU cannot predict),
   standardised with training statistics and reduced by PCA fitted on the training clips.
3. :func:`pretrain_student` — the IMU student trained on unlabelled windows with a cross-modal
   term (``comodo``, ``infonce`` or ``l2``) through the resumable trainer.
4. :func:`finetune_classifier` — a task head (and optionally the trunk) trained with labels.

Evaluation (linear probes, few-shot) lives in :mod:`edgedistill.probe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedistill.data.paired import PairedWindows
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainResult, TrainSettings, train_student
from edgedistill.errors import DataError
from edgedistill.students import build_model

MOTION_STATS = ("std", "absdiff", "trend")
ALL_STATS = ("mean", *MOTION_STATS)


@dataclass(frozen=True)
class TeacherEmbeddings:
    """Per-clip teacher embeddings split into named blocks of D columns each.

    Attributes:
        values: [N, D * len(stats)] float32, one block per statistic in ``stats`` order.
        stats: The temporal statistics, e.g. ("mean", "std", "absdiff", "trend").
        dim: D, the per-frame feature width.
    """

    values: np.ndarray
    stats: tuple[str, ...]
    dim: int

    def blocks(self, names: tuple[str, ...]) -> np.ndarray:
        """The columns of the named statistics, concatenated: [N, D * len(names)]."""
        missing = [n for n in names if n not in self.stats]
        if missing:
            raise DataError(f"teacher embeddings have no {missing} blocks (have {self.stats})")
        cols = [
            self.values[:, i * self.dim : (i + 1) * self.dim] for i in map(self.stats.index, names)
        ]
        return np.concatenate(cols, axis=1)


def encode_video_teacher(
    paired: PairedWindows,
    cache_dir: Path,
    *,
    backbone: str = "mobilenet_v2",
    image_size: int = 64,
    layer: int | None = 11,
    grid: int = 4,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> TeacherEmbeddings:
    """Embeddings of every clip by a frozen ImageNet backbone per frame + temporal pooling.

    All four statistics (mean, std, absdiff, trend) are computed in one pass and cached, so the
    appearance-only and motion-aware variants come from the same run.

    Args:
        paired: Windows with video [N, T, H, W, 3] uint8.
        cache_dir: Where the memory-mapped embedding cache lives.
        backbone: "mobilenet_v2" or "efficientnet_lite0" (offline ImageNet weights).
        image_size: Frames are resized to this square size before the backbone.
        layer, grid: MobileNetV2 only: the frame feature is ``features[:layer]`` pooled to a
            grid x grid layout (None: the final 1280-d globally pooled feature). Mid-level
            features on a coarse grid keep the camera motion the IMU also sees.
        batch_size: Clips per teacher batch; progress: called with clips done per batch.
    """
    from edgedistill.teachers.video import (
        efficientnet_lite0_video_teacher,
        encode_clips,
        mobilenet_v2_video_teacher,
    )

    if paired.video is None:
        raise DataError(f"{paired.source or 'paired data'}: no video stream to encode")
    factories = {
        "mobilenet_v2": mobilenet_v2_video_teacher,
        "efficientnet_lite0": efficientnet_lite0_video_teacher,
    }
    if backbone not in factories:
        raise DataError(f"video teacher backbone must be one of {sorted(factories)}")
    if backbone == "mobilenet_v2":
        teacher = mobilenet_v2_video_teacher(
            image_size=image_size, stats=ALL_STATS, layer=layer, grid=grid
        )
    else:
        teacher = factories[backbone](image_size=image_size, stats=ALL_STATS)
    values, _ = encode_clips(
        teacher,
        paired.video,
        cache_dir=cache_dir,
        data_key=paired.fingerprint(),
        batch_size=batch_size,
        progress=progress,
    )
    dim = values.shape[1] // len(ALL_STATS)
    return TeacherEmbeddings(np.asarray(values, dtype=np.float32), ALL_STATS, dim)


def teacher_targets(
    embeddings: TeacherEmbeddings,
    train_index: np.ndarray,
    *,
    stats: tuple[str, ...] = MOTION_STATS,
    pca_dim: int | None = 128,
) -> np.ndarray:
    """The distillation target of every clip: chosen blocks, standardised, PCA-reduced.

    Statistics and the PCA basis come from the training clips only (``train_index``), so the
    held-out clips never shape the target.

    Returns:
        [N, pca_dim] float32 (or [N, D * len(stats)] when ``pca_dim`` is None).
    """
    x = embeddings.blocks(stats).astype(np.float64)
    train = x[train_index]
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    z = (x - mean) / std
    if pca_dim is None:
        return z.astype(np.float32)
    if pca_dim > min(train.shape):
        raise DataError(f"pca_dim {pca_dim} exceeds the {min(train.shape)} training clips/dims")
    _, _, vt = np.linalg.svd(z[train_index], full_matrices=False)
    return (z @ vt[:pca_dim].T).astype(np.float32)


def build_imu_student(config: dict[str, object], seed: int, arch: str = "imu_cnn") -> nn.Module:
    """A registered IMU student, initialised from ``seed``."""
    torch.manual_seed(seed)
    return build_model(arch, dict(config))


def pretrain_student(
    model: nn.Module,
    x_train: torch.Tensor,
    targets: np.ndarray,
    term: LossTermSpec,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 0.05,
    checkpoint_path: Path | None = None,
    fingerprint: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> TrainResult:
    """Cross-modal pre-training without labels: ``model`` learns to predict ``targets``.

    Args:
        model: The IMU student; trained in place (its classifier is untouched).
        x_train: [N, C, T] normalised windows; targets: [N, D_t] teacher embeddings.
        term: A ``comodo``, ``infonce`` or ``l2`` term.
        fingerprint: Identifies the run a checkpoint belongs to (a checkpoint with another
            fingerprint is not resumed); default: the term name.
    """
    unlabelled = torch.full((len(x_train),), -1, dtype=torch.int64)
    settings = TrainSettings(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, terms=(term,), schedule="cosine"
    )
    return train_student(
        model,
        x_train,
        unlabelled,
        settings,
        teacher_features={"embedding": targets},
        checkpoint_path=checkpoint_path,
        fingerprint=fingerprint or f"pretrain-{term.name}",
        progress=progress,
    )


def finetune_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    seed: int,
    lr: float = 0.05,
    batch_size: int = 32,
) -> TrainResult:
    """Supervised training of a fresh task head (and the trunk) with cross-entropy."""
    # The fresh head is initialised from the global torch RNG. Its state here depended on what
    # ran before in the process (pre-training consumes it; a re-run that reloads the
    # pre-trained weights does not), so the same recipe and seed gave a different head, hence
    # a different fine-tuned, pruned and exported model. Seed the head from ``seed``.
    torch.manual_seed(seed)
    model.reset_classifier(num_classes)  # type: ignore[operator]
    settings = TrainSettings(
        epochs=epochs,
        batch_size=min(batch_size, len(y_train)),
        lr=lr,
        seed=seed,
        terms=(LossTermSpec("ce", 1.0),),
        schedule="cosine",
    )
    return train_student(model, x_train, y_train, settings)
