"""``idx``: an MNIST-layout IDX folder (Fashion-MNIST from Debian, MNIST, your own)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from edgedistill.data.image import load_idx_dataset, read_idx
from edgedistill.schema import existing_dir, existing_file
from edgedistill.tasks.inputs import image_input
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task


class IdxConfig(SourceConfig):
    """A folder with the four IDX files (``train-images-idx3-ubyte[.gz]``, ...).

    ``unlabelled``: an IDX image file of extra training images without labels;
    ``use_labels: false`` ignores every training label (label-free distillation).
    """

    source: str = "idx"
    path: Path = Field(description="folder with MNIST-layout IDX files")
    labels: tuple[str, ...] = Field(min_length=2)
    unlabelled: Path | None = None
    normalization: str = Field(default="auto", pattern="^auto$")

    applies_train_limit: ClassVar[bool] = True  # before the unlabelled images are added

    _path = field_validator("path")(existing_dir)

    @field_validator("unlabelled")
    @classmethod
    def _file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else existing_file(value, info)


def idx_task(cfg: IdxConfig, name: str) -> Task:
    """The task of an IDX folder (images [N, 1, H, W] uint8), before train_limit."""
    data = load_idx_dataset(cfg.path, cfg.labels, name)
    return Task(
        name=name,
        input=image_input(data.x_train),
        labels=data.labels,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        source=str(cfg.path),
    )


@register_source("idx", IdxConfig)
def load_idx(cfg: IdxConfig, context: SourceContext) -> Task:
    task = idx_task(cfg, cfg.name or "dataset").subset_train(cfg.train_limit, context.seed)
    if cfg.unlabelled is not None or not cfg.use_labels:
        extra = (
            read_idx(cfg.unlabelled)[:, None]
            if cfg.unlabelled is not None
            else np.zeros((0, *task.x_train.shape[1:]), np.uint8)
        )
        task = task.with_unlabelled(extra, use_labels=cfg.use_labels)
    return task
