"""LSSKD / HSAKD self-distillation: joint (class × transformation) auxiliary heads, plain main head.

HSAKD: Yang, An, Cai, Xu. "Hierarchical Self-supervised Augmented Knowledge Distillation",
IJCAI 2021 (arXiv:2107.13715; reference code github.com/winycg/HSAKD). LSSKD: Dahri et al.
"A Layered Self-Supervised Knowledge Distillation Framework for Efficient Multimodal Learning on
the Edge" (arXiv:2506.07055), which applies HSAKD's hierarchy inside one network (no teacher)
and softens every target with the previous epoch's predictions, as PS-KD does.

The network (a :class:`~edgedistill.students.multi_exit.MultiExitStudent` built by
:func:`lsskd_student`): an auxiliary head c_l after each of the L stages, the last included,
predicts the self-supervised augmented distribution q_l(t_j(x)) over K·M joint labels (class k
under transformation j has joint label k·M + j); the backbone's own classifier keeps its K
classes, p(x), and is what is deployed (the auxiliary heads are removed).

What :func:`lsskd_loss` implements, per batch of B samples expanded transform-major to M·B rows
(row j·B + b is t_j(x_b), t_0 the identity; τ the temperature; ``sg`` = no gradient):

    L = CE(p(x), ŷ)                                               main head, identity rows only
      + Σ_{l=1..L} mean_j CE(q_l(t_j x), ŷ_l,j)                    HSAKD's joint-label task loss
      + w_kd · τ² Σ_{l<L} mean_j KL(sg q_L(t_j x; τ) ‖ q_l(t_j x; τ))   deepest → shallower heads
      + w_main · τ² KL(sg q̃_L(x; τ) ‖ p(x; τ))                     aux knowledge → main head
      + w_f · Σ_{l<L} mean (f_l − sg f_L)²                         optional L2 feature alignment

* ŷ = (1 − α)·onehot(y) + α·p_{e−1}(x) and ŷ_l,j = (1 − α)·onehot(y·M + j) + α·q_{l,e−1}(t_j x):
  LSSKD's hierarchical label softening with the model's own previous-epoch softmax (PS-KD); α
  follows PS-KD's schedule α_T·(e + 1)/E with α = 0 at epoch 0 (the official PS-KD code's
  one-hot epoch 0). α_T = 0 leaves HSAKD's hard joint labels.
* The KL terms are HSAKD's one-to-one transfer of augmented distributions (its L_KL_q, kd_T = 3)
  with the network's deepest auxiliary head in the teacher's place, and its transfer to the main
  classifier (L_KL_p) from q̃_L(x), the deepest head's identity-transformation slice (columns
  k·M) on the untransformed rows: the class distribution given "not transformed", the one the
  deployed head sees.
* KL uses batch-mean reduction over rows, as the reference code's ``DistillKL``.

Not implemented: HSAKD's teacher → student mode (a frozen teacher with its own auxiliary heads);
only self-distillation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from edgedistill.distill.fitnets import hint_loss
from edgedistill.distill.layered import (
    NUM_IMAGE_TRANSFORMS,
    NUM_IMU_TRANSFORMS,
    augmented_labels,
    class_logits,
    image_transforms,
    imu_transforms,
)
from edgedistill.distill.pskd import PredictionMemory, pskd_alpha
from edgedistill.distill.terms import Term, TermBatch, TermConfig, TermContext, register_term
from edgedistill.errors import RecipeError

LSSKD_TRANSFORMS = {"rotate4": NUM_IMAGE_TRANSFORMS, "imu": NUM_IMU_TRANSFORMS}
"""Transformation sets of the ``lsskd`` term and their size M (identity first)."""


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.0,
    prev_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over labelled rows of −Σ_k ŷ_k log σ(z)_k, ŷ = (1 − α)·onehot(y) + α·p_prev.

    Args:
        logits: [N, C]. targets: [N] labels in [0, C) or -1 (row left out).
        alpha: weight of ``prev_probs`` in [0, 1]; 0 gives plain cross-entropy.
        prev_probs: [N, C] previous predictions (constants); needed when alpha > 0.

    Returns:
        Scalar; 0 (still in the graph) when no row is labelled.
    """
    labelled = targets >= 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    z, y = logits[labelled], targets[labelled]
    if alpha == 0.0 or prev_probs is None:
        return F.cross_entropy(z, y)
    soft = (1.0 - alpha) * F.one_hot(y, z.shape[1]).to(z) + alpha * prev_probs[labelled].to(z)
    return -(soft.detach() * F.log_softmax(z, dim=1)).sum(dim=1).mean()


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ² · KL(σ(teacher/τ) ‖ σ(student/τ)), batch mean; the teacher is a constant."""
    log_p = F.log_softmax(student / temperature, dim=1)
    target = F.softmax(teacher.detach() / temperature, dim=1)
    return F.kl_div(log_p, target, reduction="batchmean") * temperature**2


def lsskd_loss(
    aux_logits: Sequence[torch.Tensor],
    main_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_transforms: int,
    temperature: float = 3.0,
    kd_weight: float = 1.0,
    main_kd_weight: float = 1.0,
    alpha: float = 0.0,
    aux_prev: Sequence[torch.Tensor] | None = None,
    main_prev: torch.Tensor | None = None,
    aux_features: Sequence[torch.Tensor] | None = None,
    feature_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The LSSKD / HSAKD self-distillation loss of the module docstring.

    Args:
        aux_logits: L >= 1 tensors [M·B, K·M], the auxiliary heads shallow -> deep, rows
            transform-major (row j·B + b is transformation j of sample b, j = 0 the identity).
        main_logits: [B, K] main classifier on the untransformed rows.
        targets: [B] class labels in [0, K), or -1 (left out of the CE terms, still distilled).
        num_transforms: M.
        temperature: τ > 0 of the KL terms (which carry τ²).
        kd_weight: w_kd, deepest auxiliary head -> each shallower one.
        main_kd_weight: w_main, deepest head's identity slice -> main classifier.
        alpha: softening weight α in [0, 1] of the previous predictions.
        aux_prev: L tensors [M·B, K·M], previous-epoch softmax of each head (needed if α > 0).
        main_prev: [B, K], previous-epoch softmax of the main head (needed if α > 0).
        aux_features: Optional L features [M·B, D], the deepest is the alignment target.
        feature_weight: w_f; needs ``aux_features`` when > 0.

    Returns:
        (scalar loss, unweighted parts ``ce/main``, ``ce/l``, ``kd/l``, ``kd/main``, ``hint/l``).
    """
    m = num_transforms
    if not aux_logits:
        raise ValueError("lsskd_loss needs at least one auxiliary head")
    if m < 1 or temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need M >= 1, temperature > 0, alpha in [0, 1]; got {m}, "
                         f"{temperature}, {alpha}")  # fmt: skip
    if min(kd_weight, main_kd_weight, feature_weight) < 0:
        raise ValueError("kd_weight, main_kd_weight and feature_weight must be >= 0")
    if main_logits.dim() != 2 or targets.shape != main_logits.shape[:1] or not _is_integer(targets):
        raise ValueError(
            f"main logits must be [B, K] and targets [B] integer labels, got "
            f"{tuple(main_logits.shape)} and {tuple(targets.shape)}"
        )
    b, k = main_logits.shape
    deep = aux_logits[-1]
    if any(z.shape != (m * b, k * m) for z in aux_logits):
        shapes = [tuple(z.shape) for z in aux_logits]
        raise ValueError(f"auxiliary logits must be [M·B, K·M] = [{m * b}, {k * m}], got {shapes}")
    if targets.numel() and (int(targets.min()) < -1 or int(targets.max()) >= k):
        raise ValueError(f"targets must lie in [0, {k}) or be -1")
    if alpha > 0 and (aux_prev is None or main_prev is None or len(aux_prev) != len(aux_logits)):
        raise ValueError("alpha > 0 needs aux_prev (one per head) and main_prev")
    if feature_weight > 0 and (aux_features is None or len(aux_features) != len(aux_logits)):
        raise ValueError("feature_weight > 0 needs one aux feature per auxiliary head")

    joint = augmented_labels(targets, m)
    total = soft_cross_entropy(main_logits, targets, alpha, main_prev)
    parts = {"ce/main": total.detach()}
    for i, logits in enumerate(aux_logits):
        ce = soft_cross_entropy(logits, joint, alpha, None if aux_prev is None else aux_prev[i])
        total = total + ce
        parts[f"ce/{i}"] = ce.detach()
        if i < len(aux_logits) - 1:
            kd = _kl(logits, deep, temperature)
            total = total + kd_weight * kd
            parts[f"kd/{i}"] = kd.detach()
            if feature_weight > 0 and aux_features is not None:
                hint = hint_loss(aux_features[i], aux_features[-1].detach())
                total = total + feature_weight * hint
                parts[f"hint/{i}"] = hint.detach()
    kd_main = _kl(main_logits, class_logits(deep[:b], m), temperature)
    total = total + main_kd_weight * kd_main
    parts["kd/main"] = kd_main.detach()
    values = torch.stack(list(parts.values())).tolist()  # one device sync for all parts
    return total, dict(zip(parts, values, strict=True))


