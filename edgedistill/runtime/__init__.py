"""Runtimes behind one Runner interface."""

from edgedistill.runtime.base import Runner
from edgedistill.runtime.compare import Comparison, compare_outputs, run_batched
from edgedistill.runtime.onnxruntime_runner import OnnxRuntimeRunner
from edgedistill.runtime.openvino_runner import OpenVinoRunner
from edgedistill.runtime.torch_runner import TorchRunner

__all__ = [
    "Comparison",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "Runner",
    "TorchRunner",
    "compare_outputs",
    "run_batched",
]
