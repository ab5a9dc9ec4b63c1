"""Torch on a CUDA GPU: FP32, FP16 or BF16, eager or replayed from CUDA graphs.

Latency is timed on the GPU: :meth:`TorchCudaRunner.timed_infer` records CUDA events around
the kernel launches (after the host-to-device copy, before the copy back), so a number is the
model's GPU time, not Python's. :func:`~edgedistill.bench.latency.measure_latency` reports it
with ``timing: "cuda-events"``.

CUDA graphs (``cuda_graphs=True``) remove the per-kernel launch cost that dominates small
models at batch 1: one graph is captured per input shape, after a warm-up on a side stream,
with static input and output buffers (the documented ``torch.cuda.CUDAGraph`` recipe), and each
call copies the input into the static buffer and replays the graph.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.errors import EdgeDistillError, MissingDependencyError
from edgedistill.runtime.base import Runner

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
GRAPH_WARMUP = 3  # eager calls on a side stream before a capture (cuDNN/cuBLAS pick kernels)


class CudaUnavailableError(MissingDependencyError):
    """A runtime needs a CUDA GPU and ``torch.cuda.is_available()`` is False.

    A :class:`MissingDependencyError` (exit code 4) so that callers treating "cannot run this
    runtime here" alike (the profile stage's skip) catch both.
    """

    def __init__(self, purpose: str) -> None:
        EdgeDistillError.__init__(
            self, f"{purpose} needs a CUDA GPU (torch.cuda.is_available() is False)"
        )
        self.package = "cuda"
        self.extra = "gpu"


def require_cuda(purpose: str) -> None:
    """Raise :class:`CudaUnavailableError` unless torch sees a CUDA device."""
    if not torch.cuda.is_available():
        raise CudaUnavailableError(purpose)


def first_tensor(out: Any) -> torch.Tensor:
    """The logits of a forward that may return a tensor, a tuple/list or a dict of them."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_tensor(out[0])
    if isinstance(out, dict) and out:
        return first_tensor(next(iter(out.values())))
    raise TypeError(f"model output {type(out).__name__} holds no tensor")


class TorchCudaRunner(Runner):
    """Runs a copy of an ``nn.Module`` on a CUDA device under ``torch.inference_mode``.

    Args:
        model: The FP32 module; it is deep-copied, so the caller's CPU module is untouched.
        name: Model name for messages.
        threads: Unused on the GPU (kept for the common signature).
        precision: ``"fp32"``, ``"fp16"`` (``.half()``) or ``"bf16"``; float inputs are cast to
            it on the device, int64 token ids stay int64. Outputs come back as float32.
        cuda_graphs: Capture one CUDA graph per input shape and replay it.
        device: The torch device, e.g. ``"cuda"`` or ``"cuda:1"``.
        input_shape: Per-sample input shape to check (without the batch dimension).
    """

    runtime = "torch-cuda"
    device_clock = "cuda-events"

    def __init__(
        self,
        model: nn.Module,
        name: str,
        threads: int = 1,
        *,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        device: str = "cuda",
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(name, threads)
        if precision not in DTYPES:
            raise ValueError(f"torch-cuda runs {sorted(DTYPES)}, not {precision!r}")
        self.source = model
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.cuda_graphs = cuda_graphs
        self.device = torch.device(device)
        self.model: nn.Module | None = None
        # shape + dtype -> (graph, static input, static output)
        self._graphs: dict[tuple[Any, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        if input_shape is not None:
            self.input_shape = (None, *input_shape)

    def _load(self) -> None:
        require_cuda(f"runtime {self.runtime}")
        model = copy.deepcopy(self.source).eval()
        self.model = model.to(device=self.device, dtype=self.dtype)
        self._graphs = {}

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor: floats in the run dtype, integer ids unchanged."""
        tensor = torch.from_numpy(x).to(self.device, non_blocking=False)
        return tensor if not tensor.is_floating_point() else tensor.to(self.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Launch the kernels of one batch (eager or graph replay); no synchronisation."""
        assert self.model is not None
        if not self.cuda_graphs:
            return first_tensor(self.model(x))
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _capture(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Warm up on a side stream, then capture one forward into a CUDA graph."""
        assert self.model is not None
        static_in = x.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = first_tensor(self.model(static_in))
        return graph, static_in, static_out

    def _infer(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self._forward(self._to_device(x))
            return out.float().cpu().numpy()

    def timed_infer(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """One batch, and the GPU time in ms between events around the kernel launches."""
        x = self.check_input(x)
        with torch.inference_mode():
            x_dev = self._to_device(x)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = self._forward(x_dev)
            end.record()
            result = out.float().cpu().numpy()  # the copy back synchronises the stream
            end.synchronize()
            return result, float(start.elapsed_time(end))

    def close(self) -> None:
        self._graphs = {}
        self.model = None
        super().close()