def lsskd_student(student: nn.Module, transforms: str) -> nn.Module:
    """Wrap a pooled-classifier student for the ``lsskd`` term (LSSKD / HSAKD layout).

    Returns a :class:`~edgedistill.students.multi_exit.MultiExitStudent` with a joint K·M head
    after every stage (the last included) and the plain K-class main classifier.
    """
    from edgedistill.students.multi_exit import MultiExitStudent  # students import distill

    if transforms not in LSSKD_TRANSFORMS:
        raise RecipeError(f"lsskd transforms must be one of {sorted(LSSKD_TRANSFORMS)}, "
                          f"got {transforms!r}")  # fmt: skip
    return MultiExitStudent(
        student, num_transforms=LSSKD_TRANSFORMS[transforms], joint_main=False,
        last_stage_exit=True,
    )  # fmt: skip


class LSSKDConfig(TermConfig):
    """Options of the ``lsskd`` term (temperature defaults to HSAKD's kd_T = 3)."""

    temperature: float = Field(default=3.0, gt=0)
    transforms: Literal["rotate4", "imu"] = Field(
        default="rotate4", description="self-supervised transformations (rotate4 | imu)"
    )
    kd_weight: float = Field(default=1.0, ge=0, description="deepest -> shallower heads KL")
    main_kd_weight: float = Field(default=1.0, ge=0, description="aux -> main head KL")
    alpha_T: float = Field(
        default=0.0, ge=0, le=1, description="label softening by previous predictions (PS-KD)"
    )
    feature_weight: float = Field(default=0.0, ge=0, description="L2 feature alignment weight")


