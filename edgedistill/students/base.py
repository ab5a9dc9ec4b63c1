"""The student contract and the student registry."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from edgedistill.registry import Registry


@runtime_checkable
class Student(Protocol):
    """What every student family provides (DESIGN.md, convention 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def current_config(self) -> dict[str, Any]: ...

    def to_deploy(self) -> nn.Module: ...


STUDENTS: Registry[Any] = Registry("model architecture")


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Build a registered architecture from its constructor arguments."""
    factory = STUDENTS.get(arch)
    try:
        model: nn.Module = factory(**config)
    except TypeError as exc:
        from edgedistill.errors import RecipeError

        raise RecipeError(f"model '{arch}': bad arguments {config}: {exc}") from None
    return model


class PooledClassifier(nn.Module):
    """Stages → global average pooling → dropout → linear head, shared by the CNN families.

    Subclasses build ``self.config`` (constructor arguments), ``self.pool``, ``self.dropout``
    and ``self.classifier`` and implement :meth:`stage_modules`; a family with a front end
    or stem overrides :meth:`enter`. This class then provides ``forward``,
    ``forward_features``, ``forward_intermediates`` and ``reset_classifier``.
    """

    config: dict[str, Any]
    pool: nn.Module
    dropout: nn.Module
    classifier: nn.Linear

    def stage_modules(self) -> list[nn.Module]:
        """The stages whose outputs are the intermediate features, in order."""
        raise NotImplementedError

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs before the stages: (their input, features to report before theirs)."""
        return x, []

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, K] and every reported feature map (stage outputs)."""
        x, feats = self.enter(x)
        for stage in self.stage_modules():
            x = stage(x)
            feats.append(x)
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1))), feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> pooled features [B, last width]."""
        x, _ = self.enter(x)
        for stage in self.stage_modules():
            x = stage(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs."""
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)
        self.config["num_classes"] = num_classes


def fold_batch_norm_(owner: nn.Module) -> None:
    """Fold ``owner.bn`` (eval statistics) into ``owner.conv`` in place; idempotent.

    For conv+BN pairs held as ``conv`` / ``bn`` attributes; the BN becomes an Identity.
    """
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    bn = getattr(owner, "bn", None)
    if isinstance(bn, _BatchNorm):
        owner.conv = fuse_conv_bn_eval(owner.conv, bn)  # type: ignore[arg-type,type-var]
        owner.bn = nn.Identity()
