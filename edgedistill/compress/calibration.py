"""Scores that compare a compressed model with its reference on representative inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.metrics import predict_logits


def output_distortion(reference: nn.Module, x: torch.Tensor) -> Callable[[nn.Module], float]:
    """KL(reference ‖ candidate) of the output distributions on ``x`` ([N, *input] model
    inputs): how much pruning changed what the model predicts (lower is better)."""
    reference_log_p = torch.log_softmax(torch.as_tensor(predict_logits(reference, x)), dim=-1)

    def score(candidate: nn.Module) -> float:
        log_p = torch.log_softmax(torch.as_tensor(predict_logits(candidate, x)), dim=-1)
        return float(F.kl_div(log_p, reference_log_p, log_target=True, reduction="batchmean"))

    return score
