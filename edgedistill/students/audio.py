"""Audio students: an ONNX-exportable log-mel frontend and a depthwise-separable CNN.

``LogMel`` turns a waveform [B, T] into a log-mel spectrogram [B, 1, n_mels, frames] with a
fixed windowed-DFT Conv1d, a power spectrum, a fixed HTK mel filterbank and a log, so an
exported student takes raw audio. ``AudioDSCNN`` (registered as ``audio_dscnn``) is the
DS-CNN of Zhang et al., "Hello Edge: Keyword Spotting on Microcontrollers"
(arXiv:1711.07128): a regular conv stem, depthwise-separable blocks, global average pooling
and a linear classifier. It honours the student contract of
:mod:`edgedistill.students.base`; ``current_config()`` reads every prunable width back from
the live modules, so a model pruned by :func:`edgedistill.compress.prune.prune_channels`
rebuilds from its config. The frontend uses functional ops on buffers (no conv module), so
pruning and MAC counting see the CNN only.

Importing this module registers ``audio_dscnn``; ``TINY_CONFIGS`` holds small variants.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.students.base import STUDENTS, PooledClassifier, fold_batch_norm_
from edgedistill.students.imu import make_divisible

TINY_CONFIGS: dict[str, dict[str, object]] = {
    "audio_dscnn": {"widths": [16, 24, 24, 32], "stem_kernel": [4, 10]},
}
LOG_EPS = 1e-6


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`: ``700 * (10 ** (m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> np.ndarray:
    """Triangular HTK mel filters (unnormalised, like torchaudio's ``melscale_fbanks``).

    ``n_mels + 2`` points equally spaced in mel between ``f_min`` and ``f_max`` give the
    filters' edges and centres; each filter rises linearly from its left edge to its centre
    and falls to its right edge, over the rfft bin frequencies ``k * sample_rate / n_fft``.

    Returns:
        float64 [n_freqs, n_mels]; ``power[..., n_freqs, frames]`` maps to mel by ``fb.T @``.
    """
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - left) / (centre - left)
    down = (right - freqs[:, None]) / (right - centre)
    return np.maximum(0.0, np.minimum(up, down))


class LogMel(nn.Module):
    """Log-mel spectrogram from ONNX-friendly ops (Conv1d, Mul, Add, MatMul, Log).

    Frames are ``n_fft`` samples every ``hop_length`` samples, without centre padding, so
    ``frames = 1 + (T - n_fft) // hop_length`` (T >= n_fft). Each frame is multiplied by a
    periodic Hann window and transformed by a fixed real/imaginary DFT basis (a strided
    conv), giving the power ``re**2 + im**2`` of the ``n_fft // 2 + 1`` rfft bins; a fixed
    HTK mel filterbank sums those into ``n_mels`` bands and ``log(x + 1e-6)`` is taken.

    Args:
        sample_rate: Sample rate of the waveform in Hz.
        n_fft: Frame (and DFT) length in samples.
        hop_length: Samples between consecutive frame starts.
        n_mels: Number of mel bands.
        f_min: Lowest filter edge in Hz.
        f_max: Highest filter edge in Hz; default ``sample_rate / 2``.

    Shapes:
        forward: waveform [B, T] -> log-mel [B, 1, n_mels, frames].
    """

    basis: torch.Tensor
    mel_fb: torch.Tensor

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if n_fft < 2 or hop_length < 1 or n_mels < 1:
            raise ValueError("n_fft must be >= 2, hop_length and n_mels >= 1")
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = (
            sample_rate,
            n_fft,
            hop_length,
            n_mels,
        )
        self.f_min, self.f_max = float(f_min), float(f_max)
        n_freqs = n_fft // 2 + 1
        n = np.arange(n_fft)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
        angle = 2 * np.pi * np.outer(np.arange(n_freqs), n) / n_fft
        basis = np.concatenate([window * np.cos(angle), -window * np.sin(angle)])
        # Derived constants: rebuilt from the config, so kept out of the state dict.
        self.register_buffer(
            "basis", torch.tensor(basis[:, None, :], dtype=torch.float32), persistent=False
        )
        fb = mel_filterbank(n_freqs, n_mels, sample_rate, self.f_min, self.f_max)
        self.register_buffer("mel_fb", torch.tensor(fb.T, dtype=torch.float32), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """``1 + (T - n_fft) // hop_length``, the frame count of a T-sample waveform."""
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] < self.n_fft:
            raise ValueError(f"LogMel needs a waveform [B, T >= {self.n_fft}], got {x.shape}")
        spec = F.conv1d(x.unsqueeze(1), self.basis, stride=self.hop_length)  # [B, 2F, frames]
        re, im = spec.chunk(2, dim=1)
        mel = torch.matmul(self.mel_fb, re * re + im * im)  # [B, n_mels, frames]
        return torch.log(mel + LOG_EPS).unsqueeze(1)


