"""Export to ONNX and OpenVINO IR; TensorRT lives behind the [trt] extra."""

from edgedistill.export.onnx import check_onnx_file, export_onnx
from edgedistill.export.openvino import export_openvino, openvino_available

__all__ = ["check_onnx_file", "export_onnx", "export_openvino", "openvino_available"]
