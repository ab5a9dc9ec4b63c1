"""Latency decisions that hold under noise: two runners timed interleaved, a bootstrap
interval on their p50 ratio, and a warning when the machine looked busy.

Two models measured one after another see different machines when the load changes between
them: the same recipe once recommended INT8 (0.036 vs 0.043 ms) and once FP32 (0.082 vs
0.061 ms). :func:`compare_latency` alternates the two runners call by call, so a load change
hits both, and :func:`decide` calls one faster only when the confidence interval of the p50
ratio excludes 1. :func:`machine_load_warning` says when the numbers themselves look
disturbed (load average, a reference workload slower than this machine's best, a wide
latency tail, a student slower than its teacher).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgedistill.artifacts import atomic_write_json, read_json
from edgedistill.bench.stats import bootstrap_ratio_ci, upper_spread
from edgedistill.runtime.base import Runner

Decision = Literal["faster", "slower", "within_noise"]

#: A batch-1 measurement whose p90 is over this many times its p50 counts as disturbed.
SPREAD_LIMIT = 2.0
#: A reference workload over this many times this machine's best time counts as slowed.
REFERENCE_LIMIT = 2.0
#: A student this many times slower than its teacher on the same runtime is implausible.
TEACHER_LIMIT = 2.0


@dataclass(frozen=True)
class LatencyComparison:
    """The interleaved comparison of a baseline ``a`` and a candidate ``b`` at one batch size.

    Attributes:
        a: Baseline model name (e.g. ``student-pruned``).
        b: Candidate model name (e.g. ``student-pruned-int8``).
        runtime_a: Runtime of ``a``.
        runtime_b: Runtime of ``b`` (differs from ``runtime_a`` in runtime-vs-runtime rows).
        batch: Batch size of the timed calls.
        ratio: p50(b) / p50(a); below 1: ``b`` is faster.
        ci_low: Lower end of the bootstrap interval of ``ratio``.
        ci_high: Upper end.
        confidence: Coverage of the interval (e.g. 0.95).
        decision: ``faster`` / ``slower`` (``b`` relative to ``a``, interval excludes 1) or
            ``within_noise``.
        samples_a: Per-call latencies of ``a`` in ms, in call order.
        samples_b: Per-call latencies of ``b`` in ms, in call order.
        timing: ``"wall"`` or the runners' device clock (as in ``measure_latency``).
    """

    a: str
    b: str
    runtime_a: str
    runtime_b: str
    batch: int
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    decision: Decision
    samples_a: tuple[float, ...]
    samples_b: tuple[float, ...]
    timing: str = "wall"

    @property
    def runtime(self) -> str:
        """One runtime name, or ``"A vs B"`` for a runtime-vs-runtime comparison."""
        if self.runtime_a == self.runtime_b:
            return self.runtime_a
        return f"{self.runtime_a} vs {self.runtime_b}"

    @property
    def reason(self) -> str:
        """One line: what was compared, the ratio with its interval, and the verdict."""
        who_a = self.a if self.runtime_a == self.runtime_b else f"{self.a} ({self.runtime_a})"
        who_b = self.b if self.runtime_a == self.runtime_b else f"{self.b} ({self.runtime_b})"
        verdict = {
            "faster": f"{who_b} is faster",
            "slower": f"{who_b} is slower",
            "within_noise": "within noise (the interval includes 1)",
        }[self.decision]
        return (
            f"{who_b} vs {who_a} on {self.runtime}, batch {self.batch}: p50 ratio "
            f"{self.ratio:.3f} ({self.confidence:.0%} CI {self.ci_low:.3f}-{self.ci_high:.3f}, "
            f"{len(self.samples_a)} interleaved calls each): {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of ``latency.json["comparisons"]`` (summaries, not the raw samples)."""
        p50 = {"a": float(np.median(self.samples_a)), "b": float(np.median(self.samples_b))}
        return {
            "models": [self.a, self.b],
            "runtime": self.runtime,
            "runtimes": [self.runtime_a, self.runtime_b],
            "batch": self.batch,
            "ratio": round(self.ratio, 4),
            "ci_low": round(self.ci_low, 4),
            "ci_high": round(self.ci_high, 4),
            "confidence": self.confidence,
            "decision": self.decision,
            "reason": self.reason,
            "samples": len(self.samples_a),
            "p50_ms": [round(p50["a"], 5), round(p50["b"], 5)],
            "spread": [
                round(upper_spread(self.samples_a), 3),
                round(upper_spread(self.samples_b), 3),
            ],
            "timing": self.timing,
        }


def decide(ci_low: float, ci_high: float) -> Decision:
    """``faster`` when the whole interval of p50(b)/p50(a) lies below 1, ``slower`` when it
    lies above 1, else ``within_noise``."""
    if ci_low > ci_high:
        raise ValueError(f"interval low {ci_low} exceeds high {ci_high}")
    if ci_high < 1.0:
        return "faster"
    if ci_low > 1.0:
        return "slower"
    return "within_noise"


