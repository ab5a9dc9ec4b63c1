"""The timed loop, written once against the Runner interface."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
) -> dict[str, Any]:
    """Time ``runs`` calls of ``runner.timed_infer(x)`` after ``warmup`` untimed calls.

    Each sample is, by default, the wall time of one synchronous call
    (``time.perf_counter_ns``), so it includes the runtime's Python-call overhead: below
    ~0.2 ms that overhead dominates (TOOLCHAIN.md), which is what an app calling the model once
    per input sees. A runner with a device clock (a CUDA runner: events around its kernel
    launches) returns that time from :meth:`Runner.timed_infer`; when every timed call does,
    the samples are device times, ``timing`` names the clock and ``wall_p50`` keeps the
    median wall time of the same calls, so the host overhead stays visible.

    Returns:
        :func:`latency_summary` of the samples, in ms, plus ``batch``, ``per_sample_p50`` and
        ``timing`` (``"wall"``, or the runner's :attr:`Runner.device_clock`, e.g.
        ``"cuda-events"``); with device timing also ``wall_p50``.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    runner.load()
    for _ in range(warmup):
        runner.infer(x)
    wall: list[float] = []
    device: list[float | None] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        _, device_ms = runner.timed_infer(x)
        wall.append((time.perf_counter_ns() - start) / 1e6)
        device.append(device_ms)
        if on_run is not None:
            on_run()
    on_device = all(d is not None for d in device)
    samples = [float(d) for d in device if d is not None] if on_device else wall
    summary: dict[str, Any] = dict(latency_summary(samples))
    summary["batch"] = float(x.shape[0])
    summary["per_sample_p50"] = summary["p50"] / x.shape[0]
    summary["timing"] = runner.device_clock if on_device else "wall"
    if on_device:
        summary["wall_p50"] = latency_summary(wall)["p50"]
    return summary