class ConvBN2d(nn.Module):
    """Same-padded 2-D convolution followed by batch norm.

    [B, cin, H, W] -> [B, cout, ceil(H / sh), ceil(W / sw)]; an even kernel
    pads one more row/column at the bottom/right. ``groups == cin == cout`` is depthwise.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        kh, kw = (int(k) for k in kernel_size)
        # (left, right, top, bottom): (k - 1) // 2 before and k // 2 after, as nn.ZeroPad2d
        pads = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
        symmetric = pads[0] == pads[1] and pads[2] == pads[3]
        self.pad: nn.Module = nn.Identity() if symmetric else nn.ZeroPad2d(pads)
        self.conv = nn.Conv2d(
            cin,
            cout,
            (kh, kw),
            stride=(int(stride[0]), int(stride[1])),
            padding=(pads[2], pads[0]) if symmetric else 0,
            groups=groups,
            bias=False,
        )
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pad(x)))

    def fuse_(self) -> None:
        """Fold the (eval-mode) batch norm into the convolution, in place; idempotent."""
        fold_batch_norm_(self)


class DSBlock(nn.Module):
    """Depthwise conv-BN-ReLU, then pointwise (1x1) conv-BN-ReLU.

    [B, cin, H, W] -> [B, cout, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.dw = ConvBN2d(cin, cin, (kernel_size, kernel_size), (stride, stride), groups=cin)
        self.act1 = nn.ReLU()
        self.pw = ConvBN2d(cin, cout, (1, 1))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.pw(self.act1(self.dw(x))))


