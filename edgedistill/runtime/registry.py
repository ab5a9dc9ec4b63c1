"""Every runtime by name: what it runs (an ONNX/IR file or a torch module), what it needs
installed, which precisions it offers, and how to build its :class:`Runner`.

The profile stage, the verify stage and the device agent all build runners through
:func:`make_runner`, so a runtime added here is profiled everywhere. Implementations are
imported lazily: a runtime whose library is missing is listed by :func:`runtime_status` with
the extra to install, and asking for it raises :class:`MissingDependencyError` in one line.

GPU runtimes (``torch-cuda``, ``tensorrt``, ``onnxruntime-cuda``, ``onnxruntime-trt``,
``torch-tensorrt``) are listed on every machine; :func:`unavailable_reason` says in one line why
one cannot run here (not installed, with the install line, or no CUDA device).
Runner options (``options`` of :func:`make_runner`): ``cuda_graphs`` and ``device``
(torch-cuda), ``batch_sizes``, ``engine_dir``, ``workspace_mb``, ``timing_cache_path``
(tensorrt; ``batch_sizes`` and ``input_shape`` for torch-tensorrt), ``device_id`` and
``engine_dir`` (onnxruntime-cuda / -trt), ``openvino_precision`` (openvino).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.errors import MissingDependencyError
from edgedistill.runtime.base import Runner
from edgedistill.runtime.onnxruntime_gpu import REPLACES_HINT


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime.

    Attributes:
        name: The name recipes, target profiles and the agent use.
        takes: ``"onnx"`` (an .onnx file; OpenVINO also an IR .xml) or ``"torch"`` (a module).
        modules: Python modules that must import (checked without importing them).
        extra: The pip extra that installs them (for the one-line error).
        precisions: Precisions it can run; ``"int8"`` means the QDQ model of the quantize stage.
        build: ``build(model, name, threads, precision, options) -> Runner``.
        needs_gpu: Whether it also needs a CUDA device at run time.
        providers: ONNX Runtime execution providers that must be available (onnxruntime-gpu).
        notes: One line for ``runtime_status`` (what "installed" does not say).
    """

    name: str
    takes: str
    modules: tuple[str, ...]
    extra: str
    precisions: tuple[str, ...]
    build: Callable[[Any, str, int, str, dict[str, Any]], Runner]
    needs_gpu: bool = False
    providers: tuple[str, ...] = ()
    notes: str = field(default="")


def _torch(model: Any, name: str, threads: int, precision: str, options: dict[str, Any]) -> Runner:
    from edgedistill.runtime.torch_runner import TorchRunner

    if precision != "fp32":
        raise ValueError(f"torch (CPU) runs fp32 only, not {precision}")
    if not isinstance(model, nn.Module):
        raise TypeError("the torch runtime needs an nn.Module")
    return TorchRunner(model, name, threads)


