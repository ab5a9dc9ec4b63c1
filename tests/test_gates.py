"""Verification gates per precision, on hand-made outputs."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgedistill.config import GatesConfig
from edgedistill.errors import RecipeError
from edgedistill.runtime.compare import check_parity as legacy_check_parity
from edgedistill.runtime.gates import (
    Gate,
    check_accuracy_drop,
    check_parity,
    gate_for,
    scaled_diff,
    top1_agreement,
)


def _logits(n: int = 100, k: int = 10, seed: int = 0) -> np.ndarray:
    """[n, k] logits with a clear winner per sample (margin >= 1) and values up to ~10."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5.0, 5.0, (n, k))
    x[np.arange(n), rng.integers(0, k, n)] = 7.0 + rng.uniform(0, 3, n)
    return x.astype(np.float32)


def test_gates_config_defaults_and_bounds() -> None:
    gates = GatesConfig()
    assert (gates.fp16_max_abs_diff, gates.bf16_max_abs_diff) == (1e-2, 3e-2)
    assert gates.min_top1_agreement == 99.0
    assert gates.fp32_max_abs_diff == 1e-4  # unchanged
    for bad in ({"min_top1_agreement": 101}, {"fp16_max_abs_diff": 0}, {"bf16_max_abs_diff": -1}):
        with pytest.raises(ValidationError):
            GatesConfig(**bad)


def test_gate_for_each_precision() -> None:
    gates = GatesConfig(
        fp32_max_abs_diff=2e-4,
        fp16_max_abs_diff=5e-3,
        bf16_max_abs_diff=4e-2,
        min_top1_agreement=98.5,
        int8_max_accuracy_drop=0.5,
    )
    assert gate_for("fp32", gates) == Gate("fp32", max_abs_diff=2e-4)
    assert gate_for("fp16", gates) == Gate("fp16", max_relative_diff=5e-3, min_top1_agreement=98.5)
    assert gate_for("bf16", gates) == Gate("bf16", max_relative_diff=4e-2, min_top1_agreement=98.5)
    assert gate_for("int8", gates) == Gate("int8", max_accuracy_drop=0.5)
    assert not gate_for("int8", gates).checks_outputs
    with pytest.raises(RecipeError, match="'fp8'"):
        gate_for("fp8", gates)


def test_fp32_gate_is_the_old_parity_check() -> None:
    """Same verdict, numbers and message as runtime.compare.check_parity (verify.py's past)."""
    ref = _logits()
    gate = gate_for("fp32", GatesConfig())
    for bump in (5e-5, 1e-4, 2e-4):
        cand = ref.copy()
        cand[37, 4] += np.float32(bump)
        result = check_parity(ref, cand, gate, what="student", runtime="onnxruntime")
        cmp, failure = legacy_check_parity(ref, cand, 1e-4, what="student", runtime="onnxruntime")
        assert result.max_abs_diff == cmp.max_abs_diff
        assert result.max_abs_diff == pytest.approx(bump, rel=1e-2)
        assert result.worst_index == (37, 4)
        assert result.passed == (failure is None)
        if failure is not None:
            assert result.message == failure
    assert not check_parity(ref, ref + 2e-4, gate).passed
    assert check_parity(ref, ref, gate).relative == 0.0


def test_nan_fails_every_output_gate() -> None:
    ref = _logits()
    cand = ref.copy()
    cand[3, 1] = np.nan
    for precision in ("fp32", "fp16", "bf16"):
        result = check_parity(ref, cand, gate_for(precision, GatesConfig()))
        assert not result.passed, precision
        assert np.isnan(result.max_abs_diff)


