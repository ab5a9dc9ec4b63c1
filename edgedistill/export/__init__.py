"""Export to ONNX and OpenVINO IR, and the app-ready bundle (one writer for every modality);
TensorRT lives behind the [trt] extra."""

from edgedistill.export.bundle import BundledModel, write_bundle
from edgedistill.export.onnx import check_onnx_file, export_onnx
from edgedistill.export.openvino import export_openvino, openvino_available

__all__ = [
    "BundledModel",
    "check_onnx_file",
    "export_onnx",
    "export_openvino",
    "openvino_available",
    "write_bundle",
]
