"""The loss-term registry: each term is registered once, in the file of its loss.

A term is a :class:`Term` subclass registered with :func:`register_term` next to its loss
function (``kd.py`` holds ``kd_loss`` and ``KDTerm``). The class carries everything about the
term in one place:

* ``config``: its options, a :class:`TermConfig` subclass. The recipe's ``distill.terms[i]``
  (and ``pretrain.term``) is validated by looking ``name`` up here, so an unknown option is
  an error naming the options of that term, and an unknown name one naming the registered
  terms. ``weight``, ``temperature``, ``final_temperature`` and ``warmup_epochs`` are common
  to every term.
* ``needs``: what it reads (:data:`NEEDS`). The objective derives from it which forward the
  student runs and which cached teacher outputs a batch carries; the recipe checks labels and
  the teacher against it.
* ``setup`` / ``loss`` (and ``state`` / ``load_state``): its computation in the objective
  (:class:`~edgedistill.distill.objective.Objective`, which schedules and sums the terms).

The terms defined in the modules of this package are registered when the registry is first
asked (every module of ``edgedistill.distill`` is imported then); a term defined elsewhere is
registered when its module is imported. Adding a term is one file and no list to edit::

    @register_term("l1")
    class L1Term(Term[TermConfig]):
        needs = frozenset({"logits", "teacher_logits"})

        def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
            assert batch.logits is not None
            return (batch.logits - batch.teacher[TEACHER_LOGITS]).abs().mean()
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

import torch
from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from torch import nn

from edgedistill.registry import Registry
from edgedistill.schema import Section, describe_validation_error

STUDENT_OUTPUTS = {
    "logits": "the student's class scores (its forward)",
    "features": "the student's pooled features (forward_features)",
    "intermediates": "the student's stage outputs and logits (forward_intermediates)",
    "model": "the student itself: the term runs the forward and hands the logits on",
}
"""What a term reads of the student; every term names exactly one."""

TEACHER_INPUTS = {
    "teacher_logits": "cached teacher logits (teacher.card)",
    "teacher_features": "a cached teacher layer the term names (teacher.card)",
    "teacher_embedding": "cached teacher embeddings of the paired modality (teacher.video)",
}
"""What a term reads of the teacher; a term that reads one is skipped at weight 0."""

NEEDS = {
    **STUDENT_OUTPUTS,
    **TEACHER_INPUTS,
    "labels": "a label for every training sample (unlabelled data is refused)",
}
"""The vocabulary of :attr:`Term.needs`."""

TEACHER_LOGITS = "logits"  # key of the teacher logits in a batch's teacher outputs
EMBEDDING_KEY = "embedding"  # key of the cross-modal terms' clip embeddings


class TermConfig(Section):
    """Options every loss term has; a term with options of its own subclasses this.

    Attributes:
        name: The registered term name.
        weight: Weight once warmed up.
        temperature: Softmax temperature at the first epoch (terms that use one).
        final_temperature: Temperature at the last epoch (linear in between); None = constant.
        warmup_epochs: The weight grows linearly over this many epochs (epoch e of a warm-up of
            W epochs uses weight · min(1, (e + 1) / W)); 0 = full weight from the start.
    """

    name: str
    weight: float = Field(ge=0)
    temperature: float = Field(default=4.0, gt=0)
    final_temperature: float | None = Field(default=None, gt=0)
    warmup_epochs: int = Field(default=0, ge=0)

    if TYPE_CHECKING:  # a term's own options, read through the base type (e.g. ``t.transforms``)

        def __getattr__(self, name: str) -> Any: ...

    @classmethod
    def section_for(cls, raw: Mapping[str, Any]) -> type[TermConfig] | None:
        """The options model of the term ``raw`` names (lists its allowed keys in errors)."""
        name = raw.get("name")
        return TERMS.get(name).config if isinstance(name, str) and name in TERMS else None

    @property
    def needs(self) -> frozenset[str]:
        """What this term reads (:attr:`Term.needs` of its registered class)."""
        return TERMS.get(self.name).needs

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


C = TypeVar("C", bound=TermConfig)


@dataclass(frozen=True)
class TermContext:
    """What a term may use besides its options: the training set's size (per-sample state)."""

    num_samples: int = 0
    num_classes: int = 0
    memory_path: Path | None = None


