"""Verification gates per precision, written once for every runtime and engine.

A :class:`Gate` is what a candidate's outputs must satisfy against a reference's outputs on
the same inputs; :func:`gate_for` builds it from the recipe's ``gates`` section for one
precision, and :func:`check_parity` / :func:`check_accuracy_drop` apply it. The verify stage
checks its FP32 exports with them, and engines verified on a GPU (torch-cuda fp16/bf16,
TensorRT, ONNX Runtime CUDA/TensorRT) use the same functions, so every runtime is held to
the same numbers.

- ``fp32``: ``max |candidate - reference| <= gates.fp32_max_abs_diff`` (output units).
- ``fp16`` / ``bf16``: ``max |candidate - reference| / max |reference|`` within
  ``gates.fp16_max_abs_diff`` / ``gates.bf16_max_abs_diff`` (the error of a float format
  scales with the magnitude it holds; see :class:`edgedistill.config.GatesConfig`), and
  top-1 agreement of at least ``gates.min_top1_agreement`` percent.
- ``int8``: no element-wise bound (8-bit activations move every logit); the task metric may
  drop by at most ``gates.int8_max_accuracy_drop`` points (:func:`check_accuracy_drop`).

A NaN anywhere fails every bound (NaN compares False).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgedistill.config import GatesConfig
from edgedistill.errors import RecipeError
from edgedistill.metrics import max_abs_diff

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Gate:
    """The bounds one precision is held to (None: that bound is not checked).

    Attributes:
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"``.
        max_abs_diff: Largest allowed ``max |candidate - reference|`` in output units.
        max_relative_diff: Largest allowed ``max |candidate - reference| / max |reference|``.
        min_top1_agreement: Smallest allowed percentage of decisions with the same arg-max.
        max_accuracy_drop: Largest allowed drop of the task metric, in its points.
    """

    precision: str
    max_abs_diff: float | None = None
    max_relative_diff: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None

    @property
    def checks_outputs(self) -> bool:
        """Whether the gate bounds the outputs themselves (what :func:`check_parity` checks)."""
        return any(
            b is not None
            for b in (self.max_abs_diff, self.max_relative_diff, self.min_top1_agreement)
        )


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate.

    Attributes:
        passed: Whether every bound of the gate holds.
        max_abs_diff: ``max |candidate - reference|`` (NaN when either holds a NaN there).
        relative: ``max_abs_diff / max |reference|`` (0 when both are all zeros).
        agreement: Percentage of decisions (samples of [N, K] outputs, positions of
            [N, T, K] ones) whose arg-max over the last axis agrees; None when the outputs are
            not class scores (fewer than 2 dims, or one score per sample).
        message: One line: the first failed bound with where it failed, or what held.
        worst_index: Index of the largest difference ([sample, output, ...]).
        samples: Number of samples compared (the first axis).
        accuracy_drop: Reference metric minus candidate metric (:func:`check_accuracy_drop`).
    """

    passed: bool
    max_abs_diff: float
    relative: float
    agreement: float | None
    message: str
    worst_index: tuple[int, ...] = ()
    samples: int = 0
    accuracy_drop: float | None = None


def gate_for(precision: str, gates: GatesConfig) -> Gate:
    """The gate for ``precision`` from the recipe's thresholds.

    Raises:
        RecipeError: An unknown precision.
    """
    if precision == "fp32":
        return Gate("fp32", max_abs_diff=gates.fp32_max_abs_diff)
    if precision in ("fp16", "bf16"):
        bound = gates.fp16_max_abs_diff if precision == "fp16" else gates.bf16_max_abs_diff
        return Gate(precision, max_relative_diff=bound, min_top1_agreement=gates.min_top1_agreement)
    if precision == "int8":
        return Gate("int8", max_accuracy_drop=gates.int8_max_accuracy_drop)
    raise RecipeError(f"no verification gate for precision {precision!r}; use one of {PRECISIONS}")


