"""OpenVINO runner (the ``[openvino]`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedistill.errors import MissingDependencyError
from edgedistill.runtime.base import Runner


class OpenVinoRunner(Runner):
    """Compiles an IR (.xml) or ONNX file for the CPU plugin.

    TOOLCHAIN.md: on CPUs with avx512_bf16 OpenVINO silently runs "FP32" models in bf16. The
    precision is therefore explicit: ``precision="f32"`` (default; parity checks) or ``"bf16"``.
    Latency tables state it.
    """

    runtime = "openvino"

    def __init__(self, path: Path, name: str, threads: int = 1, precision: str = "f32") -> None:
        super().__init__(name, threads)
        self.path = Path(path)
        self.precision = precision
        self._request = None

    def _load(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("openvino", "openvino", "the OpenVINO runtime") from None
        if self.path.suffix == ".onnx":
            from edgedistill.export.onnx import check_onnx_file

            check_onnx_file(self.path)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = core.compile_model(str(self.path), "CPU", config)
        self._request = compiled.create_infer_request()
        shape = compiled.input(0).get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        assert self._request is not None
        result = self._request.infer({0: x})
        return np.asarray(next(iter(result.values())))

    def close(self) -> None:
        self._request = None
        super().close()
