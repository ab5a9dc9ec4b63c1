"""Runtimes behind one Runner interface."""

from edgedistill.runtime.base import Runner
from edgedistill.runtime.compare import Comparison, compare_outputs, run_batched
from edgedistill.runtime.onnxruntime_gpu import OnnxRuntimeCudaRunner, OnnxRuntimeTensorRtRunner
from edgedistill.runtime.onnxruntime_runner import OnnxRuntimeRunner
from edgedistill.runtime.openvino_runner import OpenVinoRunner
from edgedistill.runtime.registry import (
    RuntimeSpec,
    make_runner,
    register_runtime,
    runtime_status,
    unavailable_reason,
)
from edgedistill.runtime.tensorrt_runner import TensorRtRunner
from edgedistill.runtime.torch_cuda_runner import CudaUnavailableError, TorchCudaRunner
from edgedistill.runtime.torch_runner import TorchRunner
from edgedistill.runtime.torch_tensorrt_runner import TorchTensorRtRunner

__all__ = [
    "Comparison",
    "CudaUnavailableError",
    "OnnxRuntimeCudaRunner",
    "OnnxRuntimeRunner",
    "OnnxRuntimeTensorRtRunner",
    "OpenVinoRunner",
    "Runner",
    "RuntimeSpec",
    "TensorRtRunner",
    "TorchCudaRunner",
    "TorchRunner",
    "TorchTensorRtRunner",
    "compare_outputs",
    "make_runner",
    "register_runtime",
    "run_batched",
    "runtime_status",
    "unavailable_reason",
]