def _onnxruntime(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(Path(model), name, threads)


def _openvino(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.openvino_runner import OpenVinoRunner

    hint = options.get("openvino_precision", "f32")
    return OpenVinoRunner(Path(model), name, threads, hint)


def _torch_cuda(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.torch_cuda_runner import TorchCudaRunner

    if not isinstance(model, nn.Module):
        raise TypeError("the torch-cuda runtime needs an nn.Module")
    return TorchCudaRunner(
        model,
        name,
        threads,
        precision=precision,
        cuda_graphs=bool(options.get("cuda_graphs", False)),
        device=str(options.get("device", "cuda")),
    )


def _tensorrt(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.tensorrt_runner import TensorRtRunner

    engine_dir = options.get("engine_dir")
    timing = options.get("timing_cache_path")
    return TensorRtRunner(
        Path(model),
        name,
        threads,
        precision=precision,
        batch_sizes=tuple(int(b) for b in options.get("batch_sizes", (1,))),
        engine_dir=None if engine_dir is None else Path(engine_dir),
        workspace_mb=int(options.get("workspace_mb", 1024)),
        timing_cache_path=None if timing is None else Path(timing),
    )


def _onnxruntime_cuda(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.onnxruntime_gpu import OnnxRuntimeCudaRunner

    return OnnxRuntimeCudaRunner(
        Path(model), name, threads, device_id=int(options.get("device_id", 0))
    )


def _onnxruntime_trt(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.onnxruntime_gpu import OnnxRuntimeTensorRtRunner

    engine_dir = options.get("engine_dir")
    return OnnxRuntimeTensorRtRunner(
        Path(model),
        name,
        threads,
        precision=precision,
        cache_dir=None if engine_dir is None else Path(engine_dir) / "ort",
        device_id=int(options.get("device_id", 0)),
    )


def _torch_tensorrt(
    model: Any, name: str, threads: int, precision: str, options: dict[str, Any]
) -> Runner:
    from edgedistill.runtime.torch_tensorrt_runner import TorchTensorRtRunner

    if not isinstance(model, nn.Module):
        raise TypeError("the torch-tensorrt runtime needs an nn.Module")
    if "input_shape" not in options:
        raise ValueError("torch-tensorrt needs options['input_shape'] (per-sample, no batch)")
    return TorchTensorRtRunner(
        model,
        name,
        threads,
        input_shape=tuple(int(d) for d in options["input_shape"]),
        precision=precision,
        batch_sizes=tuple(int(b) for b in options.get("batch_sizes", (1,))),
        input_dtype=options.get("input_dtype", torch.float32),
    )


RUNTIMES: dict[str, RuntimeSpec] = {}


def register_runtime(spec: RuntimeSpec) -> RuntimeSpec:
    """Add (or replace) a runtime in the table."""
    RUNTIMES[spec.name] = spec
    return spec


register_runtime(RuntimeSpec("torch", "torch", ("torch",), "core", ("fp32",), _torch))
register_runtime(
    RuntimeSpec("onnxruntime", "onnx", ("onnxruntime",), "core", ("fp32", "int8"), _onnxruntime)
)
register_runtime(
    RuntimeSpec("openvino", "onnx", ("openvino",), "openvino", ("fp32", "int8"), _openvino)
)
register_runtime(
    RuntimeSpec(
        "torch-cuda",
        "torch",
        ("torch",),
        "core",
        ("fp32", "fp16", "bf16"),
        _torch_cuda,
        needs_gpu=True,
        notes="needs a CUDA build of torch",
    )
)
register_runtime(
    RuntimeSpec(
        "tensorrt",
        "onnx",
        ("tensorrt",),
        "trt",
        ("fp32", "fp16", "int8"),
        _tensorrt,
        needs_gpu=True,
        notes="engines are built on the device that runs them; JetPack ships TensorRT",
    )
)
register_runtime(
    RuntimeSpec(
        "onnxruntime-cuda",
        "onnx",
        ("onnxruntime",),
        "gpu",
        ("fp32", "int8"),
        _onnxruntime_cuda,
        needs_gpu=True,
        providers=("CUDAExecutionProvider",),
        notes=REPLACES_HINT,
    )
)
register_runtime(
    RuntimeSpec(
        "onnxruntime-trt",
        "onnx",
        ("onnxruntime",),
        "gpu",
        ("fp32", "fp16", "int8"),
        _onnxruntime_trt,
        needs_gpu=True,
        providers=("TensorrtExecutionProvider",),
        notes=REPLACES_HINT + "; also needs TensorRT's libraries",
    )
)
register_runtime(
    RuntimeSpec(
        "torch-tensorrt",
        "torch",
        ("torch_tensorrt",),
        "trt",
        ("fp32", "fp16"),
        _torch_tensorrt,
        needs_gpu=True,
    )
)


def runtime_spec(name: str) -> RuntimeSpec:
    """The spec of ``name``; unknown names list the known ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {sorted(RUNTIMES)}") from None


def _missing_module(spec: RuntimeSpec) -> str | None:
    return next((m for m in spec.modules if importlib.util.find_spec(m) is None), None)


def _missing_provider(spec: RuntimeSpec) -> str | None:
    if not spec.providers:
        return None
    from edgedistill.runtime.onnxruntime_gpu import provider_available

    return next((p for p in spec.providers if not provider_available(p)), None)


def installed(spec: RuntimeSpec) -> bool:
    """Whether every module the runtime needs can be imported (without importing it) and,
    for ONNX Runtime GPU providers, whether ``onnxruntime`` lists them."""
    return _missing_module(spec) is None and _missing_provider(spec) is None


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    return bool(torch.cuda.is_available())


def install_line(spec: RuntimeSpec) -> str:
    """What to run to install a runtime's libraries (one line)."""
    line = f"pip install 'edgedistill[{spec.extra}]'"
    return f"{line} ({spec.notes})" if spec.notes else line


def unavailable_reason(name: str) -> str | None:
    """Why runtime ``name`` cannot run on this machine (one line), or None when it can."""
    spec = runtime_spec(name)
    if not installed(spec):
        return f"not installed: {install_line(spec)}"
    if spec.needs_gpu and not cuda_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def runtime_status() -> dict[str, dict[str, Any]]:
    """Per runtime: installed or not, its precisions, and what to install when missing.

    GPU runtimes also report ``gpu``: whether torch sees a CUDA device; ``available`` is
    "installed and, where needed, a GPU".
    """
    gpu = cuda_available()
    status: dict[str, dict[str, Any]] = {}
    for name, spec in RUNTIMES.items():
        ok = installed(spec)
        entry: dict[str, Any] = {
            "installed": ok,
            "precisions": list(spec.precisions),
            "needs_gpu": spec.needs_gpu,
            "takes": spec.takes,
            "install": None if ok else install_line(spec),
        }
        if spec.needs_gpu:
            entry["gpu"] = gpu
        entry["available"] = ok and (gpu or not spec.needs_gpu)
        status[name] = entry
    return status


def make_runner(
    runtime: str,
    model: Any,
    name: str,
    *,
    threads: int = 1,
    precision: str = "fp32",
    options: dict[str, Any] | None = None,
) -> Runner:
    """A :class:`Runner` for ``model`` (a path for ONNX runtimes, a module for torch ones).

    A GPU runtime on a machine without a CUDA device builds, and raises at ``load``
    (:class:`~edgedistill.runtime.torch_cuda_runner.CudaUnavailableError`, one line).

    Raises:
        ValueError: Unknown runtime or a precision it does not offer.
        MissingDependencyError: Its library is not installed (names the extra).
    """
    spec = runtime_spec(runtime)
    if precision not in spec.precisions:
        raise ValueError(f"{runtime} offers {list(spec.precisions)}, not {precision!r}")
    missing = _missing_module(spec)
    if missing is not None:
        raise MissingDependencyError(missing, spec.extra, f"runtime {runtime}")
    if _missing_provider(spec) is not None:
        from edgedistill.runtime.onnxruntime_gpu import require_provider

        for provider in spec.providers:
            require_provider(provider, runtime)
    return spec.build(model, name, threads, precision, dict(options or {}))
