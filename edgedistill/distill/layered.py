"""Layered self-distillation over auxiliary exits, with self-supervised augmented labels.

BYOT: Zhang, Song, Gao, Chen, Bao, Ma. "Be Your Own Teacher: Improve the Performance of
Convolutional Neural Networks via Self Distillation", ICCV 2019 (arXiv:1905.08094). A classifier
is attached after each stage; the deepest exit is trained with cross-entropy, every shallower exit
with cross-entropy, KD from the deepest exit and an L2 hint towards the deepest features:

    L = CE(z_N, y) + Σ_{i<N} [ w_ce·CE(z_i, y) + w_kd·T²·KL(σ(z_N/T) ‖ σ(z_i/T))
                               + w_f·‖f_i − f_N‖² ]

with z_N and f_N treated as constants in the KD and hint terms.

Joint-labels-on-every-exit variant (``transforms`` = "rotate4" | "imu"): every exit, the
deployed one included, predicts a joint label over K·M classes, class × input transformation
(joint label of class y under transformation m: ``y·M + m``), so the KD term transfers the
deepest exit's joint distribution. This is NOT LSSKD / HSAKD, where only auxiliary heads carry
joint labels and the main head keeps the plain labels: that is the ``lsskd`` term
(:mod:`edgedistill.distill.lsskd`). The variant is kept for existing recipes; measured on
Fashion-MNIST it scored below plain cross-entropy (BENCHMARKS.md).

Layout (shared by every helper here): a transformed batch is stacked transform-major, row
``m·B + b`` holds transformation m of sample b, and transformation 0 is always the identity, so
the first B rows are the untouched batch. Inference uses the identity slice of the joint logits,
columns ``y·M + 0`` (see :func:`class_logits`): one forward pass of the plain input, and the slice
folds into the last linear layer, whereas averaging aligned slices over all M transformed inputs
would cost M forward passes on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgedistill.distill.fitnets import hint_loss
from edgedistill.distill.kd import kd_loss
from edgedistill.distill.terms import Term, TermBatch, TermConfig, register_term

NUM_IMAGE_TRANSFORMS = 4  # rotations by 0°, 90°, 180°, 270° (counter-clockwise)
NUM_IMU_TRANSFORMS = 3  # identity, time reversal, cyclic axis permutation


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def augmented_labels(labels: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """Joint labels of a transform-major stacked batch.

    Args:
        labels: [B] integer class labels; -1 marks an unlabelled sample and stays -1.
        num_transforms: M >= 1 transformations (transformation 0 is the identity).

    Returns:
        [B·M] labels; row m·B + b is ``labels[b]·M + m`` (or -1).
    """
    if num_transforms < 1:
        raise ValueError(f"num_transforms must be >= 1, got {num_transforms}")
    if labels.dim() != 1 or not _is_integer(labels):
        raise ValueError(f"labels must be a 1-D integer tensor, got {tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError("labels must be class indices >= 0, or -1 for unlabelled")
    m = torch.arange(num_transforms, device=labels.device).repeat_interleave(labels.shape[0])
    y = labels.repeat(num_transforms)
    return torch.where(y >= 0, y * num_transforms + m, torch.full_like(y, -1))


def image_transforms(x: torch.Tensor) -> torch.Tensor:
    """The four rotations of square images, stacked transform-major.

    Args:
        x: [B, C, H, W] images with H == W.

    Returns:
        [4·B, C, H, W]; block m is ``torch.rot90(x, m, dims=(2, 3))`` (m·90° counter-clockwise).
    """
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"image_transforms needs square images [B, C, H, H], got {tuple(x.shape)}")
    return torch.cat([torch.rot90(x, m, dims=(2, 3)) for m in range(NUM_IMAGE_TRANSFORMS)])


def imu_axis_permutation(channels: int) -> list[int]:
    """Channel order of the cyclic axis permutation (x, y, z) -> (y, z, x) inside each triad.

    Channels are read as consecutive 3-axis sensor groups (accelerometer xyz, gyroscope xyz, ...);
    every group gets the same permutation, so accelerometer and gyroscope stay aligned. A cyclic
    permutation is a proper rotation (det +1), under which both vectors and the gyroscope's axial
    vectors transform alike; a swap of two axes would be a reflection and break that.
    """
    if channels < 3 or channels % 3:
        raise ValueError(f"IMU channels must be a positive multiple of 3, got {channels}")
    return [g * 3 + (j + 1) % 3 for g in range(channels // 3) for j in range(3)]


def imu_transforms(x: torch.Tensor) -> torch.Tensor:
    """Identity, time reversal and the axis permutation of IMU windows, stacked transform-major.

    Args:
        x: [B, C, T] windows, C a multiple of 3 (e.g. 6: accelerometer xyz then gyroscope xyz).

    Returns:
        [3·B, C, T]: x, x flipped along T, x with channels :func:`imu_axis_permutation`.
        These are pretext transformations for the joint labels, not physical augmentations.
    """
    if x.dim() != 3:
        raise ValueError(f"imu_transforms needs windows [B, C, T], got {tuple(x.shape)}")
    perm = imu_axis_permutation(x.shape[1])
    return torch.cat([x, x.flip(2), x[:, perm]])


def class_logits(joint_logits: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """Identity-transform slice of joint logits: [N, K·M] -> [N, K], columns y·M."""
    if num_transforms < 1 or joint_logits.dim() != 2 or joint_logits.shape[1] % num_transforms:
        raise ValueError(
            f"joint logits {tuple(joint_logits.shape)} do not split into M={num_transforms}"
        )
    return joint_logits[:, ::num_transforms]


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE over rows with target >= 0; 0 (still in the graph) when there are none."""
    labelled = targets >= 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], targets[labelled])


