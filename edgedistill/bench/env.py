"""Capture the environment a measurement ran in (recorded next to every number)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

LIBRARIES = (
    "edgedistill", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu",
    "openvino", "torch-pruning", "numpy", "nncf", "tensorrt",
)  # fmt: skip


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that affect results; absent ones are omitted."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment(threads: int | None = None) -> dict[str, Any]:
    """Machine, CPU, core count, thread setting, Python and library versions."""
    return {
        "machine": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
