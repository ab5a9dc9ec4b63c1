"""QDQ ONNX graph helpers shared by both quantizers (ONNX Runtime's and NNCF's QDQ models):
folding float weights behind a ``QuantizeLinear`` into int8 initializers, listing which layers
are quantized, and per-layer quantization sensitivity (only one layer quantized at a time)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]
"""A task metric: (logits [N, K], labels [N]) -> score (higher is better)."""


def run_proto(
    model: Any, input_name: str, x: np.ndarray, *, threads: int = 0, batch: int = 256
) -> np.ndarray:
    """Logits of an in-memory ONNX model over [N, ...] inputs (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.concatenate(
        [session.run(None, {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


LAYER_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""The op types counted as layers: what both quantizers give int8 weights or inputs."""


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Every constant tensor of ``graph`` by name: initializers, ``Constant`` outputs and
    ``Identity`` copies of either (the legacy exporter shares zero points through those)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # topologically sorted: a source comes before its copies
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _along(param: np.ndarray, node: Any, rank: int) -> np.ndarray:
    """A Q/DQ scale or zero point shaped to broadcast along the node's ``axis`` (default 1)."""
    if param.ndim == 0 or rank == 0:
        return param
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % rank
    shape = [1] * rank
    shape[axis] = -1
    return param.reshape(shape)


def _prune(graph: Any) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | outputs
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def fold_weight_quantizers(model: Any) -> Any:
    """Replace every ``QuantizeLinear`` of a constant (a float weight) by the int8 (or uint8)
    initializer it computes, in place; returns ``model``.

    The values are what the node itself would compute (round half to even, saturate to the
    zero point's type), so outputs do not change; the weights shrink 4x and ONNX Runtime sees
    the ``DequantizeLinear(int8 weight)`` pattern its QDQ kernels fuse.
    """
    from onnx import numpy_helper

    graph = model.graph
    values = _constants(graph)
    kept = []
    for node in graph.node:
        inputs = list(node.input)
        if not (
            node.op_type == "QuantizeLinear"
            and len(inputs) == 3
            and all(i in values for i in inputs)
        ):
            kept.append(node)
            continue
        weight, scale, zero = (values[i] for i in inputs)
        rank = weight.ndim
        limits = np.iinfo(zero.dtype)
        q = np.rint(weight / _along(scale.astype(np.float32), node, rank))
        q = np.clip(q + _along(zero.astype(np.int64), node, rank), limits.min, limits.max)
        graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    _prune(graph)
    return model


def layer_precisions(model: Any) -> dict[str, list[str]]:
    """``{"quantized_layers": [...], "float_layers": [...]}``: node names of the layers
    (:data:`LAYER_TYPES`) with / without an input from a ``DequantizeLinear``."""
    graph = model.graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in graph.node if n.op_type in LAYER_TYPES]
    quantized = [n.name for n in layers if any(i in dequantized for i in n.input)]
    return {
        "quantized_layers": quantized,
        "float_layers": [n.name for n in layers if n.name not in quantized],
    }


def _keep_only(graph: Any, layer: str) -> None:
    """Turn every quantized edge into float except the inputs of node ``layer``: consumers of
    an activation ``DequantizeLinear`` read the ``QuantizeLinear``'s input instead, consumers
    of a weight's read a float copy of the dequantized weight."""
    from onnx import numpy_helper

    values = _constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    dq_nodes = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    float_of: dict[str, str] = {}
    for name, dq in dq_nodes.items():
        source = producer.get(dq.input[0])
        if source is not None and source.op_type == "QuantizeLinear":
            float_of[name] = source.input[0]
        elif dq.input[0] in values:
            q = values[dq.input[0]]
            scale = _along(values[dq.input[1]].astype(np.float32), dq, q.ndim)
            zero = values[dq.input[2]] if len(dq.input) > 2 and dq.input[2] else np.zeros(())
            zero = _along(zero.astype(np.float32), dq, q.ndim)
            weight = ((q.astype(np.float32) - zero) * scale).astype(np.float32)
            float_of[name] = f"{name}__float"
            graph.initializer.append(numpy_helper.from_array(weight, float_of[name]))
    for node in graph.node:
        if node.name == layer or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            if name in float_of:
                node.input[k] = float_of[name]
    _prune(graph)


def layer_sensitivity(
    fp32_onnx: Path,
    int8_onnx: Path,
    x: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    metric: Metric | None = None,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Per-layer quantization sensitivity: each quantized layer *alone* quantized.

    For every layer of ``int8_onnx`` with a quantized input, a copy of the INT8 graph with
    every other quantizer removed (its layers read float activations and dequantized float
    weights) runs on ``x``; its error against ``fp32_onnx`` is that layer's own damage, free
    of what other layers add. One extra model per layer, each a single pass over ``x`` —
    cheaper than the alternative (everything quantized but one layer), which needs the same
    number of passes and mixes every other layer's error into each row.

    Args:
        fp32_onnx: The FP32 model ``int8_onnx`` was made from.
        int8_onnx: A QDQ model (NNCF or ONNX Runtime).
        x: [N, ...] inputs (a validation subset of the training data).
        labels: [N] labels; with ``metric``, rows gain ``metric`` and ``metric_drop``.
        metric: ``metric(logits, labels) -> float``, higher is better.
        threads: ONNX Runtime intra-op threads.

    Returns:
        Rows ``{"rank", "layer", "op", "output_error"[, "metric", "metric_drop"]}``, most
        sensitive first: by metric drop, then by ``output_error`` = ‖y - y_fp32‖ / ‖y_fp32‖.
    """
    import onnx

    base = onnx.load(str(int8_onnx))
    name = base.graph.input[0].name
    reference = run_proto(onnx.load(str(fp32_onnx)), name, x, threads=threads)
    scored = metric is not None and labels is not None
    fp32_metric = float(metric(reference, labels)) if scored else 0.0  # type: ignore[misc,arg-type]
    rows: list[dict[str, Any]] = []
    for layer in layer_precisions(base)["quantized_layers"]:
        model = onnx.ModelProto()
        model.CopyFrom(base)
        _keep_only(model.graph, layer)
        out = run_proto(model, name, x, threads=threads)
        op = next(n.op_type for n in base.graph.node if n.name == layer)
        scale = max(float(np.linalg.norm(reference)), 1e-12)
        error = float(np.linalg.norm(out - reference)) / scale
        row: dict[str, Any] = {"layer": layer, "op": op, "output_error": error}
        if scored:
            row["metric"] = float(metric(out, labels))  # type: ignore[misc,arg-type]
            row["metric_drop"] = fp32_metric - row["metric"]
        rows.append(row)
    rows.sort(key=lambda r: (-r.get("metric_drop", 0.0), -r["output_error"]))
    return [{"rank": i + 1, **row} for i, row in enumerate(rows)]
