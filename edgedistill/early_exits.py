"""Early-exit deployment report for multi-exit students (layered self-distillation).

Shipped as early exits, a :class:`MultiExitStudent` runs its cheap shallow exit first and goes
deeper only when unsure. Per exit this measures top-1 (torch, ONNX Runtime), export parity (a
gate), MACs, parameters and ORT latency of the graph *up to that exit only*, plus the
confidence-threshold trade-off of the cascade (:func:`cascade_table`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgedistill.artifacts import atomic_write_json, read_json
from edgedistill.bench.latency import measure_latency
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.errors import GateError, RecipeError
from edgedistill.export.onnx import INPUT_NAME, export_onnx
from edgedistill.metrics import count_macs, count_params, topk_accuracy
from edgedistill.runtime import OnnxRuntimeRunner, run_batched
from edgedistill.runtime.compare import check_parity
from edgedistill.students.base import PooledClassifier
from edgedistill.students.multi_exit import (
    MultiExitDeploy,
    MultiExitStudent,
    export_multi_exit_onnx,
)

DEFAULT_THRESHOLDS = (0.5, 0.7, 0.9, 0.95, 0.99)
ALL_EXITS_FILE = "student-exits.onnx"


class ExitModel(nn.Module):
    """The trunk up to stage ``depth`` followed by one exit head: input -> logits [B, K]."""

    def __init__(self, trunk: PooledClassifier, depth: int, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.depth = depth
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.trunk.enter(x)
        for stage in self.trunk.stage_modules()[: self.depth]:
            x = stage(x)
        return cast(torch.Tensor, self.head(x))


@dataclass(frozen=True)
class ExitExport:
    """Where :func:`export_exits` wrote the graphs: all exits in one file, and one per exit."""

    all_exits: Path
    exits: tuple[Path, ...]


@dataclass(frozen=True)
class ExitReport:
    """Measurements of one exit (index 0 = shallowest).

    ``top1_onnx`` and the latencies are the truncated graph's (``exit{i}.onnx``) in ONNX
    Runtime; ``max_abs_diff`` is the worse of that graph and the all-exits graph's output
    against torch. ``cascade_macs`` is what a sample stopping here costs in a cascade that
    shares the trunk: this exit's MACs plus the heads of the earlier exits it evaluated.
    """

    index: int
    top1_torch: float
    top1_onnx: float
    max_abs_diff: float
    macs: int
    params: int
    latency_ms: dict[str, float]
    cascade_macs: int
    top1_int8: float | None = None
    latency_int8_ms: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _deploy(student: MultiExitStudent) -> MultiExitDeploy:
    if not isinstance(student, MultiExitStudent):
        raise RecipeError(f"early exits need a MultiExitStudent, got {type(student).__name__}")
    return cast(MultiExitDeploy, student.to_deploy(keep_exits=True))


def _truncated_trunk(trunk: PooledClassifier, depth: int) -> PooledClassifier:
    """A copy of ``trunk`` whose stages after ``depth`` and classifier are Identity."""
    trunk = copy.deepcopy(trunk)
    dropped = {id(m) for m in [*trunk.stage_modules()[depth:], trunk.classifier]}
    for name, module in list(trunk.named_modules()):
        if id(module) in dropped:
            parent, _, leaf = name.rpartition(".")
            setattr(trunk.get_submodule(parent), leaf, nn.Identity())
    return trunk


def _models_from(deploy: MultiExitDeploy) -> list[nn.Module]:
    models: list[nn.Module] = [
        ExitModel(_truncated_trunk(deploy.trunk, i + 1), i + 1, copy.deepcopy(head)).eval()
        for i, head in enumerate(deploy.heads)
    ]
    return [*models, copy.deepcopy(deploy.trunk).eval()]


def exit_models(student: MultiExitStudent) -> list[nn.Module]:
    """One eval-mode, BN-folded model per exit computing only what that exit needs.

    Exit i runs the trunk's entry, stages 0..i and exit head i; the deepest is the plain
    deployed student. Outputs equal :class:`MultiExitDeploy`'s, shallow -> deep.
    """
    return _models_from(_deploy(student))


def exit_logits(
    student: MultiExitStudent, x: torch.Tensor, batch_size: int = 256
) -> list[np.ndarray]:
    """Torch class logits [N, K] of every exit (the deployed graph), shallow -> deep."""
    return _torch_outputs(_deploy(student), x, batch_size)


@torch.inference_mode()
def _torch_outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> list[np.ndarray]:
    parts = []
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        parts.append([o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))])
    return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]


def export_exits(
    student: MultiExitStudent, input_shape: tuple[int, ...], out_dir: Path, *, opset: int = 18
) -> ExitExport:
    """Write ``student-exits.onnx`` (outputs ``exit0``...) and one ``exit{i}.onnx`` per exit."""
    deploy = _deploy(student)
    out_dir = Path(out_dir)
    all_exits = export_multi_exit_onnx(deploy, input_shape, out_dir / ALL_EXITS_FILE, opset=opset)
    paths = tuple(
        export_onnx(model, input_shape, out_dir / f"exit{i}.onnx", opset=opset)
        for i, model in enumerate(_models_from(deploy))
    )
    return ExitExport(all_exits, paths)


def _head_macs(deploy: MultiExitDeploy, input_shape: tuple[int, ...]) -> list[int]:
    """MACs of each early-exit head alone, on its stage's output."""
    macs = []
    with torch.no_grad():
        h, _ = deploy.trunk.enter(torch.ones(1, *input_shape))
        for stage, head in zip(deploy.trunk.stage_modules(), deploy.heads, strict=False):
            h = stage(h)
            macs.append(count_macs(head, tuple(h.shape[1:])))
    return macs


