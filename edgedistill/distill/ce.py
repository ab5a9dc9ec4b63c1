"""Cross-entropy with the labels, as a loss term (``ce``).

Samples without a label (-1) are left out; a batch without any labelled sample adds nothing
(logged as 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgedistill.distill.terms import Term, TermBatch, TermConfig, register_term


@register_term("ce")
class CETerm(Term[TermConfig]):
    """``ce``: cross-entropy of the student's logits with the labels it has."""

    needs = frozenset({"logits"})

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor | None:
        assert batch.logits is not None
        labelled = batch.targets >= 0  # -1 marks a sample without a label
        if not bool(labelled.any()):
            return None
        return F.cross_entropy(batch.logits[labelled], batch.targets[labelled])