def layered_sd_loss(
    exit_logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    temperature: float = 3.0,
    kd_weight: float = 1.0,
    ce_weight: float = 1.0,
    exit_features: Sequence[torch.Tensor] | None = None,
    feature_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """BYOT / LSSKD loss over the exits of one network (see the module docstring).

    Args:
        exit_logits: N tensors [B, K'] ordered shallow -> deep; K' = K, or K·M joint classes.
        targets: [B] labels in [0, K') (joint labels from :func:`augmented_labels`); rows
            with -1 are left out of every CE term but still distilled.
        temperature: T > 0 of the KD terms (which carry the T² factor, via ``kd_loss``).
        kd_weight: Weight of each shallow exit's KD term.
        ce_weight: Weight of each shallow exit's CE term; the deepest exit's CE has weight 1.
        exit_features: Optional N features, one per exit, each already shaped like the deepest
            (e.g. [B, D] pooled and projected); the deepest is the constant hint target.
        feature_weight: Weight of each hint, mean over elements of (f_i − f_N)² (``hint_loss``;
            the mean only rescales BYOT's squared L2 distance). Needs ``exit_features`` if > 0.

    Returns:
        (scalar loss, unweighted parts ``ce/i``, ``kd/i``, ``hint/i`` per exit i, as floats).
    """
    if not exit_logits:
        raise ValueError("layered_sd_loss needs at least one exit")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if min(kd_weight, ce_weight, feature_weight) < 0:
        raise ValueError("kd_weight, ce_weight and feature_weight must be >= 0")
    deep = exit_logits[-1]
    if deep.dim() != 2 or any(z.shape != deep.shape for z in exit_logits):
        shapes = [tuple(z.shape) for z in exit_logits]
        raise ValueError(f"every exit needs logits of one shape [B, K], got {shapes}")
    if targets.shape != deep.shape[:1] or not _is_integer(targets):
        raise ValueError(f"targets must be integer labels of shape ({len(deep)},)")
    if targets.numel() and (int(targets.min()) < -1 or int(targets.max()) >= deep.shape[1]):
        raise ValueError(f"targets must lie in [0, {deep.shape[1]}) or be -1")
    if exit_features is not None and len(exit_features) != len(exit_logits):
        raise ValueError(f"got {len(exit_features)} exit features for {len(exit_logits)} exits")
    if feature_weight > 0 and exit_features is None:
        raise ValueError("feature_weight > 0 needs exit_features")

    total = _masked_ce(deep, targets)
    parts = {f"ce/{len(exit_logits) - 1}": total.detach()}
    for i, logits in enumerate(exit_logits[:-1]):
        ce = _masked_ce(logits, targets)
        kd = kd_loss(logits, deep, temperature=temperature)
        total = total + ce_weight * ce + kd_weight * kd
        parts[f"ce/{i}"], parts[f"kd/{i}"] = ce.detach(), kd.detach()
        if exit_features is not None:
            hint = hint_loss(exit_features[i], exit_features[-1])
            total = total + feature_weight * hint
            parts[f"hint/{i}"] = hint.detach()
    values = torch.stack(list(parts.values())).tolist()  # one device sync for all parts
    return total, dict(zip(parts, values, strict=True))


class LayeredSDLoss(nn.Module):
    """Module form of :func:`layered_sd_loss` with fixed weights and temperature."""

    def __init__(
        self, temperature: float = 3.0, kd_weight: float = 1.0, ce_weight: float = 1.0,
        feature_weight: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        if temperature <= 0 or min(kd_weight, ce_weight, feature_weight) < 0:
            raise ValueError("temperature must be > 0 and the weights >= 0")
        self.temperature, self.kd_weight = temperature, kd_weight
        self.ce_weight, self.feature_weight = ce_weight, feature_weight

    def forward(
        self,
        exit_logits: Sequence[torch.Tensor],
        targets: torch.Tensor,
        exit_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return layered_sd_loss(
            exit_logits, targets, temperature=self.temperature, kd_weight=self.kd_weight,
            ce_weight=self.ce_weight, exit_features=exit_features,
            feature_weight=self.feature_weight,
        )  # fmt: skip


class LayeredConfig(TermConfig):
    """Options of the ``layered`` term."""

    transforms: Literal["none", "rotate4", "imu"] = Field(
        default="none",
        description="joint labels on every exit incl. the deployed one (not LSSKD: see lsskd)",
    )
    exit_kd_weight: float = Field(default=1.0, ge=0, description="exit KD weight")
    feature_weight: float = Field(default=0.0, ge=0, description="feature hint weight")


@register_term("layered")
class LayeredTerm(Term[LayeredConfig]):
    """``layered``: layered self-distillation over a multi-exit student's exits, no teacher.

    The batch is expanded by ``transforms`` (transform-major, identity first; "rotate4" for
    images, "imu" for [B, C, T] windows), every exit predicts the joint (class, transformation)
    label, and the deepest exit teaches the shallower ones (:func:`layered_sd_loss`, with
    ``exit_kd_weight`` and ``feature_weight``). The deepest exit's class logits of the plain
    batch are the logits the other terms read.
    """

    config = LayeredConfig
    needs = frozenset({"model"})

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        net, x, options = batch.net, batch.x, self.options
        assert net is not None and x is not None
        if options.transforms == "rotate4":
            m, inputs = NUM_IMAGE_TRANSFORMS, image_transforms(x)
        elif options.transforms == "imu":
            m, inputs = NUM_IMU_TRANSFORMS, imu_transforms(x)
        else:
            m, inputs = 1, x
        features = None
        if options.feature_weight > 0:
            exits, features = net(inputs, "exits_and_features")
        else:
            exits = net(inputs, "exits")
        width = exits[-1].shape[1]
        if width % m:
            raise ValueError(
                f"layered transforms '{options.transforms}' need exits with K x {m} outputs, got "
                f"{width} (build the student as MultiExitStudent(..., num_transforms={m}))"
            )
        value, _ = layered_sd_loss(
            exits,
            augmented_labels(batch.targets, m),
            temperature=options.temperature_at(epoch, total_epochs),
            kd_weight=options.exit_kd_weight,
            ce_weight=1.0,
            exit_features=features,
            feature_weight=options.feature_weight,
        )
        batch.logits = class_logits(exits[-1][: len(x)], m)
        return value