def _check_parity(index: int, graph: str, ref: np.ndarray, got: np.ndarray, tol: float) -> float:
    cmp, failure = check_parity(ref, got, tol, what=f"exit {index}: {graph}", runtime="onnxruntime")
    if failure is not None:
        raise GateError(failure)
    return cmp.max_abs_diff


def evaluate_exits(
    student: MultiExitStudent,
    x_test: torch.Tensor,
    y_test: np.ndarray,
    out_dir: Path,
    *,
    input_shape: tuple[int, ...],
    threads: int = 1,
    warmup: int = 10,
    runs: int = 100,
    batch_size: int = 1,
    parity_samples: int = 64,
    tolerance: float = 1e-4,
    int8_calibration: torch.Tensor | None = None,
    exported: ExitExport | None = None,
) -> list[ExitReport]:
    """Accuracy, export parity, size and ORT latency of every exit.

    Args:
        student: The multi-exit student (deployed with its exits, batch norm folded).
        x_test: [N, *input_shape] normalised held-out inputs; y_test: [N] integer labels.
        out_dir: Where the ONNX files go (:func:`export_exits`), INT8 copies included.
        input_shape: One input without the batch dimension.
        threads: ONNX Runtime intra-op threads.
        warmup, runs, batch_size: Latency: untimed and timed calls on the first inputs.
        parity_samples: Leading test inputs compared between ORT and torch.
        tolerance: Largest allowed max |ORT - torch| for both graphs of every exit.
        int8_calibration: When given, each truncated graph is also quantized (static INT8
            QDQ, calibrated on these inputs) and its top-1 and latency are reported.
        exported: Files of an earlier :func:`export_exits` of this student; skips exporting.

    Raises:
        GateError: An exit's exported graph is further from torch than ``tolerance``.
        RecipeError: Inputs or settings are inconsistent.
    """
    deploy = _deploy(student)
    x = x_test.detach().float().cpu()
    y = np.asarray(y_test)
    if tuple(x.shape[1:]) != tuple(input_shape) or y.shape != (len(x),) or len(x) == 0:
        raise RecipeError(
            f"need x_test [N, {', '.join(map(str, input_shape))}] and y_test [N], "
            f"got {list(x.shape)} and {list(y.shape)}"
        )
    if min(threads, runs, parity_samples) < 1 or warmup < 0 or not tolerance >= 0:
        raise RecipeError("threads, runs, parity_samples must be >= 1; warmup, tolerance >= 0")
    if not 1 <= batch_size <= len(x):
        raise RecipeError(f"batch_size must be in 1..{len(x)} (test samples), got {batch_size}")
    calibration = None if int8_calibration is None else int8_calibration.detach().float().cpu()
    if calibration is not None and (len(calibration) == 0 or calibration.shape[1:] != x.shape[1:]):
        raise RecipeError(f"int8_calibration must be [M > 0, {', '.join(map(str, input_shape))}]")
    models = _models_from(deploy)
    files = exported or export_exits(student, input_shape, out_dir)
    if len(files.exits) != len(models):
        raise RecipeError(f"{len(files.exits)} exported exits for a {len(models)}-exit student")
    x_np, n = x.numpy(), min(parity_samples, len(x))
    torch_logits = _torch_outputs(deploy, x, 256)
    shared_runner = OnnxRuntimeRunner(files.all_exits, ALL_EXITS_FILE, threads)
    with shared_runner:
        session: Any = shared_runner.session
        shared = session.run(None, {INPUT_NAME: x_np[:n]})
    heads = _head_macs(deploy, input_shape)
    reports = []
    for i, (model, path) in enumerate(zip(models, files.exits, strict=True)):
        with OnnxRuntimeRunner(path, path.stem, threads) as runner:
            logits = run_batched(runner, x_np)
            ref = _torch_outputs(model, x[:n], 256)[0]
            diff = max(
                _check_parity(i, ALL_EXITS_FILE, torch_logits[i][:n], shared[i], tolerance),
                _check_parity(i, path.name, ref, logits[:n], tolerance),
            )
            latency = measure_latency(runner, x_np[:batch_size], warmup=warmup, runs=runs)
        top1_int8, latency_int8 = None, None
        if calibration is not None:
            int8 = Path(out_dir) / f"{path.stem}-int8.onnx"
            quantize_onnx_static(path, int8, calibration.numpy())
            with OnnxRuntimeRunner(int8, int8.stem, threads) as runner:
                top1_int8 = topk_accuracy(run_batched(runner, x_np), y)
                latency_int8 = measure_latency(runner, x_np[:batch_size], warmup=warmup, runs=runs)
        macs = count_macs(model, input_shape)
        reports.append(
            ExitReport(
                index=i,
                top1_torch=topk_accuracy(torch_logits[i], y),
                top1_onnx=topk_accuracy(logits, y),
                max_abs_diff=diff,
                macs=macs,
                params=count_params(model),
                latency_ms=latency,
                cascade_macs=macs + sum(heads[:i]),
                top1_int8=top1_int8,
                latency_int8_ms=latency_int8,
            )
        )
    return reports


