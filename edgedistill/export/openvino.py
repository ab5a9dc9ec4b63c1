"""OpenVINO IR conversion (the ``[openvino]`` extra)."""

from __future__ import annotations

from pathlib import Path

from edgedistill.artifacts import atomic_save
from edgedistill.errors import MissingDependencyError


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def export_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """Convert an ONNX model to OpenVINO IR (``.xml`` + ``.bin`` beside it), weights uncompressed.

    FP32 weights stay FP32 (``compress_to_fp16=False``) so that parity with torch can be
    checked; INT8 QDQ models keep their quantization.
    """
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependencyError("openvino", "openvino", "OpenVINO export") from None
    model = ov.convert_model(str(onnx_path))
    bin_path = xml_path.with_suffix(".bin")

    def write(tmp: Path) -> None:
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        # save_model writes the weights next to the temporary .xml; move them into place first.
        tmp_bin = tmp.with_suffix(".bin")
        tmp_bin.replace(bin_path)

    atomic_save(xml_path, write)
    return xml_path