@register_term("lsskd")
class LSSKDTerm(Term[LSSKDConfig]):
    """``lsskd``: :func:`lsskd_loss` over a student built by :func:`lsskd_student`, no teacher.

    The batch is expanded by ``transforms`` (transform-major, identity first), one forward runs
    every head, and the main classifier's logits of the untransformed rows are the logits the
    other terms read. With ``alpha_T`` > 0 the previous-epoch predictions of every head live in
    a :class:`~edgedistill.distill.pskd.PredictionMemory` (checkpointed as ``lsskd_memory``).
    """

    config = LSSKDConfig
    needs = frozenset({"model"})

    def __init__(self, options: LSSKDConfig, context: TermContext | None = None) -> None:
        super().__init__(options, context)
        self._layout: tuple[int, int] | None = None  # (heads L, classes K) once seen

    def setup(
        self, model: nn.Module, sample: torch.Tensor, teacher_features: Mapping[str, object]
    ) -> nn.Module | None:
        """Create the prediction memory up front (so a resumed run can load it)."""
        heads, k = getattr(model, "heads", None), getattr(model, "num_classes", None)
        if self.options.alpha_T > 0 and isinstance(heads, nn.ModuleList) and isinstance(k, int):
            self._memory(len(heads), k)
        return None

    def _memory(self, heads: int, k: int) -> PredictionMemory:
        if self.memory is None:
            ctx, m = self.context, LSSKD_TRANSFORMS[self.options.transforms]
            path = ctx.memory_path
            path = None if path is None else path.with_name(f"{path.stem}-lsskd.npy")
            self.memory = PredictionMemory(ctx.num_samples, k + heads * m * k * m, path)
            self._layout = (heads, k)
        elif self._layout != (heads, k):
            raise ValueError(f"lsskd memory was built for {self._layout}, got {(heads, k)}")
        return self.memory  # type: ignore[no-any-return]

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        net, x, options = batch.net, batch.x, self.options
        if net is None or x is None:
            raise ValueError("the lsskd term needs the student and its inputs")
        m = LSSKD_TRANSFORMS[options.transforms]
        inputs = image_transforms(x) if options.transforms == "rotate4" else imu_transforms(x)
        if options.feature_weight > 0:
            exits, features = net(inputs, "exits_and_features")
        else:
            exits, features = net(inputs, "exits"), None
        *aux, main = exits
        b = len(x)
        if not aux or main.shape[1] * m != aux[-1].shape[1]:
            raise ValueError(
                f"lsskd needs auxiliary heads with K x {m} outputs and a K-class main head, got "
                f"{[tuple(z.shape) for z in exits]} (build the student with lsskd_student)"
            )
        main = main[:b]
        alpha, aux_prev, main_prev = 0.0, None, None
        if options.alpha_T > 0:
            memory = self._memory(len(aux), main.shape[1])
            if epoch > 0:  # epoch 0: plain labels, as the official PS-KD code
                alpha = pskd_alpha(epoch, total_epochs, alpha_T=options.alpha_T)
                main_prev, aux_prev = self._split(memory.get(batch.indices), len(aux), m, b)
        value, _ = lsskd_loss(
            aux, main, batch.targets, num_transforms=m,
            temperature=options.temperature_at(epoch, total_epochs),
            kd_weight=options.kd_weight, main_kd_weight=options.main_kd_weight, alpha=alpha,
            aux_prev=aux_prev, main_prev=main_prev,
            aux_features=None if features is None else features[: len(aux)],
            feature_weight=options.feature_weight,
        )  # fmt: skip
        if options.alpha_T > 0:
            self._memory(len(aux), main.shape[1]).update(batch.indices, self._join(main, aux, m))
        batch.logits = main
        return value

    @staticmethod
    def _join(main: torch.Tensor, aux: Sequence[torch.Tensor], m: int) -> torch.Tensor:
        """One memory row per sample: [p (K) | q_1 (M × K·M) | ... | q_L], softmax, detached."""
        b = main.shape[0]
        rows = [F.softmax(main.detach(), dim=1)]
        for z in aux:  # [M·B, K·M] -> [B, M·K·M], transformation j at block j
            q = F.softmax(z.detach(), dim=1)
            rows.append(q.view(m, b, -1).transpose(0, 1).reshape(b, -1))
        return torch.cat(rows, dim=1)

    @staticmethod
    def _split(
        rows: torch.Tensor, heads: int, m: int, b: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Inverse of :meth:`_join`: (main [B, K], L heads [M·B, K·M])."""
        k = rows.shape[1] // (1 + heads * m * m)  # width K + L·M·K·M
        main, rest = rows[:, :k], rows[:, k:]
        aux = [
            blk.reshape(b, m, k * m).transpose(0, 1).reshape(m * b, k * m)
            for blk in rest.split(m * k * m, dim=1)
        ]
        return main, aux

    def state(self) -> dict[str, torch.Tensor]:
        if self.memory is None:
            return {}
        return {"lsskd_memory": self.memory.get(torch.arange(len(self.memory)))}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if "lsskd_memory" in state and self.memory is not None:
            probs = state["lsskd_memory"]
            self.memory.update(torch.arange(probs.shape[0]), probs)