def cascade_table(
    exit_logits: Sequence[np.ndarray],
    y: np.ndarray,
    macs: Sequence[int],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    baseline_macs: float | None = None,
) -> list[dict[str, Any]]:
    """The confidence-threshold trade-off of running the exits as a cascade.

    A sample stops at the first exit whose max softmax probability is >= the threshold; the
    last exit takes the rest.

    Args:
        exit_logits: [N, K] logits per exit, shallow -> deep; y: [N] integer labels.
        macs: Cost of a sample that stops at each exit (see ``ExitReport.cascade_macs``).
        thresholds: Confidence thresholds, one row each.
        baseline_macs: What ``macs_ratio`` divides by; default ``macs[-1]``. Pass the plain
            deepest student's MACs to compare the cascade with shipping that model alone.

    Returns:
        Per threshold: ``threshold``, ``exit_fraction`` (share of samples stopping at each
        exit), ``top1`` (% of the cascade), ``expected_macs`` per sample and ``macs_ratio``
        (``expected_macs`` / ``baseline_macs``).
    """
    logits = [np.asarray(z, dtype=np.float64) for z in exit_logits]
    labels = np.asarray(y)
    n = len(labels)
    if not logits or len(macs) != len(logits):
        raise RecipeError(f"need one MACs count per exit, got {len(macs)} for {len(logits)} exits")
    if n == 0 or labels.shape != (n,) or any(z.ndim != 2 or len(z) != n for z in logits):
        raise RecipeError(f"need [N, K] logits per exit and labels [N] with N > 0, got N = {n}")
    if any(np.isnan(t) for t in thresholds):
        raise RecipeError("cascade thresholds must be numbers, got NaN")
    # max softmax = 1 / sum(exp(z - max z)), stable for any logits
    confidence = [1.0 / np.exp(z - z.max(1, keepdims=True)).sum(1) for z in logits]
    predictions = np.stack([z.argmax(1) for z in logits])
    last, rows = len(logits) - 1, []
    baseline = macs[-1] if baseline_macs is None else baseline_macs
    for threshold in thresholds:
        stop = np.full(n, last)
        pending = np.ones(n, dtype=bool)
        for i in range(last):
            hit = pending & (confidence[i] >= threshold)
            stop[hit] = i
            pending &= ~hit
        fractions = [float(np.mean(stop == i)) for i in range(len(logits))]
        expected = float(sum(f * m for f, m in zip(fractions, macs, strict=True)))
        correct = predictions[stop, np.arange(n)] == labels
        rows.append(
            {
                "threshold": float(threshold),
                "exit_fraction": fractions,
                "top1": float(correct.mean() * 100.0),
                "expected_macs": expected,
                "macs_ratio": expected / baseline if baseline else float("nan"),
            }
        )
    return rows


