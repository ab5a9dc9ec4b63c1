"""Find the first layer at which a candidate ONNX model drifts from a reference ONNX model.

Both models run in ONNX Runtime (CPU) on the same inputs with their intermediate tensors
exposed as extra graph outputs (a copy of each model, written to a temporary folder), the
approach of Polygraphy's "mark all outputs" debugging. Tensors are matched by name and
walked in the reference graph's node order (ONNX requires nodes in topological order), and
the first tensor whose error exceeds a tolerance is reported with the node that produced it.

Matching rule, for every graph input and node output ``T`` of the reference graph:

1. if the candidate quantizes ``T`` (``T -> QuantizeLinear -> DequantizeLinear``, the QDQ
   pattern ONNX Runtime's and NNCF's static quantization write), ``T`` is compared with that
   DequantizeLinear's float output: the value the next layer actually consumes, quantization
   error of ``T`` included. (The candidate's own ``T`` may differ in meaning: the quantizer
   drops a Relu after a Conv and lets the uint8 range clip, so the Conv writes ``T`` unclipped.)
2. otherwise, a candidate graph input or node output named ``T`` is compared with it;
3. otherwise ``T`` is unmatched (fused or renamed in the candidate) and skipped.

Only float tensors of equal shape are compared (shape tensors and indices are skipped).

Both copies run with graph optimizations off, so every named tensor is computed as the graph
states it and unchanged layers match bit for bit. A quantized model therefore runs in float
simulation (DequantizeLinear, float op, QuantizeLinear) rather than in fused integer kernels;
its output error here can differ a little from that of the optimized run a gate measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.runtime.gates import scaled_diff

_TWO_GB = 2**31 - 2**26  # protobuf's limit, less a margin: larger copies use external data
TRAIL_IN_RECORD = 32  # tensors before the drift kept in Drift.to_dict


@dataclass(frozen=True)
class TensorError:
    """The error of one matched tensor.

    Attributes:
        tensor: Its name in the reference graph.
        node: The reference node that produces it ("" for a graph input).
        op_type: That node's op type ("Input" for a graph input).
        candidate_tensor: The candidate tensor compared with it (a DequantizeLinear output
            for a quantized tensor).
        error: ``max_abs_diff`` divided by ``scale`` when relative, else ``max_abs_diff``.
        max_abs_diff: ``max |candidate - reference|`` over the inputs.
        scale: ``max |reference|``.
    """

    tensor: str
    node: str
    op_type: str
    candidate_tensor: str
    error: float
    max_abs_diff: float
    scale: float


@dataclass(frozen=True)
class LayerErrors:
    """Every matched tensor's error, in topological order, and the output's.

    Attributes:
        tensors: Matched float tensors (graph inputs first, then node outputs in order).
        output: The first graph output's error (None if the candidate has no such output).
        relative: Whether ``error`` is relative to the tensor's scale.
        samples: Number of input samples run.
        unmatched: Reference tensors with no counterpart in the candidate.
    """

    tensors: tuple[TensorError, ...]
    output: TensorError | None
    relative: bool
    samples: int
    unmatched: tuple[str, ...]


@dataclass(frozen=True)
class Drift:
    """The first tensor whose error exceeds the tolerance.

    Attributes:
        tensor, node, op_type, candidate_tensor, error, max_abs_diff: As in
            :class:`TensorError`, for the drifting tensor.
        tolerance: The bound it exceeded; relative: whether errors are relative.
        output: The first graph output; output_error: its error (NaN if unmatched).
        checked: Tensors compared up to and including this one.
        unmatched: Reference tensors skipped for want of a counterpart.
        samples: Number of input samples run.
        trail: The tensors compared before it (all within tolerance), in order.
    """

    tensor: str
    node: str
    op_type: str
    candidate_tensor: str
    error: float
    max_abs_diff: float
    tolerance: float
    relative: bool
    output: str
    output_error: float
    checked: int
    unmatched: int
    samples: int
    trail: tuple[TensorError, ...]

    def summary(self) -> str:
        """One line for a gate message: ``first drift at node conv2 (Conv): rel err 0.31``."""
        kind = "rel" if self.relative else "abs"
        where = f"input {self.tensor}" if not self.node else f"node {self.node} ({self.op_type})"
        return f"first drift at {where}: {kind} err {self.error:.3g}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (the last :data:`TRAIL_IN_RECORD` tensors of the trail)."""
        record = asdict(self)
        record["trail"] = [asdict(t) for t in self.trail[-TRAIL_IN_RECORD:]]
        record["trail_omitted"] = max(0, len(self.trail) - TRAIL_IN_RECORD)
        record["summary"] = self.summary()
        return record


def first_drift(
    reference_onnx: Path,
    candidate_onnx: Path,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    *,
    tolerance: float,
    relative: bool = True,
    threads: int = 1,
) -> Drift | None:
    """The first tensor (in topological order) at which ``candidate_onnx`` drifts.

    Args:
        reference_onnx: The trusted model (FP32).
        candidate_onnx: The model under suspicion: an INT8 QDQ model of the reference, or
            another FP32 file of the same graph.
        inputs: [N, ...] samples for a single-input model, or a feed by input name. A few
            samples suffice; every intermediate tensor of both models is held in memory.
        tolerance: Largest error a tensor may show without counting as drift.
        relative: Errors relative to each tensor's scale (``max |diff| / max |reference|``),
            else absolute.
        threads: ONNX Runtime intra-op threads.

    Returns:
        The drift, or None when every matched tensor stays within ``tolerance``.
    """
    errors = layer_errors(
        reference_onnx, candidate_onnx, inputs, relative=relative, threads=threads
    )
    return drift_from(errors, tolerance)


