"""A run folder's deployed models measured on a device agent.

The agent's client (:mod:`edgedistill.agent.client`) is a library and never imports the
pipeline; this module knows the run folder's layout (which stage wrote which model) and
hands the client plain paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from edgedistill.agent.client import DeviceResults, ProgressFn, profile_on_device
from edgedistill.agent.errors import AgentError
from edgedistill.agent.store import ResultsStore
from edgedistill.artifacts import read_json
from edgedistill.pipeline.context import RunContext
from edgedistill.pipeline.stages.export import deployed_models


def run_models(run_dir: Path) -> dict[str, Path]:
    """The deployed ONNX models of a run folder (FP32 exports and their INT8 versions)."""
    run_dir = Path(run_dir).resolve()

    class _Manifests:  # the two things deployed_models reads from a RunContext
        def __init__(self) -> None:
            self.manifests = {
                stage: read_json(run_dir / stage / "manifest.json")
                for stage in ("export", "quantize")
                if (run_dir / stage / "manifest.json").is_file()
            }

        def stage_dir(self, name: str) -> Path:
            return run_dir / name

    shim = _Manifests()
    if "export" not in shim.manifests:
        raise AgentError(f"{run_dir} has no finished export stage: run `edgedistill export` first")
    found = deployed_models(cast(RunContext, shim))
    return {m.name: m.onnx for m in found if m.onnx is not None and m.onnx.is_file()}


def profile_run_on_device(
    run_dir: Path,
    url: str,
    token: str,
    *,
    runtimes: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] = ("fp32", "int8"),
    batch_sizes: Sequence[int] = (1,),
    threads: Sequence[int] = (1,),
    warmup: int = 20,
    runs: int = 200,
    on_progress: ProgressFn | None = None,
    store: Path | None = None,
) -> DeviceResults:
    """Profile every deployed ONNX model of ``run_dir`` on the agent at ``url``.

    Rows are appended to ``store`` (default ``<run_dir>/results.sqlite``, the run's
    ``profile.store`` when the recipe sets one) with ``run_id`` = the run folder's name.
    """
    run_dir = Path(run_dir)
    models = run_models(run_dir)
    if not models:
        raise AgentError(f"{run_dir} has no exported ONNX model to profile")
    return profile_on_device(
        models,
        url,
        token,
        ResultsStore(store or run_dir / "results.sqlite"),
        runtimes=runtimes,
        precisions=precisions,
        batch_sizes=batch_sizes,
        threads=threads,
        warmup=warmup,
        runs=runs,
        run_id=run_dir.resolve().name,
        on_progress=on_progress,
    )
