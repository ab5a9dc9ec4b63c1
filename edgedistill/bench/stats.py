"""Pure latency statistics (no timing code here; see :mod:`edgedistill.bench.latency`)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics.

    Matches ``numpy.percentile(samples, q)`` (method "linear").
    """
    if len(samples) == 0:
        raise ValueError("percentile of no samples is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, std (population), min, max and count of latency samples in ms."""
    if len(samples_ms) == 0:
        raise ValueError("latency summary of no samples is undefined")
    if any(s < 0 or math.isnan(s) for s in samples_ms):
        raise ValueError("latency samples must be non-negative numbers")
    n = len(samples_ms)
    mean = sum(samples_ms) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in samples_ms) / n)
    return {
        "p50": percentile(samples_ms, 50),
        "p90": percentile(samples_ms, 90),
        "p99": percentile(samples_ms, 99),
        "mean": mean,
        "std": std,
        "min": min(samples_ms),
        "max": max(samples_ms),
        "runs": float(n),
    }


def speedup(baseline_ms: float, candidate_ms: float) -> float:
    """How many times faster ``candidate`` is than ``baseline`` (both measured in one run)."""
    if baseline_ms <= 0 or candidate_ms <= 0:
        raise ValueError("latencies must be positive")
    return baseline_ms / candidate_ms
