"""NNCF as a second quantizer: PTQ and accuracy-controlled PTQ of ONNX models, QAT with
knowledge distillation on torch models, and per-layer quantization sensitivity.

Every function writes (or analyses) the artifact :mod:`edgedistill.compress.quantize` writes:
an INT8 **QDQ** ONNX model (int8 weight initializers behind ``DequantizeLinear``, and
``QuantizeLinear``/``DequantizeLinear`` pairs on activations) that ONNX Runtime and OpenVINO
both run, so the verify, profile and bundle stages need no change.

- PTQ and accuracy control run NNCF's ONNX backend on the exported FP32 model
  (TOOLCHAIN.md: quantizing the ONNX model is the preferred route).
- QAT runs NNCF's torch backend (``nncf.quantize`` inserts trainable fake quantizers), trains
  the student against soft labels with :func:`edgedistill.distill.kd.kd_loss`, then exports
  with the legacy exporter (the only one that understands NNCF's torch quantizers) after
  ``nncf.strip(strip_format=NATIVE)``. That export keeps float weights behind a
  ``QuantizeLinear`` (TOOLCHAIN.md measured such a file *slower* than FP32 in ONNX Runtime),
  so :func:`fold_weight_quantizers` stores those weights as int8 initializers: the file then
  has the same QDQ shape as a PTQ model.

NNCF is the ``[nncf]`` extra and is imported lazily; ``nncf.strip`` needs ``torchao``, which
NNCF does not declare, so the extra pins it.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.artifacts import atomic_save
from edgedistill.compress.qdq import Metric, fold_weight_quantizers, layer_precisions, run_proto
from edgedistill.distill.kd import kd_loss
from edgedistill.errors import MissingDependencyError, StageError

PRESETS = ("performance", "mixed")
# NNCF builds a C++ extension on the first torch quantization of a machine (~25 s idle on 2
# cores, over 3 minutes on a loaded one); its default 60 s load timeout then fails half-way
# and leaves a lock file behind.
EXTENSION_TIMEOUT_S = "900"

"""``metric(logits [N, K], labels [N]) -> float``, higher is better (e.g. ``Task.score``)."""


def require_nncf(purpose: str) -> Any:
    """Import ``nncf`` or raise :class:`MissingDependencyError` naming the ``[nncf]`` extra."""
    try:
        import nncf
    except ImportError as exc:
        raise MissingDependencyError("nncf", "nncf", purpose) from exc
    return nncf


# ---- PTQ on the ONNX model ------------------------------------------------------------------
class _Setup:
    """What both ONNX entry points share: the model, NNCF's calibration dataset (one sample
    per item, so ``subset_size`` counts samples), the ignored scope and NNCF's options."""

    def __init__(
        self,
        fp32_onnx: Path,
        calibration: np.ndarray,
        *,
        preset: str,
        subset_size: int,
        reduce_range: bool,
        ignored_types: Sequence[str] | None,
        keep_float_until: str | None,
        purpose: str,
    ) -> None:
        import onnx

        from edgedistill.compress.quantize import _nodes_up_to

        nncf = require_nncf(purpose)
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
        )

        if len(calibration) == 0:
            raise ValueError("calibration needs at least one sample")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, not {preset!r}")
        self.nncf = nncf
        self.model = onnx.load(str(fp32_onnx))
        self.input_name = self.model.graph.input[0].name
        data = np.ascontiguousarray(calibration)
        self.dataset = nncf.Dataset([{self.input_name: data[i : i + 1]} for i in range(len(data))])
        self.kept_float = (
            _nodes_up_to(self.model.graph, keep_float_until) if keep_float_until else []
        )
        types = list(ignored_types or ())
        self.options: dict[str, Any] = {
            "preset": nncf.QuantizationPreset(preset),
            "subset_size": min(subset_size, len(data)),
            "ignored_scope": nncf.IgnoredScope(names=self.kept_float, types=types, validate=False),
        }
        # reduce_range: 7-bit weights for CPUs without VNNI, as in quantize_onnx_static; NNCF
        # calls this the overflow fix.
        fix = OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE
        self.advanced = AdvancedQuantizationParameters(overflow_fix=fix)


def _save(model: Any, path: Path) -> None:
    import onnx

    atomic_save(Path(path), lambda tmp: onnx.save(model, str(tmp)))


