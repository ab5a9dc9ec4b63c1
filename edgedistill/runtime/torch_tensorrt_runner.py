"""The student compiled with torch-tensorrt (the ``[trt]`` extra): an alternative route to a
TensorRT engine that starts from the torch module instead of the ONNX file.

``torch_tensorrt.compile(model, ir="dynamo", inputs=[Input(min, opt, max)], enabled_precisions=
{...})`` lowers the supported subgraphs to TensorRT and leaves the rest in torch. Timing is
on the GPU, like :class:`~edgedistill.runtime.torch_cuda_runner.TorchCudaRunner` (events
around the compiled module's launches).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.errors import MissingDependencyError
from edgedistill.export.tensorrt import shape_profile
from edgedistill.runtime.torch_cuda_runner import TorchCudaRunner, first_tensor, require_cuda

PRECISION_DTYPES = {"fp32": {torch.float32}, "fp16": {torch.float16, torch.float32}}


def import_torch_tensorrt() -> Any:
    """``import torch_tensorrt`` or a one-line error naming the ``[trt]`` extra."""
    try:
        import torch_tensorrt
    except ImportError:
        raise MissingDependencyError("torch_tensorrt", "trt", "runtime torch-tensorrt") from None
    return torch_tensorrt


class TorchTensorRtRunner(TorchCudaRunner):
    """A module compiled by torch-tensorrt (dynamo IR) for a dynamic batch.

    Args:
        model: The FP32 module (deep-copied).
        name: Model name for messages.
        input_shape: Per-sample input shape (without batch); needed to compile.
        precision: ``"fp32"`` or ``"fp16"`` (``enabled_precisions``; the module stays FP32 and
            TensorRT chooses FP16 kernels where allowed).
        batch_sizes: Batches the compiled engine covers (min/opt/max of :func:`shape_profile`).
        input_dtype: ``torch.float32``, or ``torch.int64`` for token ids.
    """

    runtime = "torch-tensorrt"

    def __init__(
        self,
        model: nn.Module,
        name: str,
        threads: int = 1,
        *,
        input_shape: Sequence[int],
        precision: str = "fp32",
        batch_sizes: Sequence[int] = (1,),
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        if precision not in PRECISION_DTYPES:
            raise ValueError(f"torch-tensorrt runs {sorted(PRECISION_DTYPES)}, not {precision!r}")
        # The module stays FP32: TensorRT picks the kernels' precision from enabled_precisions.
        super().__init__(model, name, threads, precision="fp32", input_shape=tuple(input_shape))
        self.trt_precision = precision
        self.batch_sizes = tuple(batch_sizes)
        self.sample_shape = tuple(int(d) for d in input_shape)
        self.torch_input_dtype = input_dtype
        if input_dtype == torch.int64:
            self.input_dtype = np.dtype(np.int64)

    def _load(self) -> None:
        torch_tensorrt = import_torch_tensorrt()
        require_cuda(f"runtime {self.runtime}")
        low, opt, high = shape_profile(self.sample_shape, self.batch_sizes)
        source = copy.deepcopy(self.source).eval().to("cuda")  # the caller's module stays put
        spec = torch_tensorrt.Input(
            min_shape=low, opt_shape=opt, max_shape=high, dtype=self.torch_input_dtype
        )
        compiled = torch_tensorrt.compile(
            source,
            ir="dynamo",
            inputs=[spec],
            enabled_precisions=PRECISION_DTYPES[self.trt_precision],
        )
        self.model = _Compiled(compiled)
        self._graphs = {}


class _Compiled(nn.Module):
    """Holds the compiled callable so the runner's forward path stays the same."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.compiled(x))
