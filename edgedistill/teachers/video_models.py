"""Frozen torchvision video models (r3d_18, MViT, Swin3D, ...) from local weights.

:func:`torchvision_video_teacher` builds a ``torchvision.models.video`` architecture, loads a
local safetensors / state-dict file strictly (``weights_only=True``) and returns a frozen
:class:`ClipTeacher` mapping uint8 clips [B, T, H, W, 3] to the penultimate embedding (head
removed) or the logits. No weights ship offline; users bring their own file.

Reference:
    Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from edgedistill.artifacts import sha256_file
from edgedistill.errors import DataError, RecipeError
from edgedistill.teachers.image import IMAGENET_MEAN, IMAGENET_STD, load_state_dict_file
from edgedistill.teachers.video import VideoTeacher


@dataclass(frozen=True)
class _Arch:
    head: str  # attribute holding the classifier, replaced by nn.Identity for embeddings
    image_size: int  # the size torchvision's weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frames: int | None = None  # fixed clip length (positional embeddings), None = any


_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)
_MVIT = _Arch("head", 224, (0.45, 0.45, 0.45), (0.225, 0.225, 0.225), frames=16)
_SWIN = _Arch("head", 224, IMAGENET_MEAN, IMAGENET_STD)
VIDEO_ARCHS: dict[str, _Arch] = {
    "r3d_18": _Arch("fc", 112, _KINETICS_MEAN, _KINETICS_STD),
    "mc3_18": _Arch("fc", 112, _KINETICS_MEAN, _KINETICS_STD),
    "r2plus1d_18": _Arch("fc", 112, _KINETICS_MEAN, _KINETICS_STD),
    "s3d": _Arch("classifier", 224, _KINETICS_MEAN, _KINETICS_STD),
    "mvit_v1_b": _MVIT,
    "mvit_v2_s": _MVIT,
    "swin3d_t": _SWIN,
    "swin3d_s": _SWIN,
    "swin3d_b": _SWIN,
}
"""torchvision.models.video architectures :func:`torchvision_video_teacher` knows."""


class ClipTeacher(VideoTeacher):
    """A torchvision video network on whole clips; see :func:`torchvision_video_teacher`.

    Forward: uint8 [B, T, H, W, 3] or normalised float [B, T, 3, H, W] -> [B, D] embedding
    (penultimate layer) or [B, num_classes] logits.
    """

    def __init__(
        self,
        model: nn.Module,
        arch: str,
        weights_sha256: str,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        output: str,
    ) -> None:
        super().__init__(
            model, f"video-{arch}", weights_sha256, image_size=image_size, mean=mean, std=std
        )
        self.arch = arch
        self.output = output

    def transform_spec(self) -> dict[str, Any]:
        """Preprocessing and output kind: a cache key part."""
        spec = super().transform_spec()
        spec.update(kind="video-clip", arch=self.arch, output=self.output)
        return spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, batch, steps = self._check_clips(x)
        fixed = VIDEO_ARCHS[self.arch].frames
        if fixed is not None and steps != fixed:
            raise DataError(f"{self.name}: needs clips of exactly {fixed} frames, got T={steps}")
        with torch.inference_mode():
            clips = self._prepare(frames).view(batch, steps, 3, self.image_size, self.image_size)
            return self.model(clips.transpose(1, 2))  # [B, 3, T, S, S]


def _load(model: nn.Module, state: dict[str, torch.Tensor], what: str, assign: bool) -> None:
    """Strict ``load_state_dict``; a mismatch becomes a one-line RecipeError."""
    try:
        model.load_state_dict(state, assign=assign)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        raise RecipeError(f"{what}: weights do not fit: {detail}") from None


def torchvision_video_teacher(
    arch: str,
    weights_path: Path,
    *,
    num_classes: int = 400,
    output: Literal["embedding", "logits"] = "embedding",
    image_size: int | None = None,
) -> ClipTeacher:
    """A frozen ``torchvision.models.video`` network with weights from a local file.

    Nothing is downloaded: ``weights_path`` is a ``.safetensors`` file or a weights-only
    pickled state dict (:func:`~edgedistill.teachers.image.load_state_dict_file`), loaded
    strictly into the full model (head included) before the head is removed for embeddings.
    The model is built on the meta device, so no time is spent on a random initialisation.

    Args:
        arch: A key of :data:`VIDEO_ARCHS` (r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s, ...).
        weights_path: The weights file; its sha256 is the teacher's cache identity.
        num_classes: Classifier size the weights were trained with (Kinetics-400: 400).
        output: ``"embedding"`` (penultimate features, e.g. [B, 512] for r3d_18) or
            ``"logits"`` ([B, num_classes]).
        image_size: Frame side after resizing; None = the arch's training size (112 / 224).

    Returns:
        A :class:`ClipTeacher`.

    Raises:
        RecipeError: unknown arch or output, missing or unreadable file, weights that do not
            fit, or an image size an MViT cannot take.
        UnsafeFileError: a pickled file that is not weights-only.
    """
    if arch not in VIDEO_ARCHS:
        raise RecipeError(f"unknown video teacher arch '{arch}'; known: {', '.join(VIDEO_ARCHS)}")
    if output not in ("embedding", "logits"):
        raise RecipeError(f"video teacher output must be 'embedding' or 'logits', got {output!r}")
    spec = VIDEO_ARCHS[arch]
    size = spec.image_size if image_size is None else image_size
    if spec.frames is not None and size != spec.image_size:
        raise RecipeError(f"video teacher {arch}: image_size must be {spec.image_size}")
    state = load_state_dict_file(Path(weights_path))
    from torchvision.models import video

    def build() -> nn.Module:
        model: nn.Module = getattr(video, arch)(num_classes=num_classes)
        return model

    what = f"video teacher {arch} ({weights_path})"
    with torch.device("meta"):
        model = build()
    _load(model, state, what, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = build()  # a non-persistent buffer stayed on meta: initialise for real
        _load(model, state, what, assign=False)
    if output == "embedding":
        setattr(model, spec.head, nn.Identity())
    digest = sha256_file(Path(weights_path))
    return ClipTeacher(
        model, arch, digest, image_size=size, mean=spec.mean, std=spec.std, output=output
    )
