"""Compression: structured pruning and INT8 quantization."""

from edgedistill.compress.prune import PruneResult, prune_channels
from edgedistill.compress.quantize import quantize_onnx_static

__all__ = ["PruneResult", "prune_channels", "quantize_onnx_static"]
