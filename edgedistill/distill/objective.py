"""A training objective: weighted loss terms, with per-epoch schedules.

A recipe combines terms by name with weights: on logits ``ce``, ``kd``, ``dkd``, ``pskd``; on
features ``fitnets`` (a student stage regressed onto a cached teacher feature through a
trainable adapter); ``layered`` (layered self-distillation over a multi-exit student's exits,
no teacher). Each term may
ramp its weight up linearly over its first ``warmup_epochs`` epochs (e.g. a KD weight ramp, or
DKD's warm-up) and decay its temperature linearly from ``temperature`` to
``final_temperature`` over training. The losses themselves live one per file in this package
and take tensors only; this module just schedules and sums them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.distill.crossmodal import CROSSMODAL_TERMS, CrossModalTerm
from edgedistill.distill.dkd import dkd_loss
from edgedistill.distill.fitnets import HintAdapter, hint_loss
from edgedistill.distill.kd import kd_loss
from edgedistill.distill.pskd import PredictionMemory, pskd_alpha, pskd_loss

TERM_NAMES = ("ce", "kd", "dkd", "pskd", "fitnets", "layered", *CROSSMODAL_TERMS)
TEACHER_TERMS = frozenset({"kd", "dkd"})
EMBEDDING_KEY = "embedding"  # teacher feature name of the cross-modal terms' clip embeddings
# terms that need more than the logits of one forward
MODEL_TERMS = frozenset({"fitnets", "layered", *CROSSMODAL_TERMS})
LAYERED_TRANSFORMS = ("none", "rotate4", "imu")


@dataclass(frozen=True)
class LossTermSpec:
    """One weighted term and its schedule.

    Attributes:
        name: "ce" (cross-entropy), "kd" (Hinton), "dkd" (decoupled KD) or "pskd"
            (progressive self-KD: the model's previous-epoch predictions as soft targets).
        weight: Weight once warmed up.
        temperature: Softmax temperature of kd/dkd at the first epoch.
        final_temperature: Temperature at the last epoch (linear in between); None = constant.
        warmup_epochs: The weight grows linearly over this many epochs (epoch e of a warm-up of
            W epochs uses weight · min(1, (e + 1) / W)); 0 = full weight from the start.
        alpha: DKD's TCKD weight.
        beta: DKD's NCKD weight.
        alpha_T: PS-KD's final mixing weight.
        student_stage: fitnets: index of the guided student stage in ``forward_intermediates``.
        teacher_tap: fitnets: name of the cached teacher feature that is the hint.
        hint_size: fitnets: spatial/temporal size the cached hint was pooled to (None = as is);
            read by whoever fills the cache, recorded here so checkpoints see it.
        transforms: layered: self-supervised input transformations whose joint labels the
            exits predict ("none", "rotate4" for images, "imu" for [B, C, T] windows).
        exit_kd_weight: layered: weight of the deepest exit's KD into each shallower exit.
        feature_weight: layered: weight of the feature hints to the deepest exit.
        queue_size: comodo: FIFO queue of teacher embeddings; infonce: extra negatives
            (0 = in-batch only).
        student_temperature: comodo: the student's temperature (``temperature`` is the
            teacher's; COMODO's paper uses 0.1 / 0.05).
    """

    name: str
    weight: float
    temperature: float = 4.0
    final_temperature: float | None = None
    warmup_epochs: int = 0
    alpha: float = 1.0
    beta: float = 8.0
    alpha_T: float = 0.8
    student_stage: int = -2
    teacher_tap: str = ""
    hint_size: int | None = None
    transforms: str = "none"
    exit_kd_weight: float = 1.0
    feature_weight: float = 0.0
    queue_size: int = 4096
    student_temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.name not in TERM_NAMES:
            raise ValueError(f"unknown loss term '{self.name}'; known: {', '.join(TERM_NAMES)}")
        if self.name == "fitnets" and not self.teacher_tap:
            raise ValueError("loss term 'fitnets' needs teacher_tap (a teacher layer name)")
        if self.transforms not in LAYERED_TRANSFORMS:
            raise ValueError(
                f"transforms must be one of {LAYERED_TRANSFORMS}, got {self.transforms!r}"
            )
        if self.weight < 0 or self.temperature <= 0 or self.warmup_epochs < 0:
            raise ValueError(f"bad settings for loss term {self}")
        if self.final_temperature is not None and self.final_temperature <= 0:
            raise ValueError(f"final_temperature must be > 0, got {self.final_temperature}")

    def weight_at(self, epoch: int) -> float:
        """Weight during 0-based ``epoch``."""
        if self.warmup_epochs == 0:
            return self.weight
        return self.weight * min(1.0, (epoch + 1) / self.warmup_epochs)

    def temperature_at(self, epoch: int, total_epochs: int) -> float:
        """Temperature during 0-based ``epoch`` of ``total_epochs``."""
        if self.final_temperature is None or total_epochs <= 1:
            return self.temperature
        progress = epoch / (total_epochs - 1)
        return self.temperature + (self.final_temperature - self.temperature) * progress


class Objective:
    """Sums the weighted terms for one batch and keeps the state some terms need.

    Args:
        terms: The terms; names must be unique.
        num_samples: Training-set size N (PS-KD keeps one prediction per sample).
        num_classes: K.
        memory_path: Keep PS-KD's [N, K] prediction memory memory-mapped on disk here
            instead of in RAM (for large datasets).
    """

    def __init__(
        self,
        terms: tuple[LossTermSpec, ...],
        num_samples: int,
        num_classes: int,
        memory_path: Path | None = None,
    ) -> None:
        names = [t.name for t in terms]
        if not terms or len(set(names)) != len(names):
            raise ValueError(f"need at least one term and unique names, got {names}")
        self.terms = terms
        self.memory = (
            PredictionMemory(num_samples, num_classes, memory_path) if "pskd" in names else None
        )
        # Trainable parts some terms own (FitNets' regressors, cross-modal projection heads and
        # queues): trained with the student, dropped after distillation.
        self.adapters = nn.ModuleDict()
        active = [t for t in terms if t.weight > 0]
        self.layered = next((t for t in terms if t.name == "layered"), None)
        self.fitnets = tuple(t for t in active if t.name == "fitnets")
        self.crossmodal = tuple(t for t in active if t.name in CROSSMODAL_TERMS)
        self.needs_logits = any(t.name not in MODEL_TERMS for t in active)
        if self.crossmodal and (self.fitnets or self.layered):
            raise ValueError("cross-modal terms cannot be combined with fitnets or layered")

    @property
    def teacher_taps(self) -> list[str]:
        """Teacher features (besides logits) that some term reads."""
        taps = [t.teacher_tap for t in self.fitnets]
        return [*taps, EMBEDDING_KEY] if self.crossmodal else taps

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, object]
    ) -> list[nn.Parameter]:
        """Build the trainable parts some terms own; returns their parameters for the optimiser.

        Args:
            model: The student (FitNets reads its ``forward_intermediates``).
            sample: A few training inputs [b, ...] to learn the student's feature shapes.
            teacher_features: tap name -> [N, ...] cached teacher features.
        """
        for term in self.crossmodal:
            self.adapters[term.name] = _crossmodal_module(term, model, sample, teacher_features)
        for term in self.fitnets:
            if term.teacher_tap not in teacher_features:
                raise ValueError(f"fitnets needs the cached teacher feature '{term.teacher_tap}'")
            _, feats = _shape_probe(model, "forward_intermediates", sample)
            try:
                student = feats[term.student_stage]
            except IndexError:
                raise ValueError(
                    f"fitnets student_stage {term.student_stage}: the student has {len(feats)} "
                    "stages"
                ) from None
            hint = teacher_features[term.teacher_tap]
            teacher_shape = (student.shape[0], *hint.shape[1:])  # type: ignore[attr-defined]
            self.adapters[term.teacher_tap.replace(".", "_")] = HintAdapter(
                tuple(student.shape), teacher_shape
            )
        return list(self.adapters.parameters())

    def train(self, mode: bool = True) -> None:
        """Put the owned modules (adapters) in training or evaluation mode."""
        self.adapters.train(mode)

    def batch_loss(
        self,
        net: nn.Module,
        x: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        teacher: Mapping[str, torch.Tensor],
        epoch: int,
        total_epochs: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward the student on a batch and return the loss of every term.

        Args:
            net: The student behind :class:`~edgedistill.distill.ddp.TrainingForward`
                (``net(x, "intermediates")`` etc.; a multi-exit student for ``layered``).
            x: [B, ...] inputs; targets: [B] labels (-1 = unlabelled); indices: [B] rows.
            teacher: "logits" -> [B, K] and tap name -> [B, ...] cached teacher outputs.
            epoch, total_epochs: Schedule position.
        """
        feats: list[torch.Tensor] = []
        extra = x.new_zeros(())
        parts: dict[str, float] = {}
        if self.layered is not None:
            logits, value = _layered_term(net, x, targets, self.layered, epoch, total_epochs)
            parts["layered"] = value.item()
            extra = extra + self.layered.weight_at(epoch) * value
        elif self.crossmodal:
            pooled = net(x, "features")
            for term in self.crossmodal:
                value = self.adapters[term.name](pooled, teacher[EMBEDDING_KEY])
                parts[term.name] = value.item()
                extra = extra + term.weight_at(epoch) * value
            if not self.needs_logits:
                return extra, parts  # pure pre-training: no logit term to compute
            logits = net(x)
        elif self.fitnets:
            logits, feats = net(x, "intermediates")
        else:
            logits = net(x)
        for term in self.fitnets:
            adapter = self.adapters[term.teacher_tap.replace(".", "_")]
            value = hint_loss(adapter(feats[term.student_stage]), teacher[term.teacher_tap])
            parts["fitnets"] = value.item()
            extra = extra + term.weight_at(epoch) * value
        loss, logit_parts = self(
            logits, targets, indices, teacher.get("logits"), epoch, total_epochs
        )
        return loss + extra, {**logit_parts, **parts}

    @property
    def needs_teacher(self) -> bool:
        """Whether any term with a positive weight reads teacher logits."""
        return any(t.name in TEACHER_TERMS and t.weight > 0 for t in self.terms)

    def __call__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        epoch: int,
        total_epochs: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch and each term's unweighted value (for logging).

        Args:
            logits: [B, K] student scores.
            targets: [B] labels.
            indices: [B] dataset indices of the batch (PS-KD's memory rows).
            teacher_logits: [B, K] cached teacher scores, or None when no term needs them.
            epoch: 0-based epoch; total_epochs: schedule length.
        """
        total = logits.new_zeros(())
        parts: dict[str, float] = {}
        for term in self.terms:
            if term.name in MODEL_TERMS:
                continue  # computed by batch_loss, which sees the model
            weight = term.weight_at(epoch)
            if term.name == "ce":
                labelled = targets >= 0  # -1 marks an image without a label
                if not bool(labelled.any()):
                    parts[term.name] = 0.0
                    continue
                value = F.cross_entropy(logits[labelled], targets[labelled])
            elif term.name in TEACHER_TERMS:
                if term.weight == 0:
                    parts[term.name] = 0.0
                    continue
                if teacher_logits is None:
                    raise ValueError(f"loss term '{term.name}' needs teacher logits")
                temperature = term.temperature_at(epoch, total_epochs)
                if term.name == "kd":
                    value = kd_loss(logits, teacher_logits, temperature=temperature)
                else:
                    value = dkd_loss(
                        logits, teacher_logits, targets,
                        alpha=term.alpha, beta=term.beta, temperature=temperature,
                    )  # fmt: skip
            else:
                assert self.memory is not None
                # Epoch 0 has no previous predictions: plain labels, as in the official code.
                alpha = 0.0 if epoch == 0 else pskd_alpha(epoch, total_epochs, alpha_T=term.alpha_T)
                value = pskd_loss(logits, targets, self.memory.get(indices), alpha=alpha)
            parts[term.name] = value.item()
            total = total + weight * value
        if self.memory is not None:
            self.memory.update(indices, F.softmax(logits.detach(), dim=-1))
        return total, parts

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to resume exactly (PS-KD's memory, adapter weights)."""
        state = {f"adapters.{k}": v for k, v in self.adapters.state_dict().items()}
        if self.memory is not None:
            state["pskd_memory"] = self.memory.get(torch.arange(len(self.memory)))
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state`."""
        adapters = {k[len("adapters.") :]: v for k, v in state.items() if k.startswith("adapters.")}
        if adapters:
            self.adapters.load_state_dict(adapters)
        if self.memory is not None and "pskd_memory" in state:
            probs = state["pskd_memory"]
            self.memory.update(torch.arange(probs.shape[0]), probs)


def _shape_probe(model: nn.Module, method: str, sample: torch.Tensor) -> Any:
    """``model.<method>(sample[:2])`` in eval mode without gradients, to learn output shapes;
    a shape probe must not move batch-norm statistics, so the mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return getattr(model, method)(sample[:2])
    finally:
        model.train(was_training)


def _crossmodal_module(
    term: LossTermSpec,
    model: nn.Module,
    sample: torch.Tensor,
    teacher_features: Mapping[str, object],
) -> CrossModalTerm:
    """The projection head + loss of a cross-modal term, sized from the model and teacher."""
    embedding = teacher_features.get(EMBEDDING_KEY)
    if embedding is None:
        raise ValueError(f"loss term '{term.name}' needs cached teacher '{EMBEDDING_KEY}'s")
    pooled = _shape_probe(model, "forward_features", sample)
    return CrossModalTerm(
        term.name,
        int(pooled.shape[1]),
        int(embedding.shape[1]),  # type: ignore[attr-defined]
        temperature=term.temperature,
        student_temperature=term.student_temperature,
        queue_size=term.queue_size if term.name != "l2" else 0,
    )


def _layered_term(
    net: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    term: LossTermSpec,
    epoch: int,
    total_epochs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layered self-distillation of one batch: (deepest exit's class logits [B, K], loss).

    The batch is expanded by the term's self-supervised transformations (transform-major,
    identity first), every exit predicts the joint (class, transformation) label, and the
    deepest exit teaches the shallower ones (:func:`~edgedistill.distill.layered.layered_sd_loss`).
    """
    from edgedistill.distill.layered import (
        NUM_IMAGE_TRANSFORMS,
        NUM_IMU_TRANSFORMS,
        augmented_labels,
        class_logits,
        image_transforms,
        imu_transforms,
        layered_sd_loss,
    )

    if term.transforms == "rotate4":
        m, inputs = NUM_IMAGE_TRANSFORMS, image_transforms(x)
    elif term.transforms == "imu":
        m, inputs = NUM_IMU_TRANSFORMS, imu_transforms(x)
    else:
        m, inputs = 1, x
    features = None
    if term.feature_weight > 0:
        exits, features = net(inputs, "exits_and_features")
    else:
        exits = net(inputs, "exits")
    width = exits[-1].shape[1]
    if width % m:
        raise ValueError(
            f"layered transforms '{term.transforms}' need exits with K x {m} outputs, got {width} "
            f"(build the student as MultiExitStudent(..., num_transforms={m}))"
        )
    value, _ = layered_sd_loss(
        exits,
        augmented_labels(targets, m),
        temperature=term.temperature_at(epoch, total_epochs),
        kd_weight=term.exit_kd_weight,
        ce_weight=1.0,
        exit_features=features,
        feature_weight=term.feature_weight,
    )
    return class_logits(exits[-1][: len(x)], m), value