def drift_from(errors: LayerErrors, tolerance: float) -> Drift | None:
    """The first tensor of ``errors`` above ``tolerance`` (NaN counts as above), or None."""
    for i, t in enumerate(errors.tensors):
        if t.error <= tolerance:
            continue
        out = errors.output
        return Drift(
            tensor=t.tensor,
            node=t.node,
            op_type=t.op_type,
            candidate_tensor=t.candidate_tensor,
            error=t.error,
            max_abs_diff=t.max_abs_diff,
            tolerance=tolerance,
            relative=errors.relative,
            output=out.tensor if out is not None else "",
            output_error=out.error if out is not None else float("nan"),
            checked=i + 1,
            unmatched=len(errors.unmatched),
            samples=errors.samples,
            trail=errors.tensors[:i],
        )
    return None


def layer_errors(
    reference_onnx: Path,
    candidate_onnx: Path,
    inputs: np.ndarray | Mapping[str, np.ndarray],
    *,
    relative: bool = True,
    threads: int = 1,
) -> LayerErrors:
    """Run both models with every matched tensor exposed; the error of each (module doc).

    Raises:
        ValueError: A bare array for a model with several inputs, or an empty input.
    """
    import onnx

    from edgedistill.export.onnx import check_onnx_file

    for path in (reference_onnx, candidate_onnx):
        check_onnx_file(Path(path))
    ref_model = onnx.load(str(reference_onnx))
    cand_model = onnx.load(str(candidate_onnx))
    ref_feed, cand_feed = _feed(ref_model, inputs), _feed(cand_model, inputs)
    samples = len(next(iter(ref_feed.values())))

    # (reference tensor, producing node, op type) in topological order
    points = [(name, "", "Input") for name in ref_feed]
    points += [(o, n.name, n.op_type) for n in ref_model.graph.node for o in n.output if o]
    counterpart = _counterparts(cand_model, {name for name, _, _ in points})
    matched = [(t, node, op) for t, node, op in points if t in counterpart]
    unmatched = tuple(t for t, _, _ in points if t not in counterpart)

    ref_out = ref_model.graph.output[0].name
    cand_out = counterpart.get(ref_out, cand_model.graph.output[0].name)
    ref_values = _run(ref_model, [t for t, _, _ in matched] + [ref_out], ref_feed, threads)
    cand_values = _run(
        cand_model, [counterpart[t] for t, _, _ in matched] + [cand_out], cand_feed, threads
    )

    def error(tensor: str, node: str, op: str, other: str) -> TensorError | None:
        r, c = ref_values.get(tensor), cand_values.get(other)
        if r is None or c is None or r.shape != c.shape:
            return None
        if not (np.issubdtype(r.dtype, np.floating) and np.issubdtype(c.dtype, np.floating)):
            return None
        diff, _, rel = scaled_diff(r, c)
        scale = float(np.abs(r.astype(np.float64)).max()) if r.size else 0.0
        return TensorError(tensor, node, op, other, rel if relative else diff, diff, scale)

    tensors = [error(t, node, op, counterpart[t]) for t, node, op in matched]
    out_node = next((n for n in ref_model.graph.node if ref_out in n.output), None)
    output = error(
        ref_out, out_node.name if out_node else "", out_node.op_type if out_node else "", cand_out
    )
    return LayerErrors(
        tuple(t for t in tensors if t is not None), output, relative, samples, unmatched
    )


def _feed(model: Any, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` as a feed for ``model``'s graph inputs (initializers are not inputs)."""
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if isinstance(inputs, Mapping):
        feed = {n: np.ascontiguousarray(inputs[n]) for n in names if n in inputs}
        missing = [n for n in names if n not in feed]
        if missing:
            raise ValueError(f"inputs lack {missing} (the model takes {names})")
    else:
        if len(names) != 1:
            raise ValueError(f"the model takes {len(names)} inputs {names}: pass a mapping")
        feed = {names[0]: np.ascontiguousarray(inputs)}
    if any(len(v) == 0 for v in feed.values()):
        raise ValueError("localisation needs at least one input sample")
    return feed


def _counterparts(model: Any, wanted: set[str]) -> dict[str, str]:
    """Reference tensor name -> candidate tensor to compare it with (the matching rule)."""
    initializers = {i.name for i in model.graph.initializer}
    produced = {o for n in model.graph.node for o in n.output if o}
    produced |= {i.name for i in model.graph.input if i.name not in initializers}
    quantized = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dequantized = {
        n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
    }
    pairs = {}
    for name in wanted:
        if name in quantized and quantized[name] in dequantized:
            pairs[name] = dequantized[quantized[name]]
        elif name in produced:
            pairs[name] = name
    return pairs


def _run(
    model: Any, tensors: list[str], feed: dict[str, np.ndarray], threads: int
) -> dict[str, np.ndarray]:
    """Values of ``tensors`` (graph inputs are read from ``feed``) for one run of ``model``."""
    import onnx
    import onnxruntime as ort

    exposed = {o.name for o in model.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in exposed and name not in feed:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            exposed.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="edgedistill-localize-") as tmp:
        path = Path(tmp) / "exposed.onnx"
        large = model.ByteSize() > _TWO_GB
        onnx.save(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, feed), strict=True))
    values.update({name: np.asarray(x) for name, x in feed.items()})
    return values
