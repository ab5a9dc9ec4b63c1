"""ONNX Runtime on an NVIDIA GPU: the CUDA and the TensorRT execution providers (``[gpu]``).

Both need ``onnxruntime-gpu``, which installs the same ``onnxruntime`` module as the CPU
package: it replaces ``onnxruntime`` (uninstall that first), never both in one environment.
ONNX Runtime falls back to the CPU quietly when a provider fails to initialise (missing CUDA or
cuDNN libraries); these runners check the session's providers and refuse such a fallback, so a
"GPU" number is never a CPU number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgedistill.errors import MissingDependencyError, StageError
from edgedistill.runtime.onnxruntime_runner import OnnxRuntimeRunner

REPLACES_HINT = "onnxruntime-gpu replaces onnxruntime: pip uninstall onnxruntime first, never both"


def provider_available(provider: str) -> bool:
    """Whether ``onnxruntime.get_available_providers()`` lists ``provider``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return provider in ort.get_available_providers()


def require_provider(provider: str, runtime: str) -> None:
    """Raise a one-line :class:`MissingDependencyError` naming ``[gpu]`` when it is missing."""
    if not provider_available(provider):
        raise MissingDependencyError(
            "onnxruntime-gpu", "gpu", f"runtime {runtime} ({provider})", hint=REPLACES_HINT
        )


def tensorrt_provider_options(
    precision: str, cache_dir: Path, *, device_id: int = 0, workspace_mb: int = 1024
) -> dict[str, Any]:
    """Options of ORT's ``TensorrtExecutionProvider`` for ``precision``.

    FP16 sets ``trt_fp16_enable``; INT8 (a QDQ model: the scales come from the model, ORT does
    not calibrate) sets ``trt_int8_enable`` and ``trt_fp16_enable`` for the float layers. The
    engine and timing caches live in ``cache_dir`` so the second session starts in seconds.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"onnxruntime-trt runs fp32, fp16 or int8, not {precision!r}")
    return {
        "device_id": device_id,
        "trt_max_workspace_size": int(workspace_mb) << 20,
        "trt_fp16_enable": precision in ("fp16", "int8"),
        "trt_int8_enable": precision == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
    }


class _GpuProviderRunner(OnnxRuntimeRunner):
    """An ORT session whose first provider must be ``provider`` (checked after loading)."""

    provider = ""

    def _load(self) -> None:
        require_provider(self.provider, self.runtime)
        super()._load()
        assert self.session is not None
        active = self.session.get_providers()  # type: ignore[attr-defined]
        if self.provider not in active:
            raise StageError(
                f"{self.name} ({self.runtime}): {self.provider} did not start (ONNX Runtime "
                f"fell back to {active}); check the CUDA/cuDNN/TensorRT libraries"
            )


class OnnxRuntimeCudaRunner(_GpuProviderRunner):
    """ONNX Runtime with ``CUDAExecutionProvider`` (FP32 models, and QDQ INT8 models as ORT
    runs them on CUDA)."""

    runtime = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"

    def __init__(self, path: Path, name: str, threads: int = 1, *, device_id: int = 0) -> None:
        super().__init__(path, name, threads)
        # ORT takes (name, options) pairs as well as names; the CPU provider runs what CUDA
        # cannot (shape ops), as ORT intends.
        providers: list[Any] = [(self.provider, {"device_id": device_id}), "CPUExecutionProvider"]
        self.providers = providers


class OnnxRuntimeTensorRtRunner(_GpuProviderRunner):
    """ONNX Runtime with ``TensorrtExecutionProvider`` (CUDA, then CPU, for what it leaves)."""

    runtime = "onnxruntime-trt"
    provider = "TensorrtExecutionProvider"

    def __init__(
        self,
        path: Path,
        name: str,
        threads: int = 1,
        *,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        device_id: int = 0,
    ) -> None:
        super().__init__(path, name, threads)
        self.precision = precision
        from edgedistill.runtime.tensorrt_runner import default_engine_dir

        cache = Path(cache_dir) if cache_dir is not None else default_engine_dir() / "ort"
        self.trt_options = tensorrt_provider_options(precision, cache, device_id=device_id)
        providers: list[Any] = [
            (self.provider, self.trt_options),
            ("CUDAExecutionProvider", {"device_id": device_id}),
            "CPUExecutionProvider",
        ]
        self.providers = providers

    def _load(self) -> None:
        Path(self.trt_options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        super()._load()
