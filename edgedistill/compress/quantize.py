"""Post-training static INT8 of an ONNX model with ONNX Runtime (QDQ format).

QDQ with per-channel signed-8-bit weights and unsigned-8-bit activations, after ORT's
``quant_pre_process`` (shape inference + graph optimisation). TOOLCHAIN.md measured the
QOperator format 20x slower than QDQ, so QDQ is the only format offered.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.artifacts import atomic_save


def _dtype(samples: np.ndarray) -> type:
    return np.int64 if np.issubdtype(samples.dtype, np.integer) else np.float32


class _ArrayReader:
    """Feeds calibration batches of [B, ...] to ORT's calibrator (float32, or int64 token
    ids as they are)."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int = 32) -> None:
        self._batches: list[dict[str, np.ndarray]] = [
            {input_name: np.ascontiguousarray(samples[i : i + batch_size], dtype=_dtype(samples))}
            for i in range(0, len(samples), batch_size)
        ]
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        self._index += 1
        return self._batches[self._index - 1]

    def rewind(self) -> None:
        self._index = 0


def quantize_onnx_static(
    fp32_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    keep_float_until: str | None = None,
    activations: str = "uint8",
) -> list[str]:
    """Write an INT8 QDQ copy of ``fp32_path`` to ``int8_path`` (atomically).

    Args:
        fp32_path: FP32 ONNX model with a single input.
        int8_path: Destination.
        calibration: [N, ...] normalised float32 inputs drawn from the training data.
        per_channel: Per-output-channel weight scales (better accuracy for convs).
        method: Activation range estimation: "minmax", "entropy" or "percentile".
        reduce_range: Quantize weights to 7 bits (the recipe default). On x86 CPUs without
            VNNI (AVX2 only) ONNX Runtime's U8S8 kernels add pairs of uint8 x int8 products in
            int16 and saturate. Measured on an AMD EPYC with AVX2 only, ORT 1.32 (and 1.31.1):
            seglearn IMU student 85.43% FP32 -> 41.62% INT8 with 8-bit weights (85.33% for the
            same QDQ model with graph optimisations off), 85.13% with ``reduce_range``;
            Fashion-MNIST student 86.37% -> 78.17% / 86.27%. A bundle may run on such a CPU
            whatever machine built it, so 7-bit weights are the safe default.
        op_types: Quantize only nodes of these ONNX op types (None: every type ONNX Runtime
            quantizes). ``("Conv", "Gemm", "MatMul")`` keeps everything else in float, e.g. a
            model's own per-input normalisation. With every type, the pitch student's
            per-frame standardisation is quantized too: the squared deviations of a frame
            at 1% of full scale fall below one step of the range calibrated on loud frames,
            its variance becomes 0 and the frame is wrecked (pitch student, 1000 test frames:
            99.9% FP32 -> 98.3% INT8 raw pitch accuracy, 94.8% on frames peaking below 0.03;
            99.9% with these three types).
        keep_float_until: ONNX op type: the first node of this type and every node it depends
            on stay in float (a model's own signal front end). ``"Log"`` keeps a log-mel front
            end (windowed-DFT conv, power, mel matmul, log) in float: quantized, its power
            spectrum spans more decades than 8 bits can hold, the quiet bands all round to one
            step and the log of them is noise (speech-keywords DS-CNN, 576 held-out clips, the
            recipe's settings: INT8 agrees with FP32 on 20.5% with every node quantized, on
            98.4% with the front end in float; ``benchmarks/kws_frontend.py``).
        activations: ``"uint8"`` (asymmetric, ONNX Runtime's CPU default) or
            ``"int8-symmetric"`` (int8 with zero point 0: what TensorRT builds INT8 engines
            from; weights are symmetric int8 either way).

    Returns:
        The names of the nodes kept in float because of ``keep_float_until`` (empty if none).

    Raises:
        ValueError: Empty calibration, or no node of type ``keep_float_until``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("calibration needs at least one sample")
    if activations not in ("uint8", "int8-symmetric"):
        raise ValueError(f"activations must be uint8 or int8-symmetric, not {activations!r}")
    symmetric = activations == "int8-symmetric"
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        kept_float = (
            _nodes_up_to(onnx.load(str(prepared)).graph, keep_float_until)
            if keep_float_until
            else []
        )

        def write(dest: Path) -> None:
            quantize_static(
                str(prepared),
                str(dest),
                _ArrayReader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=reduce_range,
                calibrate_method=methods[method],
                op_types_to_quantize=list(op_types) if op_types else None,
                nodes_to_exclude=kept_float,
                extra_options={"ActivationSymmetric": True} if symmetric else None,
            )

        atomic_save(int8_path, write)
    return kept_float


def _nodes_up_to(graph: Any, op_type: str) -> list[str]:
    """Names of the first ``op_type`` node of ``graph`` and of every node it depends on."""
    first = next((n for n in graph.node if n.op_type == op_type), None)
    if first is None:
        found = sorted({n.op_type for n in graph.node})
        raise ValueError(f"keep_float_until: no {op_type} node in the model (it has {found})")
    producer = {out: n for n in graph.node for out in n.output}
    kept: dict[str, None] = {}
    pending = [first]
    while pending:
        node = pending.pop()
        if node.name in kept:
            continue
        kept[node.name] = None
        pending.extend(producer[i] for i in node.input if i in producer)
    return [n.name for n in graph.node if n.name in kept]