def scaled_diff(
    reference: np.ndarray, candidate: np.ndarray
) -> tuple[float, tuple[int, ...], float]:
    """``(max |candidate - reference|, where, that divided by max |reference|)``.

    The ratio is the error relative to the output scale; when the reference is all zeros it is
    0 if the candidate is too and infinite otherwise. Computed in float64.

    Raises:
        ValueError: The shapes differ.
    """
    diff, index = max_abs_diff(reference, candidate)
    ref = np.asarray(reference, dtype=np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    if np.isnan(diff) or np.isnan(scale):
        return diff, index, float("nan")
    if scale > 0:
        return diff, index, diff / scale
    return diff, index, 0.0 if diff == 0 else float("inf")


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, int, int] | None:
    """Top-1 agreement over the last axis: ``(percent, changed, decisions)``.

    A decision is one sample of [N, K] outputs (one position of [N, T, K] ones); ``changed``
    counts the decisions whose arg-max differs. None when the outputs are not class scores
    (a 1-D array, or a single score per sample).
    """
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.ndim < 2 or ref.shape[-1] < 2 or ref.size == 0:
        return None
    same = ref.argmax(-1) == cand.argmax(-1)
    return float(same.mean() * 100.0), int((~same).sum()), int(same.size)


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    gate: Gate,
    *,
    what: str = "candidate",
    runtime: str = "candidate",
    against: str = "torch",
) -> GateResult:
    """Check ``candidate`` outputs against ``reference`` outputs on the same inputs.

    Args:
        reference: [N, ...] reference outputs (torch, or the FP32 ONNX model).
        candidate: Outputs of the model under test, same shape.
        gate: From :func:`gate_for`; must bound the outputs (not an ``int8`` gate).
        what: The model named in the message; runtime: where it ran; against: the reference.

    Returns:
        The result; its message names the model, runtime, sample and output of a failure.

    Raises:
        ValueError: The shapes differ, or the gate bounds only a task metric.
    """
    if not gate.checks_outputs:
        raise ValueError(
            f"the {gate.precision} gate bounds the task metric only: use check_accuracy_drop"
        )
    diff, index, relative = scaled_diff(reference, candidate)
    decisions = top1_agreement(reference, candidate)
    agreement = None if decisions is None else decisions[0]
    samples = int(np.asarray(reference).shape[0]) if np.ndim(reference) else 1

    def result(passed: bool, message: str) -> GateResult:
        return GateResult(passed, diff, relative, agreement, message, index, samples)

    sample, *output = index or (0,)
    where = f"at sample {sample}, output {output[0] if output else 0}"
    values = (
        f"({against} {float(np.asarray(reference)[index]):.6g}, "
        f"{runtime} {float(np.asarray(candidate)[index]):.6g})"
    )
    if gate.max_abs_diff is not None and not diff <= gate.max_abs_diff:
        return result(
            False,
            f"{what} in {runtime} differs from {against} by {diff:.3g} > {gate.max_abs_diff:g} "
            f"{where} {values}",
        )
    if gate.max_relative_diff is not None and not relative <= gate.max_relative_diff:
        return result(
            False,
            f"{what} in {runtime} ({gate.precision}) differs from {against} by {relative:.3g} of "
            f"the output scale > {gate.max_relative_diff:g} (max |diff| {diff:.3g} {where}) "
            f"{values}",
        )
    if gate.min_top1_agreement is not None and decisions is not None:
        percent, changed, total = decisions
        if not percent >= gate.min_top1_agreement:
            return result(
                False,
                f"{what} in {runtime} ({gate.precision}) agrees with {against} on top-1 for "
                f"{percent:.2f}% < {gate.min_top1_agreement:g}% of decisions "
                f"({changed} of {total} changed)",
            )
    shown = f"max |diff| {diff:.3g}, {relative:.3g} of the output scale"
    if agreement is not None:
        shown += f", top-1 agreement {agreement:.2f}%"
    return result(True, f"{what} in {runtime} ({gate.precision}) matches {against}: {shown}")


def check_accuracy_drop(
    reference_metric: float,
    candidate_metric: float,
    gate: Gate,
    *,
    what: str = "candidate",
    against: str = "reference",
    metric: str = "top-1",
) -> GateResult:
    """The task-metric gate: ``reference_metric - candidate_metric <= gate.max_accuracy_drop``.

    Args:
        reference_metric: The source model's metric (points, e.g. percent top-1).
        candidate_metric: The quantized (or otherwise reduced) model's metric.
        gate: A gate with ``max_accuracy_drop`` (the ``int8`` gate).
        what: The candidate named in the message; against: its source; metric: its name.

    Raises:
        ValueError: The gate has no ``max_accuracy_drop``.
    """
    if gate.max_accuracy_drop is None:
        raise ValueError(f"the {gate.precision} gate has no task-metric bound")
    drop = reference_metric - candidate_metric
    nan = float("nan")
    if not drop <= gate.max_accuracy_drop:  # NaN compares False: it fails
        message = (
            f"{what} loses {drop:.2f} {metric} points against {against} "
            f"(gate {gate.max_accuracy_drop:g})"
        )
        return GateResult(False, nan, nan, None, message, accuracy_drop=drop)
    message = f"{what} loses {drop:.2f} {metric} points against {against}: within the gate"
    return GateResult(True, nan, nan, None, message, accuracy_drop=drop)
