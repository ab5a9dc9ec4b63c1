"""Every runtime by name: what it runs (an ONNX/IR file or a torch module), what it needs
installed, which precisions it offers, and how to build its :class:`Runner`.

The profile stage, the verify stage and the device agent all build runners through
:func:`make_runner`, so a runtime added here is profiled everywhere. Implementations are
imported lazily: a runtime whose library is missing is listed by :func:`runtime_status` with
the extra to install, and asking for it raises :class:`MissingDependencyError` in one line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from edgedistill.errors import MissingDependencyError
from edgedistill.runtime.base import Runner


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
    """

    name: str
    takes: str
    modules: tuple[str, ...]
    extra: str
    precisions: tuple[str, ...]
    build: Callable[[Any, str, int, str, dict[str, Any]], Runner]
    needs_gpu: bool = False
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


def runtime_spec(name: str) -> RuntimeSpec:
    """The spec of ``name``; unknown names list the known ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {sorted(RUNTIMES)}") from None


def installed(spec: RuntimeSpec) -> bool:
    """Whether every module the runtime needs can be imported (without importing it)."""
    return all(importlib.util.find_spec(m) is not None for m in spec.modules)


def runtime_status() -> dict[str, dict[str, Any]]:
    """Per runtime: installed or not, its precisions, and what to install when missing."""
    return {
        name: {
            "installed": installed(spec),
            "precisions": list(spec.precisions),
            "needs_gpu": spec.needs_gpu,
            "install": None if installed(spec) else f"pip install 'edgedistill[{spec.extra}]'",
        }
        for name, spec in RUNTIMES.items()
    }


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

    Raises:
        ValueError: Unknown runtime or a precision it does not offer.
        MissingDependencyError: Its library is not installed (names the extra).
    """
    spec = runtime_spec(runtime)
    if precision not in spec.precisions:
        raise ValueError(f"{runtime} offers {list(spec.precisions)}, not {precision!r}")
    if not installed(spec):
        missing = next(m for m in spec.modules if importlib.util.find_spec(m) is None)
        raise MissingDependencyError(missing, spec.extra, f"runtime {runtime}")
    return spec.build(model, name, threads, precision, dict(options or {}))
