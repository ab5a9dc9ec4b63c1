"""The timed loop, written once against the Runner interface."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from edgedistill.bench.stats import latency_summary
from edgedistill.runtime.base import Runner


def measure_latency(
    runner: Runner,
    x: np.ndarray,
    *,
    warmup: int = 20,
    runs: int = 200,
    on_run: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Time ``runs`` calls of ``runner.infer(x)`` after ``warmup`` untimed calls.

    Each sample is the wall time of one synchronous call (``time.perf_counter_ns``), so it
    includes the runtime's Python-call overhead: below ~0.2 ms that overhead dominates
    (TOOLCHAIN.md), which is what an app calling the model once per input sees.

    Returns:
        :func:`latency_summary` of the samples, in ms, plus ``batch`` and ``per_sample_p50``.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    runner.load()
    for _ in range(warmup):
        runner.infer(x)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        runner.infer(x)
        samples.append((time.perf_counter_ns() - start) / 1e6)
        if on_run is not None:
            on_run()
    summary = latency_summary(samples)
    summary["batch"] = float(x.shape[0])
    summary["per_sample_p50"] = summary["p50"] / x.shape[0]
    return summary
