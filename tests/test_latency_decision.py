"""Latency decisions that hold under noise: bootstrap intervals, interleaved timing, the
within-noise rule (the simpler FP32 model ships), load warnings, and a tiny run's summary."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from edgedistill.bench.compare import (
    LatencyComparison,
    calibrated_reference,
    compare_latency,
    decide,
    interleaved_order,
    machine_load_warning,
    prefer_candidate,
    reference_workload_ms,
)
from edgedistill.bench.latency import measure_latency
from edgedistill.bench.stats import bootstrap_ratio_ci, upper_spread
from edgedistill.config import Recipe
from edgedistill.pipeline.run import run_pipeline
from edgedistill.pipeline.stages.bundle import FP32_FILE, INT8_FILE, recommend
from edgedistill.runtime.base import Runner


# ---- bootstrap interval ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_finds_a_known_ratio(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.lognormal(mean=-2.5, sigma=0.3, size=300)  # ~0.08 ms, right-skewed like latency
    b = 1.5 * rng.lognormal(mean=-2.5, sigma=0.3, size=300)
    ratio, low, high = bootstrap_ratio_ci(a, b, n_boot=1000, seed=seed)
    assert low <= ratio <= high
    assert low <= 1.5 <= high
    assert low > 1.0  # the slowdown is real and the interval says so
    assert ratio == pytest.approx(float(np.median(b) / np.median(a)))


def test_bootstrap_of_identical_distributions_contains_one() -> None:
    """Same samples reordered: ratio exactly 1 inside the interval. Independent draws from
    one distribution: the 95% interval misses 1 rarely (false alarms near 5%, not more)."""
    rng = np.random.default_rng(5)
    a = rng.lognormal(mean=-2.5, sigma=0.4, size=200)
    ratio, low, high = bootstrap_ratio_ci(a, rng.permutation(a), n_boot=1000)
    assert ratio == 1.0 and low < 1.0 < high
    within = 0
    for seed in range(40):
        draw = np.random.default_rng(1000 + seed)
        a, b = draw.lognormal(-2.5, 0.4, 200), draw.lognormal(-2.5, 0.4, 200)
        _, low, high = bootstrap_ratio_ci(a, b, n_boot=500, seed=seed)
        within += decide(low, high) == "within_noise"
    assert within >= 35


def test_bootstrap_coverage_is_near_nominal() -> None:
    """Over 40 independent experiments with a true median ratio of 1.2, the 90% interval
    holds 1.2 in most of them (percentile bootstrap of a median: roughly nominal)."""
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        a = rng.lognormal(0.0, 0.3, 150)
        b = 1.2 * rng.lognormal(0.0, 0.3, 150)
        _, low, high = bootstrap_ratio_ci(a, b, n_boot=400, confidence=0.9, seed=seed)
        hits += low <= 1.2 <= high
    assert 30 <= hits <= 40


def test_bootstrap_interval_narrows_with_samples_and_is_reproducible() -> None:
    rng = np.random.default_rng(7)
    widths = []
    for n in (50, 2000):
        a, b = rng.lognormal(0, 0.3, n), rng.lognormal(0, 0.3, n)
        _, low, high = bootstrap_ratio_ci(a, b, n_boot=500, seed=3)
        widths.append(high - low)
        assert bootstrap_ratio_ci(a, b, n_boot=500, seed=3) == (_, low, high)
    assert widths[1] < widths[0] / 3


def test_bootstrap_other_statistic_and_bad_input() -> None:
    a = np.array([1.0, 1.0, 1.0, 10.0])
    b = np.array([2.0, 2.0, 2.0, 2.0])
    ratio, _, _ = bootstrap_ratio_ci(a, b, statistic=np.mean, n_boot=200)
    assert ratio == pytest.approx(2.0 / 3.25)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ratio_ci([], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ratio_ci([1.0], [1.0], confidence=1.0)
    with pytest.raises(ValueError, match="positive"):
        bootstrap_ratio_ci([0.0, 0.0], [1.0, 1.0])


def test_upper_spread_ignores_single_spikes() -> None:
    quiet = [0.07] * 199 + [40.0]  # one stall: CV would be ~4
    assert upper_spread(quiet) == pytest.approx(1.0)
    busy = [0.07] * 120 + [0.3] * 80  # a fifth of the calls waited for a core
    assert upper_spread(busy) > 2.0


# ---- decision rules ----------------------------------------------------------------------------
def test_decide_needs_the_interval_to_exclude_one() -> None:
    assert decide(0.70, 0.95) == "faster"
    assert decide(1.05, 1.30) == "slower"
    assert decide(0.80, 1.02) == "within_noise"
    assert decide(0.98, 1.0) == "within_noise"  # touching 1 is not excluding it
    with pytest.raises(ValueError):
        decide(1.1, 0.9)


def _row(decision: str, ratio: float, low: float, high: float) -> dict[str, Any]:
    return {
        "models": ["student-pruned", "student-pruned-int8"],
        "runtime": "onnxruntime",
        "runtimes": ["onnxruntime", "onnxruntime"],
        "batch": 1,
        "ratio": ratio,
        "ci_low": low,
        "ci_high": high,
        "confidence": 0.95,
        "decision": decision,
        "samples": 200,
    }


def test_within_noise_ships_the_simpler_fp32_model_even_when_int8_p50_is_lower() -> None:
    """The measured flip: a single p50 comparison says INT8 (0.036 vs 0.043 ms); the
    interleaved comparison's interval includes 1, so FP32 ships and the reason says why."""
    assert recommend(0.043, 0.036)[0] == INT8_FILE  # the single-p50 rule
    file, reason = recommend(0.043, 0.036, _row("within_noise", 0.93, 0.81, 1.06))
    assert file == FP32_FILE
    assert "within noise" in reason and "FP32 model ships" in reason
    assert "0.930" in reason and "0.810-1.060" in reason


