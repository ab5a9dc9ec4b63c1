"""Normalised L2 embedding distillation.

The student embedding is pulled towards the direction of the teacher embedding; only the
directions matter, both vectors are L2-normalised first:

    L = mean_b ‖ s_b/‖s_b‖ − t_b/‖t_b‖ ‖²  =  mean_b (2 − 2·cos(s_b, t_b)).

This is the regression loss of BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020,
arXiv:2006.07733, eq. 2) used between a student and a frozen teacher; it is invariant to the
scale of either embedding and lies in [0, 4].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.distill.crossmodal import EmbeddingTerm
from edgedistill.distill.infonce import check_embedding_pair
from edgedistill.distill.terms import TermConfig, register_term


def normalized_l2_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Squared distance between L2-normalised student and teacher embeddings.

    Args:
        student_emb: [B, D] student embeddings (any non-zero scale).
        teacher_emb: [B, D] teacher embeddings; treated as a constant (no gradient).

    Returns:
        Scalar tensor: mean over the batch of ‖ŝ − t̂‖² = 2 − 2·cos(s, t). Zero when each
        student row is a positive multiple of its teacher row. A zero row is normalised to zero
        (``F.normalize`` clamps the norm at 1e-12), which gives that row a loss of 1.
    """
    check_embedding_pair(student_emb, teacher_emb, "normalized_l2_loss")
    s = F.normalize(student_emb, dim=-1)
    t = F.normalize(teacher_emb.detach(), dim=-1)
    return (s - t).pow(2).sum(dim=-1).mean()


class NormalizedL2Loss(nn.Module):
    """Module form of :func:`normalized_l2_loss` (no hyper-parameters)."""

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        return normalized_l2_loss(student_emb, teacher_emb)


@register_term("l2")
class L2Term(EmbeddingTerm[TermConfig]):
    """``l2``: :func:`normalized_l2_loss` on the projected student features (no options)."""

    def embedding_loss(self, teacher_dim: int) -> nn.Module:
        return NormalizedL2Loss()
