"""The ordered list of stages and :func:`run_pipeline`, the one module importing every stage.

Every recipe, whatever its modality, runs through the same stages; a stage with nothing to do
for a recipe (``pretrain`` without a ``pretrain`` section, ``prune`` disabled) records that in
its manifest and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.errors import StageError
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.stages.bundle import stage_bundle
from edgedistill.pipeline.stages.compress import stage_prune, stage_quantize
from edgedistill.pipeline.stages.distill import stage_distill
from edgedistill.pipeline.stages.export import stage_export
from edgedistill.pipeline.stages.pretrain import stage_pretrain
from edgedistill.pipeline.stages.profile import stage_profile
from edgedistill.pipeline.stages.report import stage_report
from edgedistill.pipeline.stages.verify import stage_verify

StageFn = Callable[[RunContext], dict[str, Any]]

PIPELINE: tuple[tuple[str, StageFn], ...] = (
    ("pretrain", stage_pretrain),
    ("distill", stage_distill),
    ("prune", stage_prune),
    ("export", stage_export),
    ("quantize", stage_quantize),
    ("verify", stage_verify),
    ("profile", stage_profile),
    ("bundle", stage_bundle),
    ("report", stage_report),
)
STAGES: tuple[str, ...] = tuple(name for name, _ in PIPELINE)


def run_pipeline(
    recipe: Recipe,
    out_dir: Path,
    *,
    until: str = "report",
    console: Console | None = None,
    force: bool = False,
) -> RunContext:
    """Run every stage up to and including ``until``; returns the context with manifests."""
    from importlib.metadata import PackageNotFoundError, version

    if until not in STAGES:
        raise StageError(f"unknown stage '{until}'; stages: {', '.join(STAGES)}")
    try:
        package_version = version("edgedistill")
    except PackageNotFoundError:  # running from a source tree without installing
        package_version = "0+unknown"
    ctx = RunContext(recipe, out_dir, console=console, force=force, version=package_version)
    torch.set_num_threads(ctx.threads())
    for _name, stage in PIPELINE[: STAGES.index(until) + 1]:
        stage(ctx)
    return ctx