def write_exit_report(
    reports: Sequence[ExitReport], cascade: Sequence[dict[str, Any]], path: Path
) -> Path:
    """Write ``{"exits": [...], "cascade": [...]}`` as JSON, atomically."""
    atomic_write_json(
        Path(path), {"exits": [r.as_dict() for r in reports], "cascade": list(cascade)}
    )
    return Path(path)


def read_exit_report(path: Path) -> tuple[list[ExitReport], list[dict[str, Any]]]:
    """Read back what :func:`write_exit_report` wrote."""
    data = read_json(path)
    return [ExitReport(**r) for r in data["exits"]], list(data["cascade"])


def _count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _ms(latency: dict[str, float]) -> str:
    return f"{latency['p50']:.3f} / {latency['p90']:.3f} / {latency['p99']:.3f}"


def exit_report_markdown(reports: Sequence[ExitReport], cascade: Sequence[dict[str, Any]]) -> str:
    """Two Markdown tables: one row per exit, then one row per cascade threshold."""
    int8 = any(r.top1_int8 is not None for r in reports)
    header = ["exit", "top-1 torch %", "top-1 ORT %", "max abs diff", "params", "MACs"]
    header += ["cascade MACs", "ORT p50 / p90 / p99 ms"]
    header += ["INT8 top-1 %", "INT8 p50 / p90 / p99 ms"] if int8 else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in reports:
        cells = [
            f"exit{r.index}",
            f"{r.top1_torch:.2f}",
            f"{r.top1_onnx:.2f}",
            f"{r.max_abs_diff:.2e}",
        ]
        cells += [_count(r.params), _count(r.macs), _count(r.cascade_macs), _ms(r.latency_ms)]
        if int8:
            cells.append("–" if r.top1_int8 is None else f"{r.top1_int8:.2f}")
            cells.append("–" if r.latency_int8_ms is None else _ms(r.latency_int8_ms))
        lines.append("| " + " | ".join(cells) + " |")
    if cascade:
        names = " / ".join(f"exit{r.index}" for r in reports)
        lines += [
            "",
            f"| threshold | stops at {names} | top-1 % | MACs | MACs ratio |",
            "|" + "---|" * 5,
        ]
        for row in cascade:
            stops = " / ".join(f"{100 * f:.0f}%" for f in row["exit_fraction"])
            lines.append(
                f"| {row['threshold']:g} | {stops} | {row['top1']:.2f} | "
                f"{_count(row['expected_macs'])} | {row['macs_ratio']:.2f}× |"
            )
    return "\n".join(lines) + "\n"
