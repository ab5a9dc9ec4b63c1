"""Any ONNX model as a frozen teacher, run by ONNX Runtime.

A teacher card with ``arch: onnx`` names a ``.onnx`` file (inside the card's folder; external
data paths that leave it are refused). The model must take one float32 input [B, ...] with a
dynamic batch and return logits [B, K] as its first output. Parameters and MACs are read from
the graph itself (:func:`onnx_param_count`, :func:`onnx_macs`), so reports treat it like a
torch teacher; only the torch-eager latency row is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedistill.runtime.onnxruntime_runner import OnnxRuntimeRunner


class OnnxTeacherModel(nn.Module):
    """Wraps an ONNX file as a callable module (inference only, no gradients, no parameters).

    Args:
        path: The .onnx file.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, path: Path, threads: int = 2) -> None:
        super().__init__()
        self.onnx_path = Path(path)
        self._runner = OnnxRuntimeRunner(self.onnx_path, self.onnx_path.stem, threads).load()
        self.parameter_count = onnx_param_count(self.onnx_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._runner.infer(x.detach().cpu().numpy().astype(np.float32, copy=False))
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def onnx_param_count(path: Path) -> int:
    """Number of weight elements stored in the graph's initializers (floating point ones)."""
    import onnx

    floating = {
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
    }  # fmt: skip
    model = onnx.load(str(path), load_external_data=False)
    return sum(
        int(np.prod(init.dims)) if init.dims else 1
        for init in model.graph.initializer
        if init.data_type in floating
    )


def onnx_macs(path: Path, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul nodes at batch 1.

    Shapes come from ONNX shape inference with the batch fixed to 1; nodes whose shapes cannot
    be inferred are skipped (the count is then a lower bound).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, *input_shape), strict=False):
        dim.Clear()
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        if shape and all(s > 0 for s in shape):
            shapes[info.name] = shape
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0
    for node in inferred.graph.node:
        ins = [shapes.get(name) for name in node.input]
        out = shapes.get(node.output[0])
        weight = ins[1] if len(ins) > 1 else None
        if node.op_type == "Conv" and out and weight:
            # every output element: (Cin / groups) · kernel MACs; weight is [Cout, Cin/g, k...]
            macs += int(np.prod(out[1:])) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose" and ins[0] and weight:
            # every input element scatters into (Cout / groups) · kernel outputs
            macs += int(np.prod(ins[0][1:])) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul") and out and ins and ins[0]:
            k = ins[0][-1]
            macs += int(np.prod(out)) * k
    return macs
