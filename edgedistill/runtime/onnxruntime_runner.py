"""ONNX Runtime runner (CPU execution provider unless told otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedistill.export.onnx import check_onnx_file
from edgedistill.runtime.base import Runner


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file in an ``InferenceSession`` with a fixed intra-op thread count.

    Args:
        path: The .onnx file; external-data paths escaping its folder are refused.
        providers: Execution providers, default ``["CPUExecutionProvider"]``.
    """

    runtime = "onnxruntime"

    def __init__(
        self, path: Path, name: str, threads: int = 1, providers: list[str] | None = None
    ) -> None:
        super().__init__(name, threads)
        self.path = Path(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.session = None

    def _load(self) -> None:
        import onnxruntime as ort

        check_onnx_file(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        meta = self.session.get_inputs()[0]  # type: ignore[attr-defined]
        self._input_name = meta.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in meta.shape)
        self.input_dtype = np.dtype(np.int64 if meta.type == "tensor(int64)" else np.float32)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        assert self.session is not None
        return self.session.run(None, {self._input_name: x})[0]

    def close(self) -> None:
        self.session = None
        super().close()
