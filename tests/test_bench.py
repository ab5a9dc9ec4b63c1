"""Latency statistics and the timed loop (with a fake clock and a counting runner)."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

import edgedistill.bench.latency as latency_module
from edgedistill.bench.latency import measure_latency
from edgedistill.bench.stats import latency_summary, percentile, speedup
from edgedistill.errors import StageError
from edgedistill.runtime.base import Runner


@pytest.mark.parametrize("q", [0, 1, 5, 10, 25, 33.3, 50, 66.6, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy_on_1_to_100(q: float) -> None:
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), abs=1e-9)


@pytest.mark.parametrize("q", [0, 10, 37.5, 50, 90, 99, 100])
def test_percentile_matches_numpy_on_unsorted_random(q: float) -> None:
    rng = np.random.default_rng(0)
    samples = rng.exponential(2.0, 37).tolist()
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12)


def test_percentile_hand_cases() -> None:
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)  # rank 2.7 -> 3 + 0.7
    assert percentile([4, 1, 3, 2], 25) == pytest.approx(1.75)  # order does not matter
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7.5], 0) == percentile([7.5], 63) == percentile([7.5], 100) == 7.5


def test_percentile_does_not_mutate_input() -> None:
    samples = [3.0, 1.0, 2.0]
    percentile(samples, 50)
    assert samples == [3.0, 1.0, 2.0]


@pytest.mark.parametrize("q", [-0.1, 100.1, float("nan")])
def test_percentile_rejects_q_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0, 2.0], q)


def test_percentile_rejects_empty() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary_known_samples() -> None:
    samples = [1.0, 2.0, 3.0, 4.0]
    s = latency_summary(samples)
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(1.25))  # population std: Σ(x-2.5)²/4 = 5/4
    assert s["std"] == pytest.approx(float(np.std(samples)))
    assert s["min"] == 1.0 and s["max"] == 4.0
    assert s["runs"] == 4.0
    assert s["p50"] == pytest.approx(2.5)
    assert s["p90"] == pytest.approx(3.7)
    assert s["p99"] == pytest.approx(3.97)
    assert set(s) == {"p50", "p90", "p99", "mean", "std", "min", "max", "runs"}


def test_latency_summary_constant_samples() -> None:
    s = latency_summary([0.5] * 10)
    assert s["std"] == 0.0
    assert s["p50"] == s["p99"] == s["min"] == s["max"] == s["mean"] == 0.5


@pytest.mark.parametrize("samples", [[], [1.0, -0.1], [float("nan"), 1.0]])
def test_latency_summary_rejects_bad_samples(samples: list[float]) -> None:
    with pytest.raises(ValueError):
        latency_summary(samples)


def test_speedup() -> None:
    assert speedup(10.0, 2.0) == pytest.approx(5.0)
    assert speedup(1.0, 4.0) == pytest.approx(0.25)
    for bad in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (1.0, -2.0)):
        with pytest.raises(ValueError):
            speedup(*bad)


class FakeClock:
    """A perf_counter_ns that only moves when the fake runner says so."""

    def __init__(self) -> None:
        self.now = 0

    def perf_counter_ns(self) -> int:
        return self.now


class CountingRunner(Runner):
    """_infer advances the fake clock: warm-up calls by 1 s, timed call i by (i + 1) ms."""

    runtime = "fake"

    def __init__(self, clock: FakeClock, warmup: int) -> None:
        super().__init__("fake-model")
        self.clock = clock
        self.warmup = warmup
        self.calls = 0
        self.loads = 0
        self.input_shape = (None, 3)

    def _load(self) -> None:
        self.loads += 1

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.warmup:
            self.clock.now += 1_000_000_000
        else:
            self.clock.now += (self.calls - self.warmup) * 1_000_000
        return np.zeros((x.shape[0], 2), dtype=np.float32)


def test_measure_latency_counts_calls_and_times_only_timed_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(
        latency_module, "time", types.SimpleNamespace(perf_counter_ns=clock.perf_counter_ns)
    )
    runner = CountingRunner(clock, warmup=3)
    ticks: list[int] = []
    x = np.zeros((4, 3), dtype=np.float32)
    stats = measure_latency(runner, x, warmup=3, runs=10, on_run=lambda: ticks.append(runner.calls))
    assert runner.loads == 1
    assert runner.calls == 3 + 10
    assert ticks == list(range(4, 14))  # on_run after each timed call, never during warm-up
    assert stats["runs"] == 10.0
    # timed samples are exactly 1, 2, ..., 10 ms; the 1 s warm-up calls are excluded
    samples = [float(i) for i in range(1, 11)]
    assert stats["max"] == pytest.approx(10.0)
    assert stats["min"] == pytest.approx(1.0)
    assert stats["mean"] == pytest.approx(5.5)
    assert stats["p50"] == pytest.approx(float(np.percentile(samples, 50)))
    assert stats["p90"] == pytest.approx(float(np.percentile(samples, 90)))
    assert stats["std"] == pytest.approx(float(np.std(samples)))
    assert stats["batch"] == 4.0
    assert stats["per_sample_p50"] == pytest.approx(5.5 / 4)


def test_measure_latency_real_clock_with_sleeping_runner() -> None:
    import time

    class Sleeper(Runner):
        runtime = "sleep"

        def __init__(self) -> None:
            super().__init__("sleeper")
            self.calls = 0

        def _load(self) -> None:
            pass

        def _infer(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            time.sleep(0.002)
            return x

    runner = Sleeper()
    stats = measure_latency(runner, np.zeros((1, 2), dtype=np.float32), warmup=2, runs=5)
    assert runner.calls == 7
    assert stats["runs"] == 5.0
    assert stats["min"] >= 2.0  # sleep(2 ms) never returns early; samples are in ms
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["max"]


def test_measure_latency_rejects_zero_runs() -> None:
    runner = CountingRunner(FakeClock(), warmup=0)
    with pytest.raises(ValueError, match="runs"):
        measure_latency(runner, np.zeros((1, 3), dtype=np.float32), warmup=0, runs=0)


def test_runner_checks_input_before_infer() -> None:
    runner = CountingRunner(FakeClock(), warmup=0)
    with pytest.raises(StageError, match="float64"):
        runner.infer(np.zeros((1, 3), dtype=np.float64))
    with pytest.raises(StageError, match="shape"):
        runner.infer(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(StageError, match="shape"):
        runner.infer(np.zeros((1, 3, 1), dtype=np.float32))
    assert runner.calls == 0
    assert runner.infer(np.zeros((5, 3), dtype=np.float32)).shape == (5, 2)
    assert runner.calls == 1 and runner.loads == 1


def test_percentile_and_summary_accept_numpy_arrays() -> None:
    samples = np.array([1.0, 2.0, 3.0, 4.0])
    assert percentile(samples, 90) == pytest.approx(float(np.percentile(samples, 90)))
    assert latency_summary(samples)["mean"] == pytest.approx(2.5)
