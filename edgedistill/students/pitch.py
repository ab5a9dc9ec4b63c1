"""A small pitch estimator on raw 16 kHz frames: ``pitch_cnn``.

CREPE (Kim, Salamon, Li and Bello, ICASSP 2018, arXiv:1802.06182) reads one 1024-sample frame
with six conv-ReLU-BN-max-pool blocks, the first a 512-tap filterbank with stride 4, and a
linear layer over the flattened last block; its "tiny" capacity has 0.49 M parameters and
37 M multiply-accumulates per frame. :class:`PitchCNN` keeps the idea (learned filters on the
raw waveform, max-pooling, one score per CREPE pitch bin) at a fraction of the cost: a short
strided first conv, a few narrow conv-BN-ReLU-max-pool stages, global average pooling (pitch
is a property of the whole stationary frame, so position is pooled away) and a linear layer
to the 360 bins.

Like CREPE, each frame is first normalised to zero mean and unit (population) standard
deviation inside the model, so the exported ONNX takes raw frames at any gain. The
normalisation is parameter-free, so pruning and MAC counting see the convolutions only.

Importing this module registers ``pitch_cnn``; ``TINY_CONFIGS`` holds a variant for tests.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from edgedistill.students.base import STUDENTS, PooledClassifier
from edgedistill.students.imu import ConvBN1d

TINY_CONFIGS: dict[str, dict[str, object]] = {
    "pitch_cnn": {"widths": [8, 8, 16], "kernels": [32, 9, 5]},
}
FRAME = 1024
BINS = 360


def normalize_frames(x: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T] with zero mean and unit population std per frame (CREPE's)."""
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.std(dim=1, keepdim=True, correction=0).clamp_min(1e-10)


class PitchStage(nn.Module):
    """Conv-BN-ReLU, then max-pool by ``pool``: [B, cin, T] -> [B, cout, ceil(T / stride) // pool]."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, pool: int) -> None:
        super().__init__()
        self.conv = ConvBN1d(cin, cout, kernel_size, stride)
        self.act = nn.ReLU()
        self.pool: nn.Module = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x)))


class PitchCNN(PooledClassifier):
    """A compact CREPE-like pitch classifier on raw 1024-sample frames.

    Args:
        num_classes: Output bins K (360: CREPE's pitch bins).
        widths: Output channels of each stage.
        kernels: Kernel size of each stage (the first is the learned filterbank).
        first_stride: Stride of the first stage's convolution.
        pools: Max-pool factor after each stage (default 2 everywhere).
        in_samples: Samples per frame (1024 at 16 kHz); fixes nothing but the docs and checks.
        dropout: Dropout before the classifier (training only).

    Shapes:
        forward: frames [B, in_samples] (raw, any gain) -> logits [B, K]; stage i's output is
        [B, widths[i], T_i] with T_0 = ceil(in_samples / first_stride) // pools[0].
    """

    def __init__(
        self,
        num_classes: int = BINS,
        widths: Sequence[int] = (32, 32, 48, 64, 96),
        kernels: Sequence[int] = (64, 16, 9, 9, 5),
        first_stride: int = 4,
        pools: Sequence[int] | None = None,
        in_samples: int = FRAME,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        pools = [2] * len(widths) if pools is None else list(pools)
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"need at least one positive width, got {list(widths)}")
        if len(kernels) != len(widths) or len(pools) != len(widths):
            raise ValueError(
                f"need one kernel and one pool per stage: {len(widths)} widths, "
                f"{len(kernels)} kernels, {len(pools)} pools"
            )
        if any(int(k) < 1 for k in kernels) or any(int(p) < 1 for p in pools) or first_stride < 1:
            raise ValueError("kernels, pools and first_stride must be >= 1")
        length = -(-in_samples // first_stride)
        for p in pools:
            length //= int(p)
        if length < 1:
            raise ValueError(f"{in_samples} samples are pooled away by pools {pools}")
        self.config: dict[str, object] = {
            "num_classes": num_classes,
            "widths": [int(w) for w in widths],
            "kernels": [int(k) for k in kernels],
            "first_stride": int(first_stride),
            "pools": [int(p) for p in pools],
            "in_samples": int(in_samples),
            "dropout": dropout,
        }
        cins = [1, *[int(w) for w in widths[:-1]]]
        self.stages = nn.ModuleList(
            PitchStage(cin, int(w), int(k), first_stride if i == 0 else 1, int(p))
            for i, (cin, w, k, p) in enumerate(zip(cins, widths, kernels, pools, strict=True))
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(int(widths[-1]), num_classes)

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-frame normalisation: [B, T] -> [B, 1, T]."""
        return normalize_frames(x).unsqueeze(1), []

    def stage_modules(self) -> list[nn.Module]:
        return list(self.stages)

    def current_config(self) -> dict[str, object]:
        """The constructor arguments that rebuild this model, read from the live modules."""
        stages: list[PitchStage] = list(self.stages)  # type: ignore[arg-type]
        conv = [s.conv.conv for s in stages]
        return {
            **self.config,
            "widths": [int(c.out_channels) for c in conv],  # type: ignore[union-attr]
            "num_classes": int(self.classifier.out_features),
        }

    def to_deploy(self) -> nn.Module:
        """An inference copy: eval mode, every batch norm folded into its convolution."""
        model = copy.deepcopy(self).eval()
        for module in model.modules():
            if isinstance(module, ConvBN1d):
                module.fuse_()
        return model


@STUDENTS.register("pitch_cnn")
def pitch_cnn(**kwargs: object) -> PitchCNN:
    """Registry factory for :class:`PitchCNN`."""
    return PitchCNN(**kwargs)  # type: ignore[arg-type]