def interleaved_order(rounds: int, runs_per_round: int, *, seed: int = 0) -> list[int]:
    """The call order of :func:`compare_latency`: 0 for runner A, 1 for runner B.

    Each round alternates the two runners call by call (A, B, A, B ... or B, A, B, A ...),
    ``runs_per_round`` calls each; the runner that leads flips from round to round, starting
    with the one ``seed`` picks, so neither always goes first (a call right after the other
    model may find caches cold or warm).
    """
    if rounds < 1 or runs_per_round < 1:
        raise ValueError("rounds and runs_per_round must be >= 1")
    first = int(np.random.default_rng(seed).integers(2))
    order: list[int] = []
    for r in range(rounds):
        lead = (first + r) % 2
        order += [lead, 1 - lead] * runs_per_round
    return order


def compare_latency(
    runner_a: Runner,
    runner_b: Runner,
    x: np.ndarray,
    *,
    rounds: int = 20,
    runs_per_round: int = 10,
    warmup: int = 10,
    seed: int = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> LatencyComparison:
    """Time ``runner_a`` and ``runner_b`` on ``x`` interleaved and compare their p50s.

    After ``warmup`` untimed calls of each (interleaved too), the timed calls follow
    :func:`interleaved_order`; each sample is the wall time of one call in ms, or the
    runner's device time when every timed call of both runners returns one (as in
    :func:`~edgedistill.bench.latency.measure_latency`). The ratio p50(B)/p50(A) gets a
    percentile-bootstrap interval (:func:`~edgedistill.bench.stats.bootstrap_ratio_ci`) and
    :func:`decide` turns it into ``faster`` / ``slower`` / ``within_noise``.

    Args:
        runner_a: The baseline (e.g. the FP32 model), loaded here if needed.
        runner_b: The candidate (e.g. its INT8 version).
        x: One input batch [B, ...] both runners accept.
        rounds: Rounds; the leading runner flips every round.
        runs_per_round: Timed calls of each runner per round.
        warmup: Untimed calls of each runner first.
        seed: Picks the first round's leader and seeds the bootstrap.
        n_boot: Bootstrap replicates.
        confidence: Coverage of the interval.

    Returns:
        The comparison, with every sample (``rounds * runs_per_round`` per runner).
    """
    runners = (runner_a.load(), runner_b.load())
    for _ in range(warmup):
        for runner in runners:
            runner.infer(x)
    wall: tuple[list[float], list[float]] = ([], [])
    device: tuple[list[float | None], list[float | None]] = ([], [])
    for which in interleaved_order(rounds, runs_per_round, seed=seed):
        start = time.perf_counter_ns()
        _, device_ms = runners[which].timed_infer(x)
        wall[which].append((time.perf_counter_ns() - start) / 1e6)
        device[which].append(device_ms)
    on_device = all(d is not None for d in (*device[0], *device[1]))
    if on_device:
        samples = tuple([float(d) for d in device[i] if d is not None] for i in (0, 1))
        timing = runner_a.device_clock
    else:
        samples, timing = wall, "wall"
    ratio, low, high = bootstrap_ratio_ci(
        samples[0], samples[1], n_boot=n_boot, confidence=confidence, seed=seed
    )
    return LatencyComparison(
        a=runner_a.name,
        b=runner_b.name,
        runtime_a=runner_a.runtime,
        runtime_b=runner_b.runtime,
        batch=int(x.shape[0]),
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        decision=decide(low, high),
        samples_a=tuple(samples[0]),
        samples_b=tuple(samples[1]),
        timing=timing,
    )


def prefer_candidate(
    comparison: Mapping[str, Any], *, baseline: str = "FP32", candidate: str = "INT8"
) -> tuple[bool, str]:
    """Whether to ship the candidate of a ``latency.json`` comparison row, and why.

    Only a ``faster`` decision picks the candidate: ``within_noise`` and ``slower`` keep the
    simpler baseline, and the reason says so with the ratio and its interval.

    Returns:
        (ship the candidate, one-line reason).
    """
    ratio, low, high = comparison["ratio"], comparison["ci_low"], comparison["ci_high"]
    where = f"{comparison['runtime']} at batch {comparison.get('batch', 1)}"
    numbers = (
        f"p50 ratio {candidate}/{baseline} {ratio:.3f}, "
        f"{float(comparison.get('confidence', 0.95)):.0%} CI {low:.3f}-{high:.3f}, "
        f"{comparison.get('samples', '?')} interleaved calls each in {where}"
    )
    decision = comparison["decision"]
    if decision == "faster":
        return True, f"{candidate} is faster than {baseline} ({numbers})"
    if decision == "slower":
        return False, f"{candidate} is slower than {baseline} ({numbers})"
    return False, (
        f"{candidate} vs {baseline} is within noise ({numbers}): the simpler {baseline} model ships"
    )


# ---- is the machine busy? ------------------------------------------------------------------
def reference_workload_ms(
    *, repeats: int = 15, size: int = 160, inner: int = 4, budget_s: float = 0.25
) -> float:
    """Median wall time (ms) of a fixed float32 matmul block: a yardstick for this machine.

    ``inner`` products of two seeded ``size`` x ``size`` matrices per repeat, on numpy's BLAS
    threads: a few ms in all on an idle 2-core CPU. Timed before and after profiling and
    against the fastest time this machine has shown, it tells a busy machine from a slow
    model. On an oversubscribed machine BLAS threads can take 100x longer (measured: 0.13 ms
    idle, ~200 ms at load 9 on 2 cores), so repeats stop once ``budget_s`` is spent.
    """
    rng = np.random.default_rng(0)
    m = rng.standard_normal((size, size)).astype(np.float32)
    n = rng.standard_normal((size, size)).astype(np.float32)
    m @ n  # the first call pays BLAS set-up
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        for _ in range(inner):
            m @ n
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def calibrated_reference(cache_file: Path, machine: str, measured_ms: Sequence[float]) -> float:
    """The fastest reference time ``machine`` has shown before, then remember ``measured_ms``.

    The run's cache keeps ``{machine: best ms}``; a first measurement calibrates (and is
    returned, so a first run compares with itself). Keeping the minimum lets a calibration
    made on a busy machine improve later, never worsen.
    """
    if not measured_ms:
        raise ValueError("no reference measurement to calibrate with")
    stored: dict[str, Any] = {}
    if cache_file.is_file():
        try:
            stored = dict(read_json(cache_file))
        except (OSError, ValueError):  # a damaged cache file only loses the calibration
            stored = {}
    best_before = stored.get(machine)
    best_now = min(measured_ms)
    calibrated = float(best_before) if isinstance(best_before, int | float) else best_now
    stored[machine] = min(calibrated, best_now)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache_file, stored)
    return calibrated


