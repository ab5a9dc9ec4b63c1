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
