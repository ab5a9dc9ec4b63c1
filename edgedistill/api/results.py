"""What the Python API returns: typed views of a run's manifests and ``summary.json``.

:class:`RunResult` is one call of :func:`edgedistill.run` or of a stage function; its
accessors give the numbers users ask for (accuracy per model, latency p50 per runtime and batch
size, the speed-ups, the recommended file, the bundle and report paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedistill.errors import StageError
from edgedistill.pipeline.run import TrainingEstimate

if TYPE_CHECKING:
    from edgedistill.agent.client import DeviceResults


@dataclass(frozen=True)
class StageResult:
    """One stage of a call, from its ``manifest.json``.

    Attributes:
        name: The stage (``distill``, ``export``, ...).
        skipped: True when its inputs were unchanged and the finished stage was kept.
        metrics: The stage's metrics as in its manifest (``{"enabled": False}`` for a stage
            the recipe does not use).
        outputs: Its output files (absolute paths).
        seconds: How long the stage took when it last ran (also for a skipped stage).
    """

    name: str
    skipped: bool
    metrics: dict[str, Any] = field(hash=False)
    outputs: tuple[Path, ...]
    seconds: float | None

    @property
    def enabled(self) -> bool:
        """Whether the recipe uses this stage (``pretrain`` without a section does not)."""
        return self.metrics.get("enabled", True) is not False


@dataclass(frozen=True)
class ModelResult:
    """One row of ``summary.json``: a deployed model and its numbers.

    Attributes:
        name: ``teacher``, ``student``, ``student-pruned``, ``student-int8``, ...
        precision: ``fp32`` or ``int8``.
        params: Parameter count.
        macs: Multiply-accumulates of one sample.
        size_bytes: The ONNX file's size.
        accuracy: The task metric on the held-out split (``summary["accuracy_metric"]``).
        latency_ms: Batch-1 latency ``{runtime: {"p50", "p90", "p99"}}`` in milliseconds.
        latency_sweep: Every measurement: runtime, precision, batch, p50/p90/p99 (ms).
        onnx: The exported ONNX file (absolute), or None for a torch-only model.
    """

    name: str
    precision: str
    params: int
    macs: int
    size_bytes: int
    accuracy: float
    latency_ms: dict[str, dict[str, float]] = field(hash=False)
    latency_sweep: tuple[dict[str, Any], ...] = field(hash=False)
    onnx: Path | None

    def p50(self, runtime: str = "onnxruntime", batch: int = 1) -> float | None:
        """Median latency (ms per call of ``batch`` samples) on ``runtime``, or None when that
        runtime and batch size were not measured."""
        for row in self.latency_sweep:
            if row["runtime"] == runtime and float(row["batch"]) == batch:
                return float(row["p50"])
        if batch == 1 and runtime in self.latency_ms:
            return float(self.latency_ms[runtime]["p50"])
        return None


@dataclass(frozen=True)
class Recommendation:
    """Which bundled model to ship (the bundle stage's decision).

    Attributes:
        file: The recommended model file in the bundle (absolute path).
        model: The model it holds (e.g. ``student-pruned``).
        reason: Why, in one sentence (e.g. INT8 was not faster than FP32 on this machine).
    """

    file: Path
    model: str
    reason: str


@dataclass(frozen=True)
class RunResult:
    """What a call of :func:`run` or a stage function did, and the numbers users want.

    Attributes:
        out: The run folder (absolute).
        recipe: The recipe's name.
        until: The last stage of this call.
        stages: Every stage up to ``until``, in order.
        summary: The parsed ``summary.json`` when the report stage ran, else None.
        device: What a device agent measured (:func:`profile` with a device), else None.
    """

    out: Path
    recipe: str
    until: str
    stages: tuple[StageResult, ...]
    summary: dict[str, Any] | None = field(default=None, hash=False)
    device: DeviceResults | None = field(default=None, hash=False)

    def stage(self, name: str) -> StageResult:
        """The result of stage ``name``.

        Raises:
            KeyError: the stage was not part of this call (it comes after ``until``).
        """
        for stage in self.stages:
            if stage.name == name:
                return stage
        ran = ", ".join(s.name for s in self.stages)
        raise KeyError(f"stage '{name}' did not run in this call (until='{self.until}': {ran})")

    @property
    def executed(self) -> tuple[str, ...]:
        """The stages that did work in this call."""
        return tuple(s.name for s in self.stages if not s.skipped)

    @property
    def skipped(self) -> tuple[str, ...]:
        """The stages kept from an earlier run because their inputs were unchanged."""
        return tuple(s.name for s in self.stages if s.skipped)

    @property
    def models(self) -> dict[str, ModelResult]:
        """Every deployed model by name, as in ``summary.json``."""
        rows = self._summary()["models"]
        return {row["name"]: self._model(row) for row in rows}

    @property
    def accuracy(self) -> dict[str, float]:
        """The task metric of every model on the held-out split, by model name
        (what it measures: :attr:`metric`)."""
        return {name: model.accuracy for name, model in self.models.items()}

    @property
    def metric(self) -> str:
        """What :attr:`accuracy` holds, in words (e.g. "top-1 % on the 10000 held-out ...")."""
        return str(self._summary()["accuracy_metric"])

    def latency_p50(self, model: str, runtime: str = "onnxruntime", batch: int = 1) -> float:
        """Median latency of ``model`` on ``runtime`` at ``batch`` (ms per call).

        Raises:
            KeyError: no such model, or that runtime and batch size were not measured.
        """
        models = self.models
        if model not in models:
            raise KeyError(f"no model '{model}' in this run: {', '.join(models)}")
        p50 = models[model].p50(runtime, batch)
        if p50 is None:
            raise KeyError(f"{model} was not measured on {runtime} at batch {batch}")
        return p50

    @property
    def speedups(self) -> dict[str, float]:
        """``summary.json``'s speed-ups: each model on ONNX Runtime against the teacher as it is
        run today, batch 1, p50 (empty without a teacher)."""
        return {str(k): float(v) for k, v in self._summary().get("speedups", {}).items()}

    def speedup(self, model: str) -> float:
        """How many times faster ``model`` (ONNX Runtime) is than the teacher, batch 1 p50.

        Raises:
            KeyError: no speed-up was measured for ``model`` (no teacher, or no such model).
        """
        prefix = f"{model} (onnxruntime) vs teacher "
        for key, value in self.speedups.items():
            if key.startswith(prefix):
                return value
        raise KeyError(f"no speed-up for '{model}'; measured: {', '.join(self.speedups) or 'none'}")

    @property
    def recommended(self) -> Recommendation | None:
        """The bundle stage's choice of model to ship, or None before the bundle stage."""
        bundle = next((s for s in self.stages if s.name == "bundle"), None)
        if bundle is None or "recommended" not in bundle.metrics:
            return None
        metrics = bundle.metrics
        file = self.out / "bundle" / "app" / str(metrics["recommended"])
        return Recommendation(file=file, model=str(metrics["model"]), reason=str(metrics["reason"]))

    @property
    def bundle(self) -> Path | None:
        """The app-ready bundle folder, or None before the bundle stage."""
        return self.out / "bundle" / "app" if "bundle" in self._names() else None

    @property
    def report(self) -> Path | None:
        """The HTML report, or None before the report stage."""
        return self.out / "report" / "report.html" if "report" in self._names() else None

    def _names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def _summary(self) -> dict[str, Any]:
        if self.summary is None:
            raise StageError(
                f"no summary: this call stopped at '{self.until}'; summary.json is written by "
                "the report stage: call edgedistill.run(...) (until='report')"
            )
        return self.summary

    def _model(self, row: Mapping[str, Any]) -> ModelResult:
        return ModelResult(
            name=str(row["name"]),
            precision=str(row["precision"]),
            params=int(row["params"]),
            macs=int(row["macs"]),
            size_bytes=int(row["size_bytes"]),
            accuracy=float(row["accuracy"]),
            latency_ms=dict(row.get("latency_ms") or {}),
            latency_sweep=tuple(row.get("latency_sweep_ms") or ()),
            onnx=None if row.get("onnx") is None else self.out / str(row["onnx"]),
        )


@dataclass(frozen=True)
class Validation:
    """What :func:`validate` checked (what ``edgedistill validate`` prints).

    Attributes:
        recipe: The recipe's name.
        task: One line on the data (source, splits, input, labels).
        student: The student's architecture, parameter count and classes.
        teacher: The teacher's name and how its weights were checked, or None without a card.
        classes: The number of classes every model outputs.
        estimate: Training time on this machine, estimated from a few timed student steps.
    """

    recipe: str
    task: str
    student: str
    teacher: str | None
    classes: int
    estimate: TrainingEstimate


__all__ = ["ModelResult", "Recommendation", "RunResult", "StageResult", "Validation"]
