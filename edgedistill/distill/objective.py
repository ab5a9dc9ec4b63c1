"""A training objective: weighted loss terms, with per-epoch schedules.

A recipe combines registered terms (:mod:`edgedistill.distill.terms`) by name with weights:
on logits ``ce``, ``kd``, ``dkd``, ``pskd``; on features ``fitnets`` (a student stage
regressed onto a cached teacher feature through a trainable adapter); ``layered`` (layered
self-distillation over a multi-exit student's exits, no teacher); ``comodo``, ``infonce``,
``l2`` (cross-modal, on the student's pooled features). Each term may ramp its weight up
linearly over its first ``warmup_epochs`` epochs (e.g. a KD weight ramp, or DKD's warm-up) and
decay its temperature linearly from ``temperature`` to ``final_temperature`` over training.
Each term lives in the file of its loss, which registers it; this module knows none of them
by name: it runs the student forward their ``needs`` ask for, then schedules and sums them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from edgedistill.distill.terms import (
    EMBEDDING_KEY,
    TEACHER_LOGITS,
    TERMS,
    Term,
    TermBatch,
    TermConfig,
    TermContext,
    TermsNeeding,
    parse_term,
    term_error,
)

__all__ = ["EMBEDDING_KEY", "TEACHER_TERMS", "LossTermSpec", "Objective"]

TEACHER_TERMS: TermsNeeding = TermsNeeding("teacher_logits")
"""Names of the registered terms that read teacher logits (a live view of the registry)."""

_COMMON = tuple(TermConfig.model_fields)  # name, weight, temperature, final_temperature, ...


@dataclass(frozen=True, init=False)
class LossTermSpec:
    """One weighted term and its schedule: a registered term's validated options.

    ``LossTermSpec("kd", 0.9, temperature=4.0)``; the options besides the common ones are the
    term's own (``LossTermSpec("dkd", 1.0, beta=8.0)``), validated by its options model and
    readable as attributes (``spec.beta``). ``LossTermSpec(**term.model_dump())`` takes a
    recipe term, ``LossTermSpec(**dataclasses.asdict(spec))`` a spec read back.

    Attributes:
        name: The registered term (:data:`~edgedistill.distill.terms.TERMS`).
        weight: Weight once warmed up.
        temperature: Softmax temperature at the first epoch.
        final_temperature: Temperature at the last epoch (linear in between); None = constant.
        warmup_epochs: The weight grows linearly over this many epochs; 0 = full weight.
        options: The term's own options, defaults filled in.
    """

    name: str
    weight: float
    temperature: float = 4.0
    final_temperature: float | None = None
    warmup_epochs: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        name: str,
        weight: float,
        temperature: float = 4.0,
        final_temperature: float | None = None,
        warmup_epochs: int = 0,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        raw = {
            **(options or {}),
            **kwargs,
            "name": name,
            "weight": weight,
            "temperature": temperature,
            "final_temperature": final_temperature,
            "warmup_epochs": warmup_epochs,
        }
        try:
            config = parse_term(raw)
        except ValidationError as exc:
            raise term_error(exc, raw) from None
        values = config.model_dump()
        for key in _COMMON:
            object.__setattr__(self, key, values.pop(key))
        object.__setattr__(self, "options", values)
        object.__setattr__(self, "_config", config)

    @property
    def config(self) -> TermConfig:
        """The validated options model of the term."""
        config: TermConfig = self.__dict__["_config"]
        return config

    def __getattr__(self, item: str) -> Any:
        """The term's own options as attributes (``spec.teacher_tap``)."""
        options = self.__dict__.get("options")
        if options is not None and item in options:
            return options[item]
        raise AttributeError(f"loss term {self.__dict__.get('name')!r} has no option {item!r}")

    def __hash__(self) -> int:
        return hash((*(getattr(self, k) for k in _COMMON), tuple(sorted(self.options.items()))))

    def weight_at(self, epoch: int) -> float:
        """Weight during 0-based ``epoch``."""
        return self.config.weight_at(epoch)

    def temperature_at(self, epoch: int, total_epochs: int) -> float:
        """Temperature during 0-based ``epoch`` of ``total_epochs``."""
        return self.config.temperature_at(epoch, total_epochs)


