"""IMU students over windows shaped [B, C, T]: a strided 1-D CNN and a temporal conv network.

``ImuCNN`` (registered as ``imu_cnn``) is a stack of 1-D conv-BN-ReLU stages, each after the
first halving T, then global average pooling and a linear classifier. ``ImuTCN`` (``imu_tcn``)
is a stack of residual temporal blocks with dilations 1, 2, 4, ... (causal or centred) at full
time resolution. Both honour the student contract of :mod:`edgedistill.students.base`, and
``current_config()`` reads every prunable width back from the live modules, so a model pruned
by :func:`edgedistill.compress.prune.prune_channels` rebuilds from its config.

``TINY_CONFIGS`` holds small variants for tests and smoke runs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from edgedistill.students.base import STUDENTS, PooledClassifier, fold_batch_norm_

TINY_CONFIGS: dict[str, dict[str, object]] = {
    "imu_cnn": {"widths": [16, 32, 32], "kernel_size": 5},
    "imu_tcn": {"widths": [16, 16, 32], "kernel_size": 3},
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


class ConvBN1d(nn.Module):
    """Padded 1-D convolution followed by batch norm: [B, cin, T] -> [B, cout, ceil(T / stride)].

    Args:
        causal: Pad only on the left, so output step t sees inputs up to t only. Otherwise the
            padding is centred (one more step on the right for an even receptive field).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        causal: bool = False,
    ) -> None:
        super().__init__()
        total = dilation * (kernel_size - 1)
        left = total if causal else total // 2
        right = total - left
        symmetric = left == right
        self.pad: nn.Module = nn.Identity() if symmetric else nn.ConstantPad1d((left, right), 0.0)
        self.conv = nn.Conv1d(
            cin,
            cout,
            kernel_size,
            stride=stride,
            padding=left if symmetric else 0,
            dilation=dilation,
            bias=False,
        )
        self.bn: nn.Module = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pad(x)))

    def fuse_(self) -> None:
        """Fold the (eval-mode) batch norm into the convolution, in place; idempotent."""
        fold_batch_norm_(self)


