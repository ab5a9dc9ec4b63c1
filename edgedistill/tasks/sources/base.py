"""The data-source registry: a recipe's ``data`` section -> a :class:`Task`.

A source is one module that defines its config section (a :class:`SourceConfig` subclass) and
a loader, registered once with :func:`register_source`. The recipe schema looks the section up
by ``data.source``; :func:`build_task` loads it and applies the options every source shares
(``train_limit``, ``label_fraction``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import Field

from edgedistill.errors import RecipeError
from edgedistill.registry import Registry
from edgedistill.schema import Section, validate_section
from edgedistill.tasks.task import UNLABELLED, Task


class SourceConfig(Section):
    """Options every data source has.

    Attributes:
        source: The registered source name.
        name: Dataset name shown in reports (default: the source's own).
        train_limit: Use a seeded sample of this many training samples.
        label_fraction: Keep the labels of a seeded, class-stratified share of the training
            samples; the rest are unlabelled (cross-modal pre-training still uses them).
        use_labels: False drops every training label: the student learns from the teacher's
            soft labels only (label-free distillation); the test labels still score it.
    """

    source: str
    name: str | None = None
    train_limit: int | None = Field(default=None, gt=0)
    label_fraction: float = Field(default=1.0, gt=0, le=1)
    use_labels: bool = True

    applies_train_limit: ClassVar[bool] = False
    """True for a source that applies ``train_limit`` itself (before adding extra samples)."""


C = TypeVar("C", bound=SourceConfig)


@dataclass(frozen=True)
class SourceContext:
    """What a loader may use besides its section: a cache folder and the recipe seed."""

    cache_dir: Path
    seed: int


@dataclass(frozen=True)
class DataSource(Generic[C]):
    """A registered source: its config section and its loader."""

    name: str
    config: type[C]
    load: Callable[[C, SourceContext], Task]


SOURCES: Registry[DataSource[Any]] = Registry("data source")


def register_source(
    name: str, config: type[C]
) -> Callable[[Callable[[C, SourceContext], Task]], Callable[[C, SourceContext], Task]]:
    """Register ``load(cfg, context) -> Task`` under ``name`` with its config section."""

    def wrap(load: Callable[[C, SourceContext], Task]) -> Callable[[C, SourceContext], Task]:
        SOURCES.register(name)(DataSource(name, config, load))
        return load

    return wrap


def parse_data_section(raw: Any, *, base_dir: Path | None, source: str) -> SourceConfig:
    """Validate a recipe's ``data`` mapping with the section of its ``source`` (default idx)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: data must be a mapping, got {type(raw).__name__}")
    name = raw.get("source", "idx")
    if not isinstance(name, str) or name not in SOURCES:
        raise RecipeError(
            f"{source}: data.source = {name!r}: unknown data source (known: "
            f"{', '.join(SOURCES.names())})"
        )
    entry = SOURCES.get(name)
    config: SourceConfig = validate_section(
        entry.config, {**raw, "source": name}, base_dir=base_dir, source=source, prefix="data"
    )
    return config


def build_task(cfg: SourceConfig, *, cache_dir: Path, seed: int) -> Task:
    """Load the task a ``data`` section names, then apply ``train_limit``, ``label_fraction``
    and ``use_labels``."""
    entry = SOURCES.get(cfg.source)
    task = entry.load(cfg, SourceContext(Path(cache_dir), seed))
    if cfg.name:
        task = replace(task, name=cfg.name)
    if not cfg.applies_train_limit:
        task = task.subset_train(cfg.train_limit, seed)
    task = task.with_label_fraction(cfg.label_fraction, seed)
    if not cfg.use_labels:
        task = replace(task, y_train=np.full_like(task.y_train, UNLABELLED))
    # The input statistics follow the training split the student actually sees.
    return replace(task, input=task.input.fitted(task.x_train))