def test_faster_and_slower_comparisons_decide_against_the_single_p50() -> None:
    file, reason = recommend(0.036, 0.043, _row("faster", 0.8, 0.7, 0.9))
    assert file == INT8_FILE and reason.startswith("INT8 is faster than FP32")
    file, reason = recommend(0.061, 0.082, _row("slower", 1.3, 1.2, 1.4))
    assert file == FP32_FILE and reason.startswith("INT8 is slower than FP32")
    assert recommend(0.04, None, _row("faster", 0.8, 0.7, 0.9))[0] == FP32_FILE  # no INT8
    ship, _ = prefer_candidate(_row("within_noise", 0.9, 0.8, 1.01))
    assert ship is False


# ---- interleaving --------------------------------------------------------------------------------
class FakeRunner(Runner):
    """A runner that logs its calls and reports a scripted device time per call."""

    runtime = "fake"
    device_clock = "fake-clock"

    def __init__(self, name: str, log: list[str], cost: Callable[[int], float]) -> None:
        super().__init__(name)
        self.log, self.cost = log, cost

    def _load(self) -> None:
        pass

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.log.append(self.name)
        return np.zeros((x.shape[0], 2), np.float32)

    def timed_infer(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        out = self.infer(x)
        return out, self.cost(len(self.log))  # the global call index: load drifts over time


X = np.zeros((1, 4), np.float32)


def test_interleaved_order_alternates_and_flips_the_leader() -> None:
    order = interleaved_order(4, 3, seed=0)
    assert len(order) == 4 * 3 * 2 and order.count(0) == order.count(1) == 12
    rounds = [order[i * 6 : (i + 1) * 6] for i in range(4)]
    for r in rounds:
        assert all(r[i] != r[i + 1] for i in range(5))  # A, B, A, B ... within a round
    leaders = [r[0] for r in rounds]
    assert leaders[0] != leaders[1] and leaders[0] == leaders[2] != leaders[3]
    assert {interleaved_order(1, 1, seed=s)[0] for s in range(8)} == {0, 1}  # seed picks


def test_compare_latency_calls_the_runners_interleaved() -> None:
    log: list[str] = []
    a = FakeRunner("A", log, lambda i: 1.0)
    b = FakeRunner("B", log, lambda i: 0.5)
    result = compare_latency(a, b, X, rounds=4, runs_per_round=3, warmup=2, seed=0, n_boot=200)
    assert log[:4] == ["A", "B", "A", "B"]  # warm-up, interleaved too
    timed = log[4:]
    expected = ["A" if w == 0 else "B" for w in interleaved_order(4, 3, seed=0)]
    assert timed == expected
    firsts = {timed[i * 6] for i in range(4)}
    assert firsts == {"A", "B"}  # neither always goes first
    assert len(result.samples_a) == len(result.samples_b) == 12
    assert result.timing == "fake-clock"
    assert result.ratio == pytest.approx(0.5) and result.decision == "faster"
    row = result.to_dict()
    assert row["models"] == ["A", "B"] and row["runtime"] == "fake" and row["samples"] == 12
    assert row["p50_ms"] == [1.0, 0.5] and "B is faster" in row["reason"]


def test_interleaving_cancels_a_load_drift_that_fools_sequential_timing() -> None:
    """Two equally fast models while the machine's load triples over the measurement:
    timed one after the other, the second looks ~2x slower; interleaved, within noise."""

    def drifting(total: int) -> Callable[[int], float]:
        return lambda i: 1.0 + 3.0 * min(i, total) / total

    log: list[str] = []
    cost = drifting(400)
    first = measure_latency(FakeRunner("A", log, cost), X, warmup=0, runs=200)
    second = measure_latency(FakeRunner("B", log, cost), X, warmup=0, runs=200)
    assert second["p50"] / first["p50"] > 1.5  # the sequential verdict: B is much slower

    log = []
    cost = drifting(400)
    a, b = FakeRunner("A", log, cost), FakeRunner("B", log, cost)
    result = compare_latency(a, b, X, rounds=20, runs_per_round=10, warmup=0, n_boot=500)
    assert result.ratio == pytest.approx(1.0, abs=0.02)
    assert result.decision == "within_noise"
    assert isinstance(result, LatencyComparison)


# ---- load detection -------------------------------------------------------------------------------
def _entry(model: str, runtime: str, p50: float, p90: float, batch: int = 1) -> dict[str, Any]:
    return {"model": model, "runtime": runtime, "batch": batch, "p50": p50, "p90": p90}


def test_load_warning_signals() -> None:
    quiet = [_entry("teacher", "torch", 8.56, 9.0), _entry("student", "torch", 0.4, 0.45)]
    assert machine_load_warning(loadavg=1.2, cpu_count=2, entries=quiet) is None
    assert machine_load_warning(loadavg=None, cpu_count=None) is None

    busy = machine_load_warning(loadavg=5.0, cpu_count=2, entries=quiet)
    assert busy is not None and "load average 5.0 on 2 cores" in busy
    assert "re-run the profile stage" in busy

    slow_ref = machine_load_warning(
        loadavg=0.5, cpu_count=2, reference_ms=[2.0, 7.5], calibrated_ms=2.5
    )
    assert slow_ref is not None and "3.0x slower" in slow_ref
    assert (
        machine_load_warning(loadavg=0.5, cpu_count=2, reference_ms=[2.6, 3.0], calibrated_ms=2.5)
        is None
    )

    # the measured case: the student's torch p50 95.9 ms against the teacher's 8.56 ms
    implausible = [_entry("teacher", "torch", 8.56, 9.0), _entry("student", "torch", 95.9, 99.0)]
    line = machine_load_warning(loadavg=0.5, cpu_count=2, entries=implausible)
    assert line is not None and "student (torch) measured 95.9 ms" in line

    wide = [_entry("student", "onnxruntime", 0.05, 0.2), _entry("x", "torch", 1.0, 9.0, batch=8)]
    line = machine_load_warning(loadavg=0.5, cpu_count=2, entries=wide)
    assert line is not None and "student (onnxruntime)" in line and "x (torch)" not in line

    rows = [{"models": ["s", "s-int8"], "runtime": "onnxruntime", "spread": [1.1, 2.6]}]
    line = machine_load_warning(loadavg=0.5, cpu_count=2, comparisons=rows)
    assert line is not None and "s-int8 (onnxruntime, interleaved)" in line


def test_reference_calibration_keeps_the_machines_best(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "reference_workload.json"
    assert calibrated_reference(cache, "m1", [3.0, 2.0]) == 2.0  # first run calibrates
    assert calibrated_reference(cache, "m1", [6.0, 6.5]) == 2.0  # a busy run compares with it
    assert calibrated_reference(cache, "m1", [1.5, 1.8]) == 2.0
    assert calibrated_reference(cache, "m1", [9.0]) == 1.5  # ...and the best improved
    assert calibrated_reference(cache, "m2", [4.0]) == 4.0  # another machine, its own value
    assert json.loads(cache.read_text()) == {"m1": 1.5, "m2": 4.0}


def test_reference_workload_is_cheap() -> None:
    import time

    start = time.perf_counter()
    ms = reference_workload_ms()
    assert ms > 0 and time.perf_counter() - start < 1.5


# ---- a tiny run end to end --------------------------------------------------------------------------
def test_tiny_run_records_ratio_interval_decision_and_load_warning(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    recipe = {**tiny_recipe_dict, "prune": {"enabled": False}}
    out = tmp_path / "run"
    stream = io.StringIO()
    run_pipeline(Recipe.from_dict(recipe), out, console=Console(file=stream, width=400))

    latency = json.loads((out / "profile" / "latency.json").read_text())
    pairs = {(tuple(c["models"]), c["runtime"]): c for c in latency["comparisons"]}
    assert set(pairs) == {
        (("student", "student-int8"), "onnxruntime"),
        (("student", "student"), "torch vs onnxruntime"),
    }
    for c in pairs.values():
        assert c["ci_low"] <= c["ratio"] <= c["ci_high"] and c["samples"] == 100
        assert c["decision"] == decide(c["ci_low"], c["ci_high"])
    assert "load average 64.0" in latency["load_warning"]
    assert latency["load"]["loadavg_1min"] == 64.0 and len(latency["load"]["reference_ms"]) == 2
    assert (out / "cache" / "reference_workload.json").is_file()
    assert "load average 64.0" in stream.getvalue().replace("\n", "")

    summary = json.loads((out / "summary.json").read_text())
    rec = summary["recommended"]
    cmp = pairs[(("student", "student-int8"), "onnxruntime")]
    assert (rec["ratio"], rec["ci_low"], rec["ci_high"]) == (
        cmp["ratio"],
        cmp["ci_low"],
        cmp["ci_high"],
    )
    assert rec["decision"] == cmp["decision"] and rec["basis"] == "interleaved comparison"
    assert rec["file"] == ("model-int8.onnx" if cmp["decision"] == "faster" else "model.onnx")
    assert f"{cmp['ratio']:.3f}" in rec["reason"]
    assert summary["latency_warning"] == latency["load_warning"]
    assert len(summary["latency_comparisons"]) == 2
    manifest = json.loads((out / "bundle" / "app" / "manifest.json").read_text())
    assert manifest["recommended"] == rec["file"]
    if cmp["decision"] == "within_noise":
        assert "within noise" in (out / "report" / "report.md").read_text()
