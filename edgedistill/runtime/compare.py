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
