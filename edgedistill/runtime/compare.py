"""Compare two runners' outputs on the same inputs (written once for every backend)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgedistill.metrics import agreement, max_abs_diff
from edgedistill.runtime.base import Runner


@dataclass(frozen=True)
class Comparison:
    """How far a candidate's outputs are from a reference's."""

    max_abs_diff: float
    worst_index: tuple[int, ...]
    reference_value: float
    candidate_value: float
    top1_agreement: float
    samples: int


def run_batched(runner: Runner, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``runner`` over [N, ...] inputs, in batches."""
    return np.concatenate(
        [runner.infer(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Max absolute difference (with where it happens) and top-1 agreement of [N, K] outputs."""
    diff, index = max_abs_diff(reference, candidate)
    return Comparison(
        max_abs_diff=diff,
        worst_index=index,
        reference_value=float(reference[index]),
        candidate_value=float(candidate[index]),
        top1_agreement=agreement(reference, candidate),
        samples=int(reference.shape[0]),
    )


def check_parity(
    reference: np.ndarray, candidate: np.ndarray, tolerance: float, *, what: str, runtime: str
) -> tuple[Comparison, str | None]:
    """The FP32 parity gate, written once: ``max |candidate - reference| <= tolerance``.

    Args:
        reference: [N, K] torch outputs; candidate: the exported model's outputs.
        tolerance: Largest allowed absolute difference (NaN always fails).
        what: The model (or graph) named in the failure; runtime: where it ran.

    Returns:
        The comparison, and a one-line failure naming the model, runtime, sample and output
        (None when the gate holds).
    """
    cmp = compare_outputs(reference, candidate)
    if cmp.max_abs_diff <= tolerance:  # NaN compares False: it fails
        return cmp, None
    sample, *output = cmp.worst_index
    return cmp, (
        f"{what} in {runtime} differs from torch by {cmp.max_abs_diff:.3g} > {tolerance:g} at "
        f"sample {sample}, output {output[0] if output else 0} (torch {cmp.reference_value:.6g}, "
        f"{runtime} {cmp.candidate_value:.6g})"
    )
