"""Time candidate models on a target runtime: export to ONNX, then interleaved batch-1 calls.

The :class:`~edgedistill.compress.latency_prune.LatencyMeter` that latency-driven pruning
uses outside tests. Every candidate is exported the way the export stage does it
(``to_deploy()`` first, so batch norm is folded; the project's ONNX exporter) into a
temporary folder, once per architecture key, and run by the runtime's
:class:`~edgedistill.runtime.base.Runner` from :func:`~edgedistill.runtime.registry.
make_runner`. Calls are interleaved call by call across the candidates of one batch with the
leader rotating every round (as :func:`~edgedistill.bench.compare.interleaved_order` does for
two), so a change of machine load hits every candidate alike.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from torch import nn

from edgedistill.errors import RecipeError
from edgedistill.runtime.base import Runner


def target_runtime(runtimes: Sequence[str]) -> str:
    """The runtime latency-driven pruning measures on: the first one in ``runtimes`` (the
    recipe's ``profile.runtimes``) that runs ONNX files.

    Raises:
        RecipeError: none of them runs ONNX.
    """
    from edgedistill.runtime.registry import runtime_spec

    for name in runtimes:
        if runtime_spec(name).takes == "onnx":
            return name
    raise RecipeError(
        "prune.target_latency needs an ONNX runtime in profile.runtimes to measure on (e.g. "
        f"onnxruntime); got {list(runtimes)}"
    )


def export_candidate(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, input_dtype: torch.dtype
) -> None:
    """Export one candidate in its deploy form (batch norm folded), dynamic batch.

    Uses torch's TorchScript exporter: about 0.06 s per small model against 1-9 s for the
    dynamo exporter of :func:`~edgedistill.export.onnx.export_onnx` (measured on 2 busy
    cores), which dominates when dozens of candidates are timed. Both emit the same kernels
    for convolution / linear students (Conv, Relu, pooling, Gemm or MatMul); where the
    TorchScript exporter fails, the dynamo one is used.
    """
    from edgedistill.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx

    to_deploy = getattr(model, "to_deploy", None)
    deploy = (to_deploy() if callable(to_deploy) else model).eval()
    example = torch.ones(1, *input_shape, dtype=input_dtype)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                deploy,
                (example,),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception:  # any TorchScript failure: the slower, more general exporter
        export_onnx(deploy, input_shape, path, input_dtype=input_dtype)


class RuntimeLatencyMeter:
    """Batch-1 latency of candidate models on one ONNX runtime, timed interleaved.

    Args:
        runtime: A registry runtime that takes ONNX files (``onnxruntime``, ``openvino``...).
        input_shape: One sample's shape.
        threads: Intra-op threads of the runtime (the recipe's ``profile.threads``).
        input_dtype: torch.float32, or torch.int64 for token ids.
        runs_per_round: Calls of each candidate per round.
        warmup: Untimed calls of each candidate before a batch.
        exporter: ``exporter(model, path)`` writes the ONNX file (default
            :func:`export_candidate`).
        workdir: Folder for the exported candidates (default: a temporary one, removed on
            :meth:`close`).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        runtime: str,
        input_shape: tuple[int, ...],
        *,
        threads: int = 1,
        input_dtype: torch.dtype = torch.float32,
        runs_per_round: int = 20,
        warmup: int = 10,
        exporter: Callable[[nn.Module, Path], None] | None = None,
        workdir: Path | None = None,
    ) -> None:
        if runs_per_round < 1 or warmup < 0:
            raise ValueError("runs_per_round must be >= 1 and warmup >= 0")
        self.runtime, self.threads = runtime, threads
        self.input_shape, self.input_dtype = tuple(input_shape), input_dtype
        self.runs_per_round, self.warmup = runs_per_round, warmup
        self._exporter = exporter or (
            lambda m, p: export_candidate(m, self.input_shape, p, input_dtype)
        )
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgedistill-lat-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)  # type: ignore[union-attr]
        self._paths: dict[str, Path] = {}
        self._runners: dict[str, Runner] = {}
        np_dtype = np.int64 if input_dtype == torch.int64 else np.float32
        self.x = np.ones((1, *self.input_shape), dtype=np_dtype)
        self.exports = 0

    def _runner(self, key: str, model: nn.Module) -> Runner:
        from edgedistill.runtime.registry import make_runner

        if key not in self._paths:
            path = self.workdir / f"candidate-{len(self._paths)}.onnx"
            self._exporter(model, path)
            self._paths[key] = path
            self.exports += 1
        if key not in self._runners:
            runner = make_runner(self.runtime, self._paths[key], key, threads=self.threads)
            self._runners[key] = runner.load()
        return self._runners[key]

    def samples(
        self, candidates: Sequence[tuple[str, nn.Module]], *, rounds: int
    ) -> list[np.ndarray]:
        """Per-call wall times (ms) of each candidate: ``rounds * runs_per_round`` each."""
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        keys = [key for key, _ in candidates]
        for key in [k for k in self._runners if k not in keys]:  # keep only this batch open
            self._runners.pop(key).close()
        runners = [self._runner(key, model) for key, model in candidates]
        for _ in range(self.warmup):
            for runner in runners:
                runner.infer(self.x)
        times: list[list[float]] = [[] for _ in runners]
        n = len(runners)
        for r in range(rounds):
            order = [(i + r) % n for i in range(n)]  # the leader rotates every round
            for _ in range(self.runs_per_round):
                for i in order:
                    start = time.perf_counter_ns()
                    runners[i].infer(self.x)
                    times[i].append((time.perf_counter_ns() - start) / 1e6)
        return [np.asarray(t) for t in times]

    def close(self) -> None:
        """Close the runners and remove the temporary exports."""
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RuntimeLatencyMeter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