def current_loadavg() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def machine_load_warning(
    *,
    loadavg: float | None,
    cpu_count: int | None,
    reference_ms: Sequence[float] = (),
    calibrated_ms: float | None = None,
    entries: Sequence[Mapping[str, Any]] = (),
    comparisons: Sequence[Mapping[str, Any]] = (),
) -> str | None:
    """One warning line when the latency numbers look disturbed by other work, else None.

    Signals (each cheap, none alone proof):

    - the 1-minute load average is above the number of cores;
    - the reference workload (:func:`reference_workload_ms`, timed before and after) took
      over ``REFERENCE_LIMIT`` times this machine's calibrated best;
    - a batch-1 measurement's p90 is over ``SPREAD_LIMIT`` times its p50 (``p90``/``p50`` of
      ``entries``; ``spread`` of ``comparisons``);
    - a student is over ``TEACHER_LIMIT`` times slower than the teacher on the same runtime
      at batch 1 (a smaller model measured slower: 95.9 vs 8.56 ms was seen under load).

    Args:
        loadavg: 1-minute load average (:func:`current_loadavg`), None when unknown.
        cpu_count: Logical cores.
        reference_ms: Reference workload times of this run (before, after).
        calibrated_ms: This machine's best reference time (:func:`calibrated_reference`).
        entries: ``latency.json["entries"]`` (model, runtime, batch, p50, p90).
        comparisons: ``latency.json["comparisons"]`` rows.
    """
    reasons: list[str] = []
    if loadavg is not None and cpu_count and loadavg > cpu_count:
        reasons.append(f"load average {loadavg:.1f} on {cpu_count} cores")
    if reference_ms and calibrated_ms and calibrated_ms > 0:
        worst = max(reference_ms) / calibrated_ms
        if worst > REFERENCE_LIMIT:
            reasons.append(f"a reference matmul ran {worst:.1f}x slower than this machine's best")
    batch1 = [e for e in entries if int(e.get("batch", 0)) == 1]
    wide = [
        f"{e['model']} ({e['runtime']})"
        for e in batch1
        if float(e["p50"]) > 0 and float(e["p90"]) / float(e["p50"]) > SPREAD_LIMIT
    ]
    for c in comparisons:
        for model, spread in zip(c["models"], c.get("spread", ()), strict=False):
            if spread > SPREAD_LIMIT:
                wide.append(f"{model} ({c['runtime']}, interleaved)")
    if wide:
        shown = ", ".join(dict.fromkeys(wide[:3]))
        more = f" and {len(wide) - 3} more" if len(wide) > 3 else ""
        reasons.append(f"p90 over {SPREAD_LIMIT:g}x p50 for {shown}{more}")
    teacher = {str(e["runtime"]): float(e["p50"]) for e in batch1 if e["model"] == "teacher"}
    for e in batch1:
        base = teacher.get(str(e["runtime"]))
        if e["model"] != "teacher" and base and float(e["p50"]) > TEACHER_LIMIT * base:
            reasons.append(
                f"{e['model']} ({e['runtime']}) measured {float(e['p50']):.3g} ms against the "
                f"teacher's {base:.3g} ms"
            )
    if not reasons:
        return None
    return (
        "latency may be disturbed by other work on this machine ("
        + "; ".join(reasons)
        + "): re-run the profile stage on an idle machine before trusting small differences"
    )


__all__ = [
    "LatencyComparison",
    "calibrated_reference",
    "compare_latency",
    "current_loadavg",
    "decide",
    "interleaved_order",
    "machine_load_warning",
    "prefer_candidate",
    "reference_workload_ms",
]