def _fuse_all(model: nn.Module) -> nn.Module:
    """An eval copy of ``model`` with every :class:`ConvBN1d` folded."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConvBN1d):
            module.fuse_()
    return model


class ImuCNN(PooledClassifier):
    """1-D conv-BN-ReLU stages, global average pooling and a linear classifier.

    Args:
        in_channels: Sensor channels C of windows shaped [B, C, T].
        num_classes: Number of output logits K.
        widths: Output channels of each stage (before ``width_mult``).
        width_mult: Scales every width, rounded to a multiple of 8; 1.0 keeps them as given.
        strides: Stride of each stage; default 1 for the first stage and 2 after it.
        kernel_size: Temporal kernel of every convolution.
        dropout: Dropout before the classifier (training only).

    Shapes:
        forward: [B, C, T] -> logits [B, K].
    """

    def __init__(
        self,
        in_channels: int = 6,
        num_classes: int = 7,
        widths: Sequence[int] = (32, 64, 128),
        width_mult: float = 1.0,
        strides: Sequence[int] | None = None,
        kernel_size: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"widths must be positive integers, got {list(widths)}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        strides = [1] + [2] * (len(widths) - 1) if strides is None else list(strides)
        if len(strides) != len(widths) or any(s < 1 for s in strides):
            raise ValueError(f"need one stride >= 1 per stage, got {strides} for {list(widths)}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        scaled = [int(w) if width_mult == 1.0 else make_divisible(w * width_mult) for w in widths]
        self.config: dict[str, object] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "widths": [int(w) for w in widths],
            "width_mult": width_mult,
            "strides": [int(s) for s in strides],
            "kernel_size": kernel_size,
            "dropout": dropout,
        }
        stages = []
        cin = in_channels
        for width, stride in zip(scaled, strides, strict=True):
            stages.append(
                nn.Sequential(ConvBN1d(cin, width, kernel_size, stride=stride), nn.ReLU())
            )
            cin = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.stages)

    def current_config(self) -> dict[str, object]:
        """The constructor arguments that rebuild this model, read from the live modules."""
        convs = [stage[0].conv for stage in self.stages]  # type: ignore[index]
        return {
            **self.config,
            "widths": [int(c.out_channels) for c in convs],
            "width_mult": 1.0,
            "strides": [int(c.stride[0]) for c in convs],
        }

    def to_deploy(self) -> nn.Module:
        """An inference copy: eval mode, batch norm folded into the convolutions."""
        return _fuse_all(self)


class TemporalBlock(nn.Module):
    """Two dilated ConvBN1d layers with a residual shortcut: [B, cin, T] -> [B, cout, T].

    ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is the identity, or a
    1x1 ConvBN1d projection when ``projection`` (needed when cin != cout).
    """

    def __init__(
        self,
        cin: int,
        hidden: int,
        cout: int,
        kernel_size: int,
        dilation: int,
        causal: bool,
        projection: bool,
    ) -> None:
        super().__init__()
        if not projection and cin != cout:
            raise ValueError(f"an identity shortcut needs cin == cout, got {cin} -> {cout}")
        self.conv1 = ConvBN1d(cin, hidden, kernel_size, dilation=dilation, causal=causal)
        self.act1 = nn.ReLU()
        self.conv2 = ConvBN1d(hidden, cout, kernel_size, dilation=dilation, causal=causal)
        self.shortcut: nn.Module = ConvBN1d(cin, cout, 1) if projection else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act1(self.conv1(x))) + self.shortcut(x))


class ImuTCN(PooledClassifier):
    """Residual temporal conv blocks, global average pooling and a linear classifier.

    Args:
        in_channels: Sensor channels C of windows shaped [B, C, T].
        num_classes: Number of output logits K.
        widths: Output channels of each block.
        hidden_widths: Channels between a block's two convolutions; default ``widths``.
        width_mult: Scales widths and hidden widths, rounded to a multiple of 8.
        kernel_size: Temporal kernel of every convolution.
        dilations: Dilation of each block; default 1, 2, 4, ... The receptive field is
            ``1 + 2 * (kernel_size - 1) * sum(dilations)`` steps.
        causal: Left padding only (online/streaming use); otherwise centred.
        projections: Whether each block's shortcut is a 1x1 projection; default where the
            block changes the width. Recorded so that a pruned model rebuilds exactly.
        dropout: Dropout before the classifier (training only).

    Shapes:
        forward: [B, C, T] -> logits [B, K]; every block keeps T.
    """

    def __init__(
        self,
        in_channels: int = 6,
        num_classes: int = 7,
        widths: Sequence[int] = (32, 32, 64, 64),
        hidden_widths: Sequence[int] | None = None,
        width_mult: float = 1.0,
        kernel_size: int = 3,
        dilations: Sequence[int] | None = None,
        causal: bool = False,
        projections: Sequence[bool] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_widths = list(widths) if hidden_widths is None else list(hidden_widths)
        dilations = [2**i for i in range(len(widths))] if dilations is None else list(dilations)
        if not widths or any(w <= 0 for w in [*widths, *hidden_widths]):
            raise ValueError(f"widths must be positive integers, got {list(widths)}")
        if not len(hidden_widths) == len(dilations) == len(widths):
            raise ValueError("widths, hidden_widths and dilations need one entry per block")
        if width_mult <= 0 or kernel_size < 1 or any(d < 1 for d in dilations):
            raise ValueError("width_mult, kernel_size and dilations must be positive")

        def scale(w: int) -> int:
            return int(w) if width_mult == 1.0 else make_divisible(w * width_mult)

        outs, hiddens = [scale(w) for w in widths], [scale(w) for w in hidden_widths]
        ins = [in_channels, *outs[:-1]]
        if projections is None:
            projections = [cin != cout for cin, cout in zip(ins, outs, strict=True)]
        if len(projections) != len(widths):
            raise ValueError(f"need one projection flag per block, got {list(projections)}")
        self.config: dict[str, object] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "widths": [int(w) for w in widths],
            "hidden_widths": [int(w) for w in hidden_widths],
            "width_mult": width_mult,
            "kernel_size": kernel_size,
            "dilations": [int(d) for d in dilations],
            "causal": causal,
            "projections": [bool(p) for p in projections],
            "dropout": dropout,
        }
        self.blocks = nn.ModuleList(
            TemporalBlock(cin, hid, cout, kernel_size, dil, causal, bool(proj))
            for cin, hid, cout, dil, proj in zip(
                ins, hiddens, outs, dilations, projections, strict=True
            )
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(outs[-1], num_classes)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def current_config(self) -> dict[str, object]:
        """The constructor arguments that rebuild this model, read from the live modules.

        Pruning can change each block's hidden and output widths independently (blocks joined
        by identity shortcuts keep one output width); both are read back, with the shortcuts.
        """
        blocks: list[TemporalBlock] = list(self.blocks)  # type: ignore[arg-type]
        return {
            **self.config,
            "widths": [int(b.conv2.conv.out_channels) for b in blocks],
            "hidden_widths": [int(b.conv1.conv.out_channels) for b in blocks],
            "width_mult": 1.0,
            "projections": [not isinstance(b.shortcut, nn.Identity) for b in blocks],
        }

    def to_deploy(self) -> nn.Module:
        """An inference copy: eval mode, batch norm folded into the convolutions."""
        return _fuse_all(self)


@STUDENTS.register("imu_cnn")
def imu_cnn(**kwargs: object) -> ImuCNN:
    """Registry factory for :class:`ImuCNN`."""
    return ImuCNN(**kwargs)  # type: ignore[arg-type]


@STUDENTS.register("imu_tcn")
def imu_tcn(**kwargs: object) -> ImuTCN:
    """Registry factory for :class:`ImuTCN`."""
    return ImuTCN(**kwargs)  # type: ignore[arg-type]
