"""TensorRT runner (the ``[trt]`` extra): builds or reuses a cached engine, runs it with
``execute_async_v3``.

Device buffers are torch CUDA tensors (their ``data_ptr()`` goes to ``set_tensor_address``),
so neither pycuda nor cuda-python is needed. Timing: CUDA events around ``execute_async_v3``
(:meth:`TensorRtRunner.timed_infer`), like the torch-cuda runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.errors import StageError
from edgedistill.export.tensorrt import EngineInfo, build_engine, import_tensorrt, onnx_input
from edgedistill.runtime.base import Runner


def default_engine_dir() -> Path:
    """``$XDG_CACHE_HOME/edgedistill/tensorrt`` (``~/.cache/...``): engines outlive a run."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgedistill" / "tensorrt"


class TensorRtRunner(Runner):
    """Runs an ONNX model as a TensorRT engine built on this GPU.

    Args:
        onnx_path: The FP32 ONNX model, or the quantize stage's QDQ model for ``int8``.
        name: Model name for messages.
        threads: Unused (the common signature).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        batch_sizes: Batches the engine's dynamic-batch profile covers.
        engine_dir: Engine cache folder (default :func:`default_engine_dir`).
        workspace_mb: Builder workspace limit.
        timing_cache_path: Shared timing cache (default ``engine_dir/timing.cache``).
    """

    runtime = "tensorrt"
    device_clock = "cuda-events"

    def __init__(
        self,
        onnx_path: Path,
        name: str,
        threads: int = 1,
        *,
        precision: str = "fp32",
        batch_sizes: tuple[int, ...] = (1,),
        engine_dir: Path | None = None,
        workspace_mb: int = 1024,
        timing_cache_path: Path | None = None,
    ) -> None:
        super().__init__(name, threads)
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.batch_sizes = tuple(batch_sizes)
        self.engine_dir = Path(engine_dir) if engine_dir is not None else default_engine_dir()
        self.workspace_mb = workspace_mb
        self.timing_cache_path = (
            Path(timing_cache_path)
            if timing_cache_path is not None
            else self.engine_dir / "timing.cache"
        )
        self.engine_info: EngineInfo | None = None
        self._engine: Any = None
        self._context: Any = None
        self._input_name = ""
        self._output_name = ""

    def _load(self) -> None:
        trt = import_tensorrt(f"runtime {self.runtime}")
        import torch

        self.engine_info = build_engine(
            self.onnx_path,
            self.engine_dir,
            precision=self.precision,
            batch_sizes=self.batch_sizes,
            workspace_mb=self.workspace_mb,
            timing_cache_path=self.timing_cache_path,
        )
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self._engine = runtime.deserialize_cuda_engine(self.engine_info.path.read_bytes())
        if self._engine is None:
            raise StageError(
                f"{self.engine_info.path}: TensorRT could not load the engine; delete it to rebuild"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self._input_name, self._output_name = inputs[0], outputs[0]
        _, dims, elem = onnx_input(self.onnx_path)
        self.input_shape = (None, *dims[1:])
        self.input_dtype = np.dtype(np.int64 if elem == "INT64" else np.float32)
        self._torch_dtype = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
        }
        self._torch = torch

    def _run(self, x: np.ndarray, timed: bool) -> tuple[np.ndarray, float | None]:
        """Copy in, execute on torch's current stream, copy out; optionally time on the GPU."""
        torch = self._torch
        if x.shape[0] > max(self.batch_sizes):
            raise StageError(
                f"{self.name} (tensorrt): batch {x.shape[0]} is above the engine's profile "
                f"maximum {max(self.batch_sizes)}; add it to batch_sizes"
            )
        engine, context = self._engine, self._context
        in_dtype = self._torch_dtype[engine.get_tensor_dtype(self._input_name)]
        x_dev = torch.from_numpy(x).to("cuda").to(in_dtype).contiguous()
        context.set_input_shape(self._input_name, tuple(x_dev.shape))
        out_shape = tuple(context.get_tensor_shape(self._output_name))
        out_dtype = self._torch_dtype[engine.get_tensor_dtype(self._output_name)]
        out = torch.empty(out_shape, dtype=out_dtype, device="cuda")
        context.set_tensor_address(self._input_name, x_dev.data_ptr())
        context.set_tensor_address(self._output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        start = torch.cuda.Event(enable_timing=True) if timed else None
        end = torch.cuda.Event(enable_timing=True) if timed else None
        if start is not None:
            start.record(stream)
        if not context.execute_async_v3(stream.cuda_stream):
            raise StageError(f"{self.name} (tensorrt): execute_async_v3 failed")
        if end is not None:
            end.record(stream)
        result = out.float().cpu().numpy()  # synchronises the stream
        if start is None or end is None:
            return result, None
        end.synchronize()
        return result, float(start.elapsed_time(end))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, timed=False)[0]

    def timed_infer(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """One batch, and the GPU time in ms of ``execute_async_v3`` (CUDA events)."""
        return self._run(self.check_input(x), timed=True)

    def close(self) -> None:
        self._context = None
        self._engine = None
        super().close()
