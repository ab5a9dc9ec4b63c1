"""Vision students (and teachers): a plain conv-BN-ReLU network family with a width multiplier.

``ConvNet(widths=(16, 32, 64))`` is a compact student for 28x28 grayscale images;
``ConvNet(widths=(64, 128, 256), blocks_per_stage=2, residual=True)`` is the default teacher
architecture. Both honour the student contract of :mod:`edgedistill.students.base`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgedistill.students.base import STUDENTS, PooledClassifier


class ConvBNReLU(nn.Sequential):
    """3x3 convolution, batch norm and ReLU; ``stride`` 2 halves the resolution."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Stage(nn.Module):
    """``blocks`` ConvBNReLU layers; the first may downsample. With ``residual`` the layers after
    the first are summed with their input (a plain ResNet-style identity shortcut)."""

    def __init__(self, cin: int, cout: int, blocks: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList(
            [ConvBNReLU(cin, cout, stride)] + [ConvBNReLU(cout, cout) for _ in range(blocks - 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = x + layer(x) if self.residual else layer(x)
        return x


class ConvNet(PooledClassifier):
    """Conv-BN-ReLU stages, global average pooling and a linear classifier.

    Args:
        in_channels: Input channels C of images shaped [B, C, H, W].
        num_classes: Number of output logits K.
        widths: Output channels of each stage; every stage after the first halves H and W.
        blocks_per_stage: Conv layers per stage.
        residual: Identity shortcuts inside a stage.
        dropout: Dropout before the classifier (training only).

    Shapes:
        forward: [B, C, H, W] -> logits [B, K].
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"widths must be positive integers, got {list(widths)}")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "widths": [int(w) for w in widths],
            "blocks_per_stage": blocks_per_stage,
            "residual": residual,
            "dropout": dropout,
        }
        stages = []
        cin = in_channels
        for i, width in enumerate(widths):
            stages.append(Stage(cin, width, blocks_per_stage, 1 if i == 0 else 2, residual))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.stages)

    def current_config(self) -> dict[str, object]:
        """The constructor arguments that rebuild this model, read from the live modules.

        After structured pruning the channel counts differ from the ones it was built with;
        this reads them back so a pruned model can be saved as (config, safetensors).
        """
        widths = [int(stage.layers[0][0].out_channels) for stage in self.stages]  # type: ignore[index,union-attr]
        return {**self.config, "widths": widths}

    def to_deploy(self) -> nn.Module:
        """An inference copy: eval mode, batch norm folded into the convolutions."""
        model = copy.deepcopy(self).eval()
        for stage in model.stages:
            for layer in stage.layers:  # type: ignore[union-attr]
                conv, bn = layer[0], layer[1]  # type: ignore[index]
                layer[0] = fuse_conv_bn_eval(conv, bn)  # type: ignore[index]
                layer[1] = nn.Identity()  # type: ignore[index]
        return model


@STUDENTS.register("convnet")
def convnet(**kwargs: object) -> ConvNet:
    """Registry factory for :class:`ConvNet`."""
    return ConvNet(**kwargs)  # type: ignore[arg-type]