class Objective:
    """Sums the weighted terms for one batch and keeps the state some terms need.

    A term that reads a teacher output is skipped at weight 0 (not set up, its teacher output
    never loaded; a logit term of that kind is logged as 0). Terms reading different student
    outputs besides the logits (e.g. pooled features and stage outputs) cannot be combined.

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
        context = TermContext(num_samples, num_classes, memory_path)
        self._all: list[Term[Any]] = [TERMS.get(t.name)(t.config, context) for t in terms]
        self._skipped = {t.name for t in self._all if t.reads_teacher and t.options.weight == 0}
        self._running = [t for t in self._all if t.name not in self._skipped]
        self._logit_terms = [t for t in self._all if t.student_output() == "logits"]
        # terms that read more than the logits of one forward, computed by batch_loss
        self._model_terms = [t for t in self._running if t.student_output() != "logits"]
        outputs = [t.student_output() for t in self._model_terms]
        if len(set(outputs)) > 1 or outputs.count("model") > 1:
            raise ValueError(
                f"loss terms {[t.name for t in self._model_terms]} cannot be combined: they read "
                f"different student outputs ({', '.join(outputs)})"
            )
        self._reads = set(outputs)
        # Trainable parts some terms own (FitNets' regressors, cross-modal projection heads and
        # queues): trained with the student, dropped after distillation.
        self.adapters = nn.ModuleDict()
        self.needs_logits = any(t.options.weight > 0 for t in self._logit_terms)

    @property
    def memory(self) -> Any:
        """Per-sample state a term keeps across epochs (PS-KD's predictions), or None."""
        return next((t.memory for t in self._all if t.memory is not None), None)

    @property
    def teacher_taps(self) -> list[str]:
        """Teacher features (besides logits) that some term reads."""
        return list(dict.fromkeys(tap for t in self._running for tap in t.teacher_taps()))

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, object]
    ) -> list[nn.Parameter]:
        """Build the trainable parts some terms own; returns their parameters for the optimiser.

        Args:
            model: The student (FitNets reads its ``forward_intermediates``).
            sample: A few training inputs [b, ...] to learn the student's feature shapes.
            teacher_features: tap name -> [N, ...] cached teacher features.
        """
        for term in self._running:
            module = term.setup(model, sample, teacher_features)
            if module is not None:
                term.module = module
                self.adapters[term.key] = module
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
        batch = TermBatch(targets, indices, teacher, net=net, x=x)
        if "features" in self._reads:
            batch.features = net(x, "features")
        if "intermediates" in self._reads:
            batch.logits, batch.intermediates = net(x, "intermediates")
        extra = x.new_zeros(())
        parts: dict[str, float] = {}
        for term in self._model_terms:  # a "model" term sets batch.logits
            value = term.loss(batch, epoch, total_epochs)
            parts[term.name] = 0.0 if value is None else value.item()
            if value is not None:
                extra = extra + term.options.weight_at(epoch) * value
        if batch.logits is None:
            if not self.needs_logits and "features" in self._reads:
                return extra, parts  # pure pre-training: no logit term to compute
            batch.logits = net(x)
        loss, logit_parts = self._logit_loss(batch, epoch, total_epochs)
        return loss + extra, {**logit_parts, **parts}

    @property
    def needs_teacher(self) -> bool:
        """Whether any term with a positive weight reads teacher logits."""
        return any("teacher_logits" in t.needs and t.options.weight > 0 for t in self._all)

    def __call__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        epoch: int,
        total_epochs: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of the logit terms on one batch and each term's unweighted value (for logging).

        Args:
            logits: [B, K] student scores.
            targets: [B] labels.
            indices: [B] dataset indices of the batch (PS-KD's memory rows).
            teacher_logits: [B, K] cached teacher scores, or None when no term needs them.
            epoch: 0-based epoch; total_epochs: schedule length.
        """
        teacher = {} if teacher_logits is None else {TEACHER_LOGITS: teacher_logits}
        batch = TermBatch(targets, indices, teacher, logits=logits)
        return self._logit_loss(batch, epoch, total_epochs)

    def _logit_loss(
        self, batch: TermBatch, epoch: int, total_epochs: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert batch.logits is not None
        total = batch.logits.new_zeros(())
        parts: dict[str, float] = {}
        for term in self._logit_terms:
            if term.name in self._skipped:
                parts[term.name] = 0.0
                continue
            if "teacher_logits" in term.needs and TEACHER_LOGITS not in batch.teacher:
                raise ValueError(f"loss term '{term.name}' needs teacher logits")
            value = term.loss(batch, epoch, total_epochs)
            if value is None:
                parts[term.name] = 0.0
                continue
            parts[term.name] = value.item()
            total = total + term.options.weight_at(epoch) * value
        return total, parts

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to resume exactly (adapter weights, PS-KD's memory)."""
        state = {f"adapters.{k}": v for k, v in self.adapters.state_dict().items()}
        for term in self._all:
            state.update(term.state())
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state`."""
        adapters = {k[len("adapters.") :]: v for k, v in state.items() if k.startswith("adapters.")}
        if adapters:
            self.adapters.load_state_dict(adapters)
        for term in self._all:
            term.load_state(state)