def test_reduced_precision_gate_is_relative_to_the_output_scale() -> None:
    ref = _logits()
    scale = float(np.abs(ref).max())
    fp16, bf16 = gate_for("fp16", GatesConfig()), gate_for("bf16", GatesConfig())
    # an error of 0.5% of the scale everywhere passes fp16; 2% fails fp16 but passes bf16
    small = check_parity(ref, ref + 0.005 * scale, fp16)
    assert small.passed
    assert small.relative == pytest.approx(0.005, rel=1e-3)
    assert small.agreement == 100.0
    mid = ref + 0.02 * scale
    failed = check_parity(ref, mid, fp16, what="student", runtime="tensorrt", against="onnx")
    assert not failed.passed
    assert failed.relative == pytest.approx(0.02, rel=1e-3)
    assert "student in tensorrt (fp16) differs from onnx by 0.02 of the output scale" in (
        failed.message
    )
    assert check_parity(ref, mid, bf16).passed
    # the same relative error at 100x the logit scale gives the same verdict
    big = check_parity(ref * 100, mid * 100, fp16)
    assert big.relative == pytest.approx(failed.relative, rel=1e-5)
    assert big.max_abs_diff == pytest.approx(100 * failed.max_abs_diff, rel=1e-5)
    assert not big.passed


def test_reduced_precision_gate_counts_top1_flips() -> None:
    ref = _logits(n=100)
    gate = gate_for("fp16", GatesConfig())  # 99% agreement

    def flip(rows: list[int]) -> np.ndarray:
        """Make the runner-up win by a hair in ``rows`` (tiny element-wise change)."""
        cand = ref.copy()
        for r in rows:
            top, second = np.argsort(ref[r])[-1], np.argsort(ref[r])[-2]
            ref[r, second] = ref[r, top] - 1e-3  # a near tie in the reference...
            cand[r] = ref[r]
            cand[r, second] = ref[r, top] + 1e-3  # ...that the candidate resolves the other way
        return cand

    one = check_parity(ref, flip([5]), gate)
    assert one.agreement == 99.0 and one.passed
    two = check_parity(ref, flip([5, 60]), gate)
    assert two.relative < 1e-3  # element-wise it is fine...
    assert two.agreement == 98.0 and not two.passed  # ...but two decisions of 100 changed
    assert "98.00% < 99% of decisions (2 of 100 changed)" in two.message


def test_agreement_only_for_class_scores() -> None:
    assert top1_agreement(np.zeros(5), np.zeros(5)) is None  # [N]: one value per sample
    assert top1_agreement(np.zeros((5, 1)), np.ones((5, 1))) is None  # [N, 1] regression
    seq_ref = np.zeros((2, 3, 4))
    seq_ref[..., 0] = 1.0
    seq_cand = seq_ref.copy()
    seq_cand[1, 2] = [0, 2, 0, 0]
    assert top1_agreement(seq_ref, seq_cand) == (pytest.approx(100 * 5 / 6), 1, 6)
    # a regression output is held to the relative bound only
    result = check_parity(np.ones((4, 1)), np.ones((4, 1)) * 1.001, gate_for("fp16", GatesConfig()))
    assert result.passed and result.agreement is None


def test_scaled_diff_of_zero_reference() -> None:
    assert scaled_diff(np.zeros((2, 3)), np.zeros((2, 3)))[2] == 0.0
    diff, index, relative = scaled_diff(np.zeros((2, 3)), np.full((2, 3), 1e-3))
    assert index == (0, 0)
    assert diff == pytest.approx(1e-3) and relative == np.inf
    with pytest.raises(ValueError, match="shapes differ"):
        scaled_diff(np.zeros((2, 3)), np.zeros((3, 2)))


def test_int8_gate_bounds_the_task_metric() -> None:
    gate = gate_for("int8", GatesConfig(int8_max_accuracy_drop=1.0))
    with pytest.raises(ValueError, match="check_accuracy_drop"):
        check_parity(_logits(), _logits(), gate)
    ok = check_accuracy_drop(90.0, 89.5, gate, what="student-int8", against="student")
    assert ok.passed and ok.accuracy_drop == pytest.approx(0.5)
    bad = check_accuracy_drop(90.0, 88.5, gate, what="student-int8", against="student")
    assert not bad.passed
    assert bad.message == "student-int8 loses 1.50 top-1 points against student (gate 1)"
    assert check_accuracy_drop(90.0, 89.0, gate).passed  # the bound itself passes
    assert not check_accuracy_drop(90.0, float("nan"), gate).passed
    with pytest.raises(ValueError, match="no task-metric bound"):
        check_accuracy_drop(90.0, 89.0, gate_for("fp16", GatesConfig()))
