"""The recipe schema: typed, validated, frozen. YAML only fills it.

A recipe is one YAML file with the sections ``data``, ``teacher``, ``student``, ``distill``,
``prune``, ``quantize``, ``export``, ``profile`` and ``gates``. :func:`load_recipe` validates
it completely before any work starts; the first problem is reported as one line that names
the field, the value and what is allowed (:class:`~edgedistill.errors.RecipeError`).
Relative paths are resolved against the recipe file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from edgedistill.distill.crossmodal import CROSSMODAL_TERMS
from edgedistill.distill.dino_pretrain import DinoSettings
from edgedistill.distill.terms import (
    STUDENT_OUTPUTS,
    TEACHER_INPUTS,
    LossTerm,
    TermConfig,
    parse_term,
)
from edgedistill.errors import RecipeError
from edgedistill.schema import (
    Section,
    describe_validation_error,
    read_yaml,
    resolve_path,
    validate_section,
)
from edgedistill.tasks.sources import SourceConfig, parse_data_section

_Section = Section  # the base of every section (edgedistill.schema)
TEACHER_CARD_NEEDS = frozenset({"teacher_logits", "teacher_features"})  # terms needing a card
_resolve = resolve_path

# Sanity limits of the count fields: a value past one is a typo (an extra zero, a sample
# count where an epoch count belongs) that would otherwise train or measure "forever".
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_SAMPLES = 1_000_000
MAX_CALIBRATION_SAMPLES = 100_000
MAX_THREADS = 1_024
MAX_WARMUP = 100_000
MAX_RUNS = 1_000_000
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; negative seeds are refused by numpy


class TeacherAdaptConfig(_Section):
    """Adapt a teacher without this task's head: train a head on its frozen features, freeze.

    ``linear_probe`` trains a linear head on the teacher's pooled features (cached);
    ``finetune`` then also trains the head with the last ``unfreeze_blocks`` of ``blocks``.
    The adapted teacher's hash (base weights + head) keys every downstream cache.
    """

    method: Literal["linear_probe", "finetune"] = "linear_probe"
    epochs: int = Field(default=100, ge=1, le=MAX_EPOCHS, description="1..10,000")
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    blocks: tuple[str, ...] = Field(default=(), description="finetune: ordered block names")
    unfreeze_blocks: int = Field(default=1, ge=1, le=1_000, description="1..1,000")
    finetune_epochs: int = Field(default=3, ge=1, le=MAX_EPOCHS, description="1..10,000")
    finetune_lr: float = Field(default=1e-4, gt=0)


class VideoTeacherConfig(_Section):
    """A frozen video teacher of the paired video stream (cross-modal pre-training).

    An ImageNet backbone per frame with temporal statistics; its clip embeddings are cached,
    and the target the student learns is the chosen statistics, standardised and PCA-reduced
    on the training clips (:mod:`edgedistill.crossmodal_chain`).
    """

    backbone: Literal["mobilenet_v2", "efficientnet_lite0"] = "mobilenet_v2"
    image_size: int = Field(default=64, ge=32, le=1_024, description="pixels, 32..1,024")
    layer: int | None = Field(
        default=11,
        ge=1,
        le=100,
        description="mobilenet_v2: mid-level layer of the frame feature (1..100)",
    )
    grid: int = Field(
        default=4, ge=1, le=64, description="spatial grid the frame feature keeps (1..64)"
    )
    target_stats: tuple[Literal["mean", "std", "absdiff", "trend"], ...] = (
        "std",
        "absdiff",
        "trend",
    )
    pca_dim: int | None = Field(default=128, ge=2, le=4_096, description="2..4,096")


class TeacherConfig(_Section):
    """The frozen teacher: a card (a model over the task's own input: logits, features) or a
    video teacher of a paired stream (``video``, for the ``pretrain`` stage)."""

    card: Path | None = None
    adapt: TeacherAdaptConfig | None = Field(
        default=None, description="train a head for this task's labels on the frozen teacher"
    )
    video: VideoTeacherConfig | None = None

    @field_validator("card")
    @classmethod
    def _card_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _resolve(value, info)
        if not path.is_file():
            raise ValueError(f"teacher card {str(path)!r} does not exist")
        return path

    @model_validator(mode="after")
    def _one_kind(self) -> TeacherConfig:
        if (self.card is None) == (self.video is None):
            raise ValueError("name exactly one of teacher.card and teacher.video")
        if self.adapt is not None and self.card is None:
            raise ValueError("teacher.adapt needs teacher.card")
        return self


class StudentConfig(_Section):
    """A registered architecture and its constructor arguments."""

    arch: str = "convnet"
    config: dict[str, Any] = Field(default_factory=dict)
    max_teacher_param_fraction: float | None = Field(default=None, gt=0, le=1)
    early_exits: bool = Field(
        default=False,
        description="with a layered term: keep the auxiliary exits as early exits; the distill "
        "stage exports every exit, verifies each against torch and profiles each",
    )


class DistillConfig(_Section):
    """Training of the student: optimiser, schedule and the weighted loss terms.

    Each term is ``{name, weight, temperature, final_temperature, warmup_epochs}`` plus the
    options of the registered term it names (:mod:`edgedistill.distill.terms`).
    """

    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS, description="1..10,000")
    batch_size: int = Field(default=128, ge=1, le=MAX_BATCH, description="1..65,536")
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    terms: tuple[LossTerm, ...] = (
        parse_term({"name": "ce", "weight": 0.1}),
        parse_term({"name": "kd", "weight": 0.9, "temperature": 4.0}),
    )
    teacher_batch_size: int = Field(default=500, ge=1, le=MAX_BATCH, description="1..65,536")
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    grad_clip: float | None = Field(default=None, gt=0, description="max global gradient norm")
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EPOCHS,
        description="epochs without improvement on a validation split (1..10,000)",
    )
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="held out of training data for early stopping"
    )

    @field_validator("terms")
    @classmethod
    def _unique_terms(cls, terms: tuple[TermConfig, ...]) -> tuple[TermConfig, ...]:
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"each term may appear once, got {names}")
        if not terms or sum(t.weight for t in terms) <= 0:
            raise ValueError("at least one term needs a positive weight")
        # One student forward besides the logits: e.g. rkd (pooled features) and at / fitnets
        # (stage outputs) cannot train together (the objective skips weight-0 teacher terms).
        reads: dict[str, list[str]] = {}
        for t in terms:
            (output,) = t.needs & STUDENT_OUTPUTS.keys()
            if output != "logits" and (t.weight > 0 or not t.needs & TEACHER_INPUTS.keys()):
                reads.setdefault(output, []).append(t.name)
        if len(reads) > 1 or len(reads.get("model", [])) > 1:
            parts = "; ".join(f"{', '.join(names)}: {output}" for output, names in reads.items())
            raise ValueError(
                f"these terms read different student outputs and cannot be combined ({parts}); "
                "keep one kind"
            )
        return terms


class PruneConfig(_Section):
    """Structured channel pruning (torch-pruning) and KD recovery fine-tuning.

    Give one target: ``target_macs_ratio`` (MACs after / before; 0.7 when neither is given)
    or ``target_latency``: the pruned student's batch-1 p50, measured on the recipe's first
    ONNX runtime in ``profile.runtimes`` at ``profile.threads``, as a fraction of the
    unpruned student's (:mod:`edgedistill.compress.latency_prune`; widths are multiples the
    runtime is measured to like, so ``round_to`` is not used). ``max_candidates`` bounds the
    models timed for it. Recipes without ``target_latency`` dump (and fingerprint) exactly
    as before it existed.
    """

    enabled: bool = True
    target_macs_ratio: float | None = Field(default=None, gt=0, lt=1)
    round_to: int = Field(default=8, ge=1, le=1_024, description="channels, 1..1,024")
    importance: Literal["l1", "l2"] = "l2"
    finetune_epochs: int = Field(default=4, ge=0, le=MAX_EPOCHS, description="0..10,000")
    finetune_lr: float = Field(default=0.02, gt=0)
    target_latency: float | None = Field(
        default=None, gt=0, lt=1, description="fraction of the unpruned student's p50, in (0, 1)"
    )
    max_candidates: int = Field(
        default=64, ge=24, le=1_000, description="models timed by target_latency, 24..1,000"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        macs, latency = raw.get("target_macs_ratio"), raw.get("target_latency")
        if macs is not None and latency is not None:
            raise ValueError("give one of target_macs_ratio and target_latency, not both")
        if latency is None and raw.get("max_candidates") is not None:
            raise ValueError("max_candidates needs target_latency")
        if macs is None and latency is None:
            raw = {**raw, "target_macs_ratio": _DEFAULT_MACS_RATIO}
        return raw

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The latency fields appear only when used, so a MACs recipe's dump, and with it the
        # prune stage's fingerprint and the run's recipe.json, is unchanged.
        data: dict[str, Any] = handler(self)
        if self.target_latency is None:
            data.pop("target_latency", None)
            data.pop("max_candidates", None)
        else:
            data.pop("target_macs_ratio", None)
        return data


_DEFAULT_MACS_RATIO = 0.7


class QuantizeConfig(_Section):
    """INT8 QDQ ONNX of every student: ONNX Runtime static PTQ (default) or NNCF.

    ``backend: nncf`` quantizes with NNCF (the ``[nncf]`` extra); ``accuracy_control`` then
    keeps the layers that cost most in float until the task-metric drop on a validation
    subset of the *training* data (never the test split) is within
    ``gates.int8_max_accuracy_drop``. ``qat: when_ptq_misses_gate`` measures that drop after
    PTQ (either backend) and, when it exceeds the gate, runs quantization-aware training with
    the teacher's soft labels (KD) instead and writes that model. ``sensitivity`` writes the
    per-layer table ``quantize/sensitivity.json`` (auto: with the nncf backend or qat).
    """

    enabled: bool = True
    calibration_samples: int = Field(
        default=512, ge=8, le=MAX_CALIBRATION_SAMPLES, description="8..100,000"
    )
    per_channel: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    reduce_range: bool = Field(
        default=True,
        description="7-bit weights: the INT8 model stays accurate on CPUs without VNNI, where "
        "ONNX Runtime's U8S8 kernels add u8 x s8 pairs in int16 and saturate",
    )
    op_types: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="ONNX op types to quantize (default: all ONNX Runtime can); e.g. [Conv, "
        "Gemm, MatMul] keeps a model's own input normalisation in float",
    )
    keep_float_until: str | None = Field(
        default="auto",
        min_length=1,
        description="ONNX op type: its first node and everything before it stay float (a "
        "signal front end). auto: the student's own (audio_dscnn with its log-mel: Log); "
        "null: quantize everything",
    )
    activations: Literal["uint8", "int8-symmetric"] = Field(
        default="uint8",
        description="activation format of the QDQ model: uint8 (asymmetric, ONNX Runtime's "
        "CPU default) or int8-symmetric (zero point 0, which TensorRT INT8 engines need)",
    )
    backend: Literal["onnxruntime", "nncf"] = Field(
        default="onnxruntime", description="quantizer: ONNX Runtime static PTQ, or NNCF"
    )
    accuracy_control: bool = Field(
        default=False,
        description="nncf only: keep the most harmful layers float until the validation drop "
        "is within gates.int8_max_accuracy_drop",
    )
    qat: Literal["never", "when_ptq_misses_gate"] = Field(
        default="never",
        description="when_ptq_misses_gate: QAT + KD (NNCF) when PTQ's validation drop exceeds "
        "gates.int8_max_accuracy_drop",
    )
    qat_epochs: int = Field(default=3, ge=1)
    qat_lr: float = Field(
        default=1e-4, gt=0, description="Adam learning rate of QAT (weights and quantizer ranges)"
    )
    validation_samples: int = Field(
        default=1000,
        ge=10,
        description="training samples (not calibration) the drop is measured on",
    )
    sensitivity: Literal["auto", "yes", "no"] = Field(
        default="auto", description="per-layer table quantize/sensitivity.json (auto: nncf or qat)"
    )

    @model_validator(mode="after")
    def _nncf_options(self) -> QuantizeConfig:
        if self.accuracy_control and self.backend != "nncf":
            raise ValueError("accuracy_control: true needs backend: nncf")
        if self.backend == "nncf" and self.activations == "int8-symmetric":
            raise ValueError(
                "activations: int8-symmetric is an onnxruntime option; with backend: nncf "
                "use the default (NNCF's mixed preset) or backend: onnxruntime"
            )
        return self


class ExportConfig(_Section):
    """Export targets. ``openvino: auto`` writes IR only when the extra is installed."""

    opset: int = Field(default=18, ge=13)
    dynamic_batch: bool = True
    openvino: Literal["auto", "yes", "no"] = "auto"


class ProfileConfig(_Section):
    """Latency measurement: runtimes, threads, batch sweep, warm-up and timed runs.

    ``runtimes`` are names of :mod:`edgedistill.runtime.registry` (torch, onnxruntime,
    openvino, torch-cuda, tensorrt, onnxruntime-cuda, onnxruntime-trt, torch-tensorrt). A listed
    runtime that cannot run on the machine doing the profiling (library not installed, or no
    CUDA GPU) is skipped with one console line and recorded under ``skipped`` in latency.json,
    never an error: the profile stage runs after training, and a recipe written on a laptop
    that lists ``tensorrt`` must still finish there.
    ``precisions`` are the precisions FP32 models are measured at on runtimes that offer them
    (fp32 always; e.g. ``[fp32, fp16, bf16]`` adds torch-cuda FP16/BF16 and TensorRT FP16
    rows); INT8 ONNX models always run as int8.
    """

    runtimes: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    precisions: tuple[Literal["fp32", "fp16", "bf16"], ...] = ("fp32",)
    threads: int = Field(default=2, ge=1, le=MAX_THREADS, description="1..1,024")
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup: int = Field(default=20, ge=0, le=MAX_WARMUP, description="0..100,000")
    runs: int = Field(default=200, ge=100, le=MAX_RUNS, description="timed runs, 100..1,000,000")

    @field_validator("runtimes")
    @classmethod
    def _known_runtimes(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from edgedistill.runtime.registry import RUNTIMES  # lazy: the registry imports torch

        for name in names:
            if name not in RUNTIMES:
                known = ", ".join(repr(n) for n in RUNTIMES)
                raise ValueError(f"unknown runtime {name!r}; known runtimes: {known}")
        return tuple(dict.fromkeys(names))  # each once, in the order given

    @field_validator("precisions")
    @classmethod
    def _fp32_always(cls, precisions: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("fp32", *precisions)))

    @field_validator("batch_sizes")
    @classmethod
    def _batch_one_first(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if not sizes or any(b < 1 for b in sizes):
            raise ValueError(f"batch sizes must be positive, got {list(sizes)}")
        if any(b > MAX_BATCH for b in sizes):
            raise ValueError(f"batch sizes must be at most {MAX_BATCH:,}, got {list(sizes)}")
        if 1 not in sizes:
            raise ValueError("batch size 1 must be measured")
        return tuple(sorted(set(sizes)))

    store: Path | None = Field(
        default=None,
        description="results store (SQLite) the measurements are appended to; "
        "null: <run folder>/results.sqlite",
    )

    @field_validator("store")
    @classmethod
    def _store_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)


class GatesConfig(_Section):
    """Pass/fail thresholds that the verify stage (and engine checks) enforce.

    ``fp32_max_abs_diff`` bounds ``max |candidate - reference|`` in output units. The reduced
    precision bounds are relative to the output scale, ``max |candidate - reference| /
    max |reference|``: a float format's rounding error grows with the magnitude of the values
    it holds, so one absolute number cannot serve logits of range 3 and 30 alike, and a
    per-element ratio explodes on logits near zero. Defaults: fp16 keeps 11 significant bits
    (unit roundoff 2^-11 = 4.9e-4); a few tens of layers accumulating in fp32 typically land
    at 1e-3..5e-3 of the output scale, so 1e-2 leaves a margin yet catches overflow and wrong
    kernels. bf16 keeps 8 bits (2^-8 = 3.9e-3, 8x coarser) and typically lands at 0.5-2%,
    hence 3e-2. ``min_top1_agreement`` (percent of samples whose arg-max class is unchanged)
    adds a decision-level check for fp16/bf16: a flip costs 100/N points, so use enough
    ``parity_samples`` (at 64 samples one flip already fails 99%).
    """

    fp32_max_abs_diff: float = Field(default=1e-4, gt=0)
    fp16_max_abs_diff: float = Field(
        default=1e-2, gt=0, description="max |diff| / max |reference output|"
    )
    bf16_max_abs_diff: float = Field(
        default=3e-2, gt=0, description="max |diff| / max |reference output|"
    )
    min_top1_agreement: float = Field(
        default=99.0, ge=0, le=100, description="percent of samples, fp16/bf16"
    )
    int8_max_accuracy_drop: float = Field(default=1.0, ge=0, description="top-1 points")
    parity_samples: int = Field(default=1000, ge=1, le=MAX_SAMPLES, description="1..1,000,000")


def _dino(name: str) -> Any:
    """The default of a :class:`DinoSettings` field (one source for the recipe's defaults)."""
    return DinoSettings.__dataclass_fields__[name].default


class DinoPretrainConfig(_Section):
    """DINO's options (``pretrain.method: dino``); defaults are :class:`DinoSettings`' (the
    paper's temperatures and momenta, the official head with BN)."""

    weight_decay: float = Field(default=_dino("weight_decay"), ge=0)
    out_dim: int = Field(default=_dino("out_dim"), ge=1, le=65_536, description="1..65,536")
    hidden: int = Field(default=_dino("hidden"), ge=1, le=65_536, description="1..65,536")
    bottleneck: int = Field(default=_dino("bottleneck"), ge=1, le=65_536, description="1..65,536")
    student_temp: float = Field(default=_dino("student_temp"), gt=0)
    teacher_temp: float = Field(default=_dino("teacher_temp"), gt=0)
    teacher_temp_warmup: float = Field(default=_dino("teacher_temp_warmup"), gt=0)
    warmup_epochs: int = Field(
        default=_dino("warmup_epochs"), ge=0, le=MAX_EPOCHS, description="teacher_temp warm-up"
    )
    center_momentum: float = Field(default=_dino("center_momentum"), ge=0, lt=1)
    ema_momentum: float = Field(default=_dino("ema_momentum"), ge=0, le=1)
    grad_clip: float | None = Field(default=_dino("grad_clip"), gt=0)


class PretrainConfig(_Section):
    """Label-free pre-training of the student before ``distill`` (the ``pretrain`` stage).

    ``method: crossmodal`` (default): ``term`` is a cross-modal term (``comodo``, ``infonce``
    or ``l2``) against the cached embeddings of ``teacher.video`` on the paired stream of every
    training window, labelled or not. ``method: dino``: DINO self-distillation from the
    student's own EMA teacher on two augmented views of every training sample (image or IMU
    tasks; options under ``dino``; ``lr`` is AdamW's, default 0.01). The distill stage then
    starts from the pre-trained weights.
    """

    method: Literal["crossmodal", "dino"] = "crossmodal"
    term: LossTerm = parse_term(
        {
            "name": "comodo",
            "weight": 1.0,
            "temperature": 0.2,
            "student_temperature": 0.2,
            "queue_size": 4096,
        }
    )
    epochs: int = Field(default=20, ge=1, le=MAX_EPOCHS, description="1..10,000")
    batch_size: int = Field(default=64, ge=2, le=MAX_BATCH, description="2..65,536")
    lr: float = Field(default=0.05, gt=0)
    dino: DinoPretrainConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.get("method") != "dino":
            if isinstance(raw, dict) and raw.get("dino") is not None:
                raise ValueError("dino needs method: dino")
            return raw
        if "term" in raw:
            raise ValueError(
                "term is for method: crossmodal; DINO's options go under pretrain.dino"
            )
        return {"lr": _dino("lr"), **raw, "dino": raw.get("dino") or {}}

    @field_validator("term")
    @classmethod
    def _cross_modal(cls, term: TermConfig) -> TermConfig:
        if term.name not in CROSSMODAL_TERMS:
            raise ValueError(f"must be one of {', '.join(CROSSMODAL_TERMS)} (got {term.name})")
        return term

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> PretrainConfig:
        if self.dino is not None and self.dino.warmup_epochs > self.epochs:
            raise ValueError(
                f"dino.warmup_epochs ({self.dino.warmup_epochs}) exceeds epochs ({self.epochs})"
            )
        return self

    def dino_settings(self, seed: int) -> DinoSettings:
        """The :class:`DinoSettings` of ``method: dino``."""
        options = (self.dino or DinoPretrainConfig()).model_dump()
        return DinoSettings(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed, **options
        )


class Recipe(_Section):
    """A whole recipe. Build it with :func:`load_recipe` or :meth:`Recipe.from_dict`."""

    name: str = Field(default="recipe", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="0..4,294,967,295")
    threads: int | None = Field(
        default=None, ge=1, le=MAX_THREADS, description="torch threads for training (1..1,024)"
    )
    data: SerializeAsAny[SourceConfig]
    teacher: TeacherConfig | None = None
    student: StudentConfig = StudentConfig()
    pretrain: PretrainConfig | None = None
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    profile: ProfileConfig = ProfileConfig()
    gates: GatesConfig = GatesConfig()

    @model_validator(mode="after")
    def _labels_for_label_terms(self) -> Recipe:
        unlabelled = (
            getattr(self.data, "unlabelled", None) is not None
            or not getattr(self.data, "use_labels", True)
            or self.data.label_fraction < 1
        )
        needs_labels = [t.name for t in self.distill.terms if "labels" in t.needs and t.weight]
        if unlabelled and needs_labels:
            raise ValueError(
                f"distill.terms {needs_labels} need a label for every training sample; with "
                "unlabelled training data use ce and kd"
            )
        return self

    @model_validator(mode="after")
    def _runtime_for_latency_target(self) -> Recipe:
        if self.prune.target_latency is not None:
            from edgedistill.compress.latency_meter import target_runtime  # lazy: torch

            try:
                target_runtime(self.profile.runtimes)
            except RecipeError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _teacher_for_teacher_terms(self) -> Recipe:
        card_terms = [
            t.name for t in self.distill.terms if t.needs & TEACHER_CARD_NEEDS and t.weight
        ]
        if card_terms and (self.teacher is None or self.teacher.card is None):
            raise ValueError(f"distill.terms {card_terms} need a teacher.card")
        method = None if self.pretrain is None else self.pretrain.method
        video = self.teacher is not None and self.teacher.video is not None
        if method == "crossmodal" and not video:
            raise ValueError(
                "pretrain needs teacher.video (the teacher of the paired stream); without one "
                "use pretrain.method: dino"
            )
        if method == "crossmodal" and self.data.source != "paired":
            raise ValueError(
                "pretrain needs paired data (data.source: paired); for other data use "
                "pretrain.method: dino"
            )
        if method == "dino" and video:
            raise ValueError("pretrain.method: dino uses no teacher.video; remove teacher.video")
        return self

    @classmethod
    def from_dict(cls, raw: Any, *, base_dir: Path | None = None, source: str = "recipe") -> Recipe:
        """Validate a parsed YAML mapping; relative paths resolve against ``base_dir``."""
        if not isinstance(raw, dict):
            raise RecipeError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        if "data" not in raw:
            raise RecipeError(f"{source}: 'data' is required")
        # The data section's schema depends on data.source (one registered section each).
        data = parse_data_section(raw["data"], base_dir=base_dir, source=source)
        recipe: Recipe = validate_section(
            cls, {**raw, "data": data}, base_dir=base_dir, source=source
        )
        return recipe


TARGET_SECTIONS = ("export", "profile", "quantize", "gates")
TARGET_KEYS = ("name", "description", "device", *TARGET_SECTIONS)


class TargetDevice(_Section):
    """The device agent (``edgedistill agent serve``) a target's models are measured on.

    The token never sits in the file: ``token_env`` names the environment variable that holds
    it (``--token-file`` on the command line takes precedence).
    """

    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", description="http(s)://host:port")
    token_env: str = Field(default="EDGEDISTILL_AGENT_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class TargetProfile(_Section):
    """A target profile (``export/*.yaml``): overrides of recipe sections, and optionally the
    device whose agent measures the models. The overrides are validated with the recipe."""

    name: str = Field(default="target", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    device: TargetDevice | None = None
    export: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None
    gates: dict[str, Any] | None = None

    def overrides(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}`` this target sets in a recipe."""
        return {
            key: section for key in TARGET_SECTIONS if (section := getattr(self, key)) is not None
        }


def load_target(path: str | Path) -> TargetProfile:
    """Read and validate a target profile. Raises :class:`RecipeError` with a one-line message."""
    path = Path(path)
    raw = read_yaml(path, "target profile")
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of sections")
    for key in raw:
        if key not in TARGET_KEYS:
            raise RecipeError(
                f"{path}: unknown key '{key}' (allowed here: {', '.join(TARGET_KEYS)})"
            )
    target: TargetProfile = validate_section(
        TargetProfile, raw, base_dir=path.resolve().parent, source=str(path)
    )
    return target


def load_recipe(path: str | Path, *, target: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file. Raises :class:`RecipeError` with a one-line message.

    Args:
        path: The recipe YAML.
        target: Optional target profile YAML (``export/*.yaml``, :func:`load_target`) whose
            ``export``, ``profile``, ``quantize`` and ``gates`` sections override the
            recipe's, key by key.
    """
    path = Path(path)
    raw = read_yaml(path, "recipe")
    if target is not None:
        for key, section in load_target(target).overrides().items():
            if isinstance(raw, dict):
                raw[key] = {**(raw.get(key) or {}), **section}
    return Recipe.from_dict(raw, base_dir=path.resolve().parent, source=str(path))


__all__ = [
    "Recipe",
    "TargetDevice",
    "TargetProfile",
    "describe_validation_error",
    "load_recipe",
    "load_target",
    "read_yaml",
]