def nncf_ptq_onnx(
    fp32_onnx: Path,
    int8_onnx: Path,
    calibration: np.ndarray,
    *,
    preset: str = "mixed",
    subset_size: int = 300,
    reduce_range: bool = True,
    ignored_types: Sequence[str] | None = None,
    keep_float_until: str | None = None,
) -> dict[str, Any]:
    """NNCF post-training INT8 of an ONNX model, written atomically as QDQ ONNX.

    Args:
        fp32_onnx: FP32 model with one input.
        int8_onnx: Destination (runs in ONNX Runtime and OpenVINO).
        calibration: [N, ...] model inputs drawn from the training data.
        preset: ``mixed`` (asymmetric activations, symmetric weights) or ``performance``
            (symmetric both: what INT8 engines such as TensorRT build from).
        subset_size: Calibration samples NNCF reads (at most N).
        reduce_range: 7-bit weights (NNCF's ``OverflowFix.ENABLE``): see ``QuantizeConfig``.
        ignored_types: ONNX op types NNCF leaves in float.
        keep_float_until: ONNX op type: its first node and everything before it stay float.

    Returns:
        ``{"backend", "quantized_layers", "float_layers", "nodes_kept_float"}``: layer names
        (nodes with a weight or a quantizable input) by the precision they run at.
    """
    s = _Setup(
        fp32_onnx,
        calibration,
        preset=preset,
        subset_size=subset_size,
        reduce_range=reduce_range,
        ignored_types=ignored_types,
        keep_float_until=keep_float_until,
        purpose="quantize.backend: nncf",
    )
    quantized = s.nncf.quantize(s.model, s.dataset, **s.options, advanced_parameters=s.advanced)
    _save(quantized, int8_onnx)
    return {"backend": "nncf", "nodes_kept_float": s.kept_float, **layer_precisions(quantized)}


def nncf_accuracy_controlled(
    fp32_onnx: Path,
    int8_onnx: Path,
    calibration: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    *,
    max_drop: float,
    metric: Metric,
    preset: str = "mixed",
    subset_size: int = 300,
    reduce_range: bool = True,
    ignored_types: Sequence[str] | None = None,
    keep_float_until: str | None = None,
    max_iterations: int | None = None,
) -> dict[str, Any]:
    """``nncf.quantize_with_accuracy_control``: PTQ, then layers back to float, most harmful
    first, until the metric drop on ``validation`` is at most ``max_drop``.

    ``validation`` must be held out of calibration but taken from the **training** data
    (never the test split the report's accuracy comes from: picking layers on it would leak
    the test set into the model). The metric is computed on the whole validation set in
    ONNX Runtime, exactly as the verify stage scores the test split.

    Args:
        fp32_onnx, int8_onnx, calibration, preset, subset_size, reduce_range, ignored_types,
            keep_float_until: As :func:`nncf_ptq_onnx`.
        validation: ([M, ...] inputs, [M] labels).
        max_drop: Largest allowed ``metric(fp32) - metric(int8)``, in the metric's units
            (the recipe's ``gates.int8_max_accuracy_drop``).
        metric: ``metric(logits, labels) -> float``, higher is better.
        max_iterations: At most this many layer groups go back to float (None: no limit).

    Returns:
        As :func:`nncf_ptq_onnx`, plus ``fp32_metric``, ``int8_metric``, ``accuracy_drop``,
        ``max_drop`` and ``float_layers`` (what stayed in floating point).

    Raises:
        ValueError: ``max_drop`` < 0: even the FP32 model (drop 0) misses such a gate.
        StageError: Accuracy control ended above ``max_drop`` (NNCF stops when reverting more
            layers makes the drop worse, or when none is left).
    """
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    s = _Setup(
        fp32_onnx,
        calibration,
        preset=preset,
        subset_size=subset_size,
        reduce_range=reduce_range,
        ignored_types=ignored_types,
        keep_float_until=keep_float_until,
        purpose="quantize.accuracy_control",
    )
    if max_drop < 0:
        raise ValueError(f"max_drop={max_drop}: even the FP32 model (drop 0) misses it")
    x_val, y_val = validation
    if len(x_val) == 0:
        raise ValueError("validation needs at least one sample")
    val_items = [np.ascontiguousarray(x_val)]  # one item: NNCF scores the whole set at once

    def validate(model: Any, items: Any) -> tuple[float, None]:
        logits = run_proto(model, s.input_name, np.concatenate(list(items)))
        return float(metric(logits, y_val)), None

    restorer = AdvancedAccuracyRestorerParameters(
        # ranking workers > 1 spawn processes that each hold a session: no gain on 2 cores
        num_ranking_workers=1,
        **({"max_num_iterations": max_iterations} if max_iterations is not None else {}),
    )
    quantized = s.nncf.quantize_with_accuracy_control(
        s.model,
        s.dataset,
        s.nncf.Dataset(val_items),
        validate,
        max_drop=max_drop,
        **s.options,
        advanced_quantization_parameters=s.advanced,
        advanced_accuracy_restorer_parameters=restorer,
    )
    precisions = layer_precisions(quantized)
    fp32_metric, _ = validate(s.model, val_items)
    int8_metric, _ = validate(quantized, val_items)
    drop = fp32_metric - int8_metric
    if drop > max_drop:
        kept = len(precisions["float_layers"])
        total = kept + len(precisions["quantized_layers"])
        raise StageError(
            f"gates.int8_max_accuracy_drop={max_drop}: accuracy control ended at a drop of "
            f"{drop:.2f} on {len(y_val)} validation samples with {kept} of {total} layers in "
            "float; raise the gate, add quantize.validation_samples, or use "
            "quantize.qat: when_ptq_misses_gate"
        )
    _save(quantized, int8_onnx)
    return {
        "backend": "nncf",
        "accuracy_control": True,
        "nodes_kept_float": s.kept_float,
        "fp32_metric": fp32_metric,
        "int8_metric": int8_metric,
        "accuracy_drop": drop,
        "max_drop": max_drop,
        **precisions,
    }