@dataclass
class TermBatch:
    """What the terms read for one batch. The objective fills what the terms' needs ask for.

    Attributes:
        targets: [B] labels (-1 = unlabelled); indices: [B] dataset rows of the batch.
        teacher: Cached teacher outputs of the batch: :data:`TEACHER_LOGITS` -> [B, K], tap
            name -> [B, ...], :data:`EMBEDDING_KEY` -> [B, D_t].
        net: The student behind :class:`~edgedistill.distill.ddp.TrainingForward`
            (``net(x, "features")`` etc.); x: [B, ...] inputs. Only in :meth:`Objective.batch_loss`.
        logits: [B, K] student scores; a "model" term sets them for the terms after it.
        features: [B, D] pooled student features ("features").
        intermediates: The student's stage outputs ("intermediates").
    """

    targets: torch.Tensor
    indices: torch.Tensor
    teacher: Mapping[str, torch.Tensor]
    net: nn.Module | None = None
    x: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    intermediates: Sequence[torch.Tensor] | None = None


class Term(Generic[C]):
    """A registered loss term: its options model, what it reads and its computation.

    One instance per objective. The objective calls :meth:`setup` once before training (for
    the trainable or stateful module a term owns, e.g. an adapter), then :meth:`loss` per batch.

    Args:
        options: The validated options (``config``).
        context: The training set's size, for per-sample state.
    """

    name: ClassVar[str] = ""
    config: ClassVar[type[TermConfig]] = TermConfig
    """The options model (a :class:`TermConfig` subclass, or TermConfig for none of its own)."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """What the term reads (:data:`NEEDS`): exactly one student output, plus any of the rest."""

    def __init__(self, options: C, context: TermContext | None = None) -> None:
        self.options = options
        self.context = context or TermContext()
        self.module: nn.Module | None = None  # what setup built; trained with the student
        self.memory: Any = None  # per-sample state kept across epochs (not supported under DDP)

    @classmethod
    def student_output(cls) -> str:
        """The one :data:`STUDENT_OUTPUTS` entry of ``needs``."""
        (output,) = cls.needs & STUDENT_OUTPUTS.keys()
        return output

    @property
    def key(self) -> str:
        """Name of the term's module in the objective's state."""
        return self.name

    @property
    def reads_teacher(self) -> bool:
        return bool(self.needs & TEACHER_INPUTS.keys())

    def teacher_taps(self) -> tuple[str, ...]:
        """Cached teacher outputs besides the logits that the term reads, by key."""
        return (EMBEDDING_KEY,) if "teacher_embedding" in self.needs else ()

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, Any]
    ) -> nn.Module | None:
        """Build the module the term owns (trained with the student), if any.

        Args:
            model: The student. sample: A few training inputs [b, ...] to learn its shapes.
            teacher_features: tap name -> [N, ...] cached teacher features.
        """
        return None

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor | None:
        """The unweighted loss of one batch; None when the batch has nothing for it (logged 0)."""
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold besides the module (e.g. PS-KD's memory)."""
        return {}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state` (``state`` is the objective's whole state)."""


class _TermRegistry(Registry[type[Term[Any]]]):
    """The registry, which imports this package's modules (their terms) on first use."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._discovered = False
        self._discovering = False

    def _discover(self) -> None:
        if self._discovered or self._discovering:
            return
        self._discovering = True
        try:
            package = importlib.import_module(__name__.rpartition(".")[0])
            for info in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{package.__name__}.{info.name}")
            self._discovered = True
        finally:
            self._discovering = False

    def get(self, name: str) -> type[Term[Any]]:
        if name not in self._items:
            self._discover()
        return super().get(name)

    def names(self) -> list[str]:
        self._discover()
        return super().names()

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._discover()
        return name in self._items


TERMS = _TermRegistry("loss term")

T = TypeVar("T", bound="type[Term[Any]]")


def register_term(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`Term` subclass under ``name``.

    The declaration is checked at once: ``needs`` must come from :data:`NEEDS` and name exactly
    one student output; ``config`` must subclass :class:`TermConfig`.
    """

    def wrap(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Term)):
            raise TypeError(f"loss term '{name}' must be a Term subclass")
        unknown = sorted(cls.needs - NEEDS.keys())
        if unknown:
            raise ValueError(f"loss term '{name}': unknown needs {unknown}; known: {sorted(NEEDS)}")
        if len(cls.needs & STUDENT_OUTPUTS.keys()) != 1:
            raise ValueError(
                f"loss term '{name}' must need exactly one of {', '.join(STUDENT_OUTPUTS)} "
                f"(needs {sorted(cls.needs)})"
            )
        if not (isinstance(cls.config, type) and issubclass(cls.config, TermConfig)):
            raise TypeError(f"loss term '{name}': config must subclass TermConfig")
        clash = sorted({"options", "config"} & cls.config.model_fields.keys())
        if clash:
            raise ValueError(f"loss term '{name}': option names {clash} are reserved")
        TERMS.register(name)(cls)  # refuses a name already taken
        cls.name = name
        return cls

    return wrap


def parse_term(raw: Mapping[str, Any] | TermConfig, context: Any = None) -> TermConfig:
    """Validate a term's mapping with the options model of the term it names.

    Raises:
        ValueError: Unknown or missing name (naming the registered terms).
        pydantic.ValidationError: A bad option (a ValueError too).
    """
    if isinstance(raw, TermConfig):
        if raw.name in TERMS and type(raw) is TERMS.get(raw.name).config:
            return raw
        raw = raw.model_dump()
    name = raw.get("name")
    if not isinstance(name, str) or name not in TERMS:
        known = ", ".join(TERMS.names())
        if name is None:
            raise ValueError(f"a loss term needs a name; known: {known}")
        raise ValueError(f"unknown loss term {name!r}; known: {known}")
    return TERMS.get(name).config.model_validate(dict(raw), context=context)


def term_error(exc: ValidationError, raw: Mapping[str, Any]) -> ValueError:
    """One-line ValueError for a term that failed validation outside a recipe."""
    model = TermConfig.section_for(raw) or TermConfig
    message = describe_validation_error(exc, model).removeprefix("(top level): ")
    return ValueError(f"loss term '{raw.get('name')}': {message}")


def _validate_registered(
    value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> Any:
    if isinstance(value, Mapping | TermConfig):
        return parse_term(value, context=info.context)
    return handler(value)


LossTerm = Annotated[TermConfig, SerializeAsAny(), WrapValidator(_validate_registered)]
"""A recipe field holding one loss term: validated by the options model its name registers,
dumped with all of that model's options."""


class TermsNeeding(AbstractSet[str]):
    """The registered term names whose ``needs`` include ``need``: a live view of the registry
    (a term registered later is in it too)."""

    def __init__(self, need: str) -> None:
        if need not in NEEDS:
            raise ValueError(f"unknown need {need!r}; known: {sorted(NEEDS)}")
        self.need = need

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in TERMS and self.need in TERMS.get(name).needs

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in TERMS.names() if self.need in TERMS.get(name).needs])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __repr__(self) -> str:
        return f"TermsNeeding({self.need!r}: {', '.join(self)})"


def shape_probe(model: nn.Module, method: str, sample: torch.Tensor) -> Any:
    """``model.<method>(sample[:2])`` in eval mode without gradients, to learn output shapes;
    a shape probe must not move batch-norm statistics, so the mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return getattr(model, method)(sample[:2])
    finally:
        model.train(was_training)
