"""``paired``: synchronised video + IMU windows for cross-modal pre-training.

``generator: synthetic`` renders the seeded synthetic egocentric set
(:mod:`edgedistill.data.egocentric`, cached in the run's ``cache/``); ``generator: folder``
reads the Ego4D/COMODO-style layout of :mod:`edgedistill.data.paired_io`. The task is the IMU
stream (what the student eats and the app feeds); the other streams ride along in
:class:`PairedSplit` for the ``pretrain`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from edgedistill.artifacts import sha256_json
from edgedistill.data.paired import PairedWindows
from edgedistill.errors import RecipeError
from edgedistill.schema import existing_dir
from edgedistill.tasks.inputs import imu_input
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task


@dataclass(frozen=True)
class PairedSplit:
    """All paired windows and which of them form the task's training and test splits.

    Attributes:
        windows: Every window of every stream (video, IMU, ...).
        train_index, test_index: Rows of ``windows`` in the task's ``x_train`` / ``x_test``
            order.
    """

    windows: PairedWindows
    train_index: np.ndarray
    test_index: np.ndarray

    def fingerprint(self) -> str:
        return sha256_json(
            {
                "windows": self.windows.fingerprint(),
                "train": self.train_index.tolist(),
                "test": self.test_index.tolist(),
            }
        )

    def subset(self, index: np.ndarray) -> PairedSplit:
        """Keep the training rows at ``index`` (positions in ``x_train``)."""
        return PairedSplit(self.windows, self.train_index[index], self.test_index)


class PairedConfig(SourceConfig):
    """Paired windows and the subject-disjoint split."""

    source: str = "paired"
    generator: Literal["synthetic", "folder"] = "synthetic"
    folder: Path | None = Field(default=None, description="paired_io layout root")
    window_s: float = Field(default=2.0, gt=0)
    stride_s: float = Field(default=2.0, gt=0)
    imu_rate_hz: float = Field(default=50.0, gt=0)
    fps: float = Field(default=10.0, gt=0)
    frame_size: int = Field(default=64, ge=8)
    test_subjects: tuple[int, ...] = Field(default=(7, 8, 9), min_length=1)
    synthetic: dict[str, Any] = Field(
        default_factory=dict, description="EgocentricConfig overrides (generator: synthetic)"
    )

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else existing_dir(value, info)

    @model_validator(mode="after")
    def _folder_for_folder(self) -> PairedConfig:
        if self.generator == "folder" and self.folder is None:
            raise ValueError("data.folder is required when data.generator is 'folder'")
        return self


def load_paired_windows(cfg: PairedConfig, cache_dir: Path, seed: int) -> PairedWindows:
    """The recipe's paired windows (generated and cached, or read from the folder)."""
    if cfg.generator == "folder":
        from edgedistill.data.paired_io import load_paired_folder

        assert cfg.folder is not None  # checked by the config
        return load_paired_folder(
            cfg.folder,
            window_s=cfg.window_s,
            stride_s=cfg.stride_s,
            imu_rate_hz=cfg.imu_rate_hz,
            fps=cfg.fps,
            frame_size=cfg.frame_size,
        )
    from edgedistill.data.egocentric import EgocentricConfig, load_or_generate_egocentric

    try:
        config = EgocentricConfig(
            clip_seconds=cfg.window_s,
            fps=cfg.fps,
            imu_rate_hz=cfg.imu_rate_hz,
            frame_size=cfg.frame_size,
            seed=seed,
            **cfg.synthetic,
        )
    except TypeError as exc:
        raise RecipeError(f"data.synthetic: {exc}") from None
    return load_or_generate_egocentric(config, cache_dir)


@register_source("paired", PairedConfig)
def load_paired(cfg: PairedConfig, context: SourceContext) -> Task:
    paired = load_paired_windows(cfg, context.cache_dir, context.seed)
    train_index, test_index = paired.subject_split(cfg.test_subjects)
    x_train, x_test = paired.imu[train_index], paired.imu[test_index]
    return Task(
        name=cfg.name or ("synthetic-egocentric" if cfg.generator == "synthetic" else "paired"),
        input=imu_input(
            x_train,
            channels=paired.imu_channels,
            units=paired.imu_units,
            sample_rate_hz=paired.imu_rate_hz,
            window_s=paired.window_s,
            stride_s=paired.stride_s,
        ),
        labels=paired.classes,
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=paired.labels[train_index].astype(np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=paired.labels[test_index].astype(np.int64),
        groups_train=paired.subjects[train_index].astype(np.int64),
        groups_test=paired.subjects[test_index].astype(np.int64),
        source=paired.source,
        paired=PairedSplit(paired, train_index, test_index),
    )