# ---- QAT + KD on the torch model ------------------------------------------------------------
def qat_kd(
    student: nn.Module,
    x_train: torch.Tensor,
    teacher_logits: np.ndarray | torch.Tensor,
    *,
    calibration: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    temperature: float = 4.0,
    labels: np.ndarray | torch.Tensor | None = None,
    ce_weight: float = 0.0,
    preset: str = "mixed",
    seed: int = 0,
) -> nn.Module:
    """Quantization-aware training with knowledge distillation; returns the fake-quantized
    torch model (export it with :func:`export_qat_onnx`).

    The student (a deep copy, after ``to_deploy()`` when it has one, so BatchNorm is folded
    as in the FP32 export) gets NNCF's fake quantizers, calibrated on ``calibration``, then
    trains scales and weights with Adam against ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``
    (:func:`~edgedistill.distill.kd.kd_loss`), plus ``ce_weight`` · cross-entropy on
    ``labels`` where a sample has one (label ≥ 0).

    Args:
        student: FP32 model; left unchanged.
        x_train: [N, ...] training inputs.
        teacher_logits: [N, K] soft labels: the cached teacher outputs, or the FP32
            student's own logits when the run has no teacher.
        calibration: [C, ...] inputs for the initial ranges.
        epochs, lr, batch_size, temperature, seed: Training settings.
        labels: [N] class labels (-1: none), used when ``ce_weight > 0``.
        ce_weight: Weight of the cross-entropy term.
        preset: As :func:`nncf_ptq_onnx`.

    Raises:
        MissingDependencyError: NNCF is not installed.
        StageError: NNCF cannot trace the student.
    """
    nncf = require_nncf("quantize.qat")
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_TIMEOUT_S)
    if len(x_train) != len(teacher_logits):
        raise ValueError(f"{len(x_train)} inputs but {len(teacher_logits)} teacher logits")
    to_deploy = getattr(student, "to_deploy", None)
    model = copy.deepcopy(to_deploy() if callable(to_deploy) else student).eval()
    items = [calibration[i : i + 1] for i in range(len(calibration))]
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset(preset),
            subset_size=min(300, len(items)),
        )
        with torch.no_grad():
            quantized(calibration[:2])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(
            f"quantize.qat: NNCF cannot trace the student {type(model).__name__} ({first}); "
            "give it a plain tensor-in, tensor-out forward (wrap a bare nn.Sequential in a "
            "Module) or set quantize.qat: never"
        ) from exc
    # copies: cached teacher logits are read-only memory maps
    soft = torch.tensor(np.asarray(teacher_logits), dtype=torch.float32)
    y = None if labels is None else torch.tensor(np.asarray(labels), dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(quantized.parameters(), lr=lr)
    quantized.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).split(batch_size):
            logits = quantized(x_train[index])
            loss = kd_loss(logits, soft[index], temperature=temperature)
            if ce_weight > 0 and y is not None and bool((y[index] >= 0).any()):
                keep = y[index] >= 0
                loss = loss + ce_weight * F.cross_entropy(logits[keep], y[index][keep])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return quantized.eval()


def export_qat_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_dtype: torch.dtype = torch.float32,
) -> Path:
    """Export an NNCF fake-quantized torch model as INT8 QDQ ONNX, atomically.

    ``nncf.strip(strip_format=NATIVE)`` turns NNCF's quantizers into torch's own
    ``fake_quantize_*`` ops, which the legacy exporter writes as QuantizeLinear/DequantizeLinear
    pairs; :func:`fold_weight_quantizers` then stores the weights as int8. Input ``input``
    ([batch, *input_shape]), output ``logits``, as :func:`edgedistill.export.onnx.export_onnx`.
    """
    import warnings

    import onnx

    from edgedistill.export.onnx import INPUT_NAME, OUTPUT_NAME

    nncf = require_nncf("quantize.qat")
    example = torch.ones(2 if dynamic_batch else 1, *input_shape, dtype=input_dtype)
    stripped = nncf.strip(
        model.eval(), do_copy=True, strip_format=nncf.StripFormat.NATIVE, example_input=example
    ).eval()

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = Path(folder) / "qat.onnx"
            torch.onnx.export(
                stripped,
                (example,),
                str(raw),
                dynamo=False,  # TOOLCHAIN.md: the only exporter for NNCF's torch backend
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                if dynamic_batch
                else None,
            )
            folded = fold_weight_quantizers(onnx.load(str(raw)))
            onnx.save(folded, str(tmp))

    atomic_save(Path(path), write)
    return Path(path)