class AudioDSCNN(PooledClassifier):
    """DS-CNN keyword spotter (Zhang et al., "Hello Edge", arXiv:1711.07128) over log-mel.

    A regular conv-BN-ReLU stem, depthwise-separable blocks, global average pooling and a
    linear classifier. The paper's DS-CNN-S is ``widths=(64, 64, 64, 64, 64)`` with a 10x4
    (time x frequency) stem of stride 2; here the log-mel layout is [n_mels, frames], so the
    stem kernel is given as (mel, frame).

    Args:
        num_classes: Number of output logits K.
        widths: ``widths[0]`` is the stem's output channels, each later entry one DS block's
            (pointwise) output channels; scaled by ``width_mult``.
        width_mult: Scales every width, rounded to a multiple of 8; 1.0 keeps them as given.
        stem_kernel: Stem kernel (mel, frame).
        stem_stride: Stem stride (mel, frame).
        kernel_size: Depthwise kernel (square).
        strides: Depthwise stride of each DS block; default 1 everywhere.
        frontend: Take a waveform [B, T] and compute the log-mel with :class:`LogMel` as the
            first module (the exported ONNX then takes raw audio); otherwise take log-mel
            [B, 1, n_mels, frames] directly.
        sample_rate, n_fft, hop_length, n_mels, f_min, f_max: :class:`LogMel` settings.
        dropout: Dropout before the classifier (training only).

    Shapes:
        forward: [B, T] (``frontend``) or [B, 1, n_mels, frames] -> logits [B, K], with
        ``frames = 1 + (T - n_fft) // hop_length``.
    """

    def __init__(
        self,
        num_classes: int = 12,
        widths: Sequence[int] = (64, 64, 64, 64, 64),
        width_mult: float = 1.0,
        stem_kernel: Sequence[int] = (4, 10),
        stem_stride: Sequence[int] = (2, 2),
        kernel_size: int = 3,
        strides: Sequence[int] | None = None,
        frontend: bool = True,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) < 2 or any(w <= 0 for w in widths):
            raise ValueError(f"need a stem and >= 1 block of positive widths, got {list(widths)}")
        if width_mult <= 0 or kernel_size < 1:
            raise ValueError("width_mult and kernel_size must be positive")
        strides = [1] * (len(widths) - 1) if strides is None else list(strides)
        if len(strides) != len(widths) - 1 or any(s < 1 for s in strides):
            raise ValueError(f"need one stride >= 1 per DS block, got {strides}")
        if len(stem_kernel) != 2 or len(stem_stride) != 2:
            raise ValueError("stem_kernel and stem_stride are (mel, frame) pairs")
        scaled = [int(w) if width_mult == 1.0 else make_divisible(w * width_mult) for w in widths]
        mel_args = {
            "sample_rate": sample_rate,
            "n_fft": n_fft,
            "hop_length": hop_length,
            "n_mels": n_mels,
            "f_min": f_min,
            "f_max": f_max,
        }
        self.config: dict[str, object] = {
            "num_classes": num_classes,
            "widths": [int(w) for w in widths],
            "width_mult": width_mult,
            "stem_kernel": [int(k) for k in stem_kernel],
            "stem_stride": [int(s) for s in stem_stride],
            "kernel_size": kernel_size,
            "strides": [int(s) for s in strides],
            "frontend": frontend,
            **mel_args,
            "dropout": dropout,
        }
        self.frontend: nn.Module = LogMel(**mel_args) if frontend else nn.Identity()  # type: ignore[arg-type]
        # The quantize stage keeps the log-mel in float (see quantize_onnx_static).
        self.float_frontend_until: str | None = "Log" if frontend else None
        self.stem = nn.Sequential(ConvBN2d(1, scaled[0], stem_kernel, stem_stride), nn.ReLU())
        self.blocks = nn.ModuleList(
            DSBlock(cin, cout, kernel_size, stride)
            for cin, cout, stride in zip(scaled[:-1], scaled[1:], strides, strict=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(scaled[-1], num_classes)

    def enter(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Front end and stem; the stem's output is the first reported feature map."""
        x = self.stem(self.frontend(x))
        return x, [x]

    def stage_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def current_config(self) -> dict[str, object]:
        """The constructor arguments that rebuild this model, read from the live modules.

        A depthwise conv's width is its input's, so the stem's and the pointwise convs'
        output channels are all the widths there are.
        """
        stem: ConvBN2d = self.stem[0]  # type: ignore[assignment]
        blocks: list[DSBlock] = list(self.blocks)  # type: ignore[arg-type]
        return {
            **self.config,
            "widths": [int(stem.conv.out_channels)] + [int(b.pw.conv.out_channels) for b in blocks],
            "width_mult": 1.0,
            "strides": [int(b.dw.conv.stride[0]) for b in blocks],
        }

    def to_deploy(self) -> nn.Module:
        """An inference copy: eval mode, batch norm folded into regular and depthwise convs."""
        model = copy.deepcopy(self).eval()
        for module in model.modules():
            if isinstance(module, ConvBN2d):
                module.fuse_()
        return model


@STUDENTS.register("audio_dscnn")
def audio_dscnn(**kwargs: object) -> AudioDSCNN:
    """Registry factory for :class:`AudioDSCNN`."""
    return AudioDSCNN(**kwargs)  # type: ignore[arg-type]
