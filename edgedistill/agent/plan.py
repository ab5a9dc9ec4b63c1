"""What a profiling job measures: the request (:class:`JobSpec`), its validation and expansion
into single measurements (:func:`plan`), their inputs, and the environment they record.

Pure functions over the upload's model records, so they are tested without a server.
"""

from __future__ import annotations

import itertools
import resource
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgedistill.errors import DataError

LIMITS = {"batch": 4096, "threads": 1024, "warmup": 100_000, "runs": 1_000_000}


@dataclass(frozen=True)
class JobSpec:
    """What to measure: every model of an upload × runtimes × precisions × batches × threads.

    ``int8`` pairs with the upload's QDQ (INT8) models, every other precision with its FP32
    models: a runtime given ``fp16`` builds an FP16 engine from the FP32 model.
    """

    upload_id: str
    runtimes: list[str]
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: list[int] = field(default_factory=lambda: [1])
    warmup: int = 20
    runs: int = 200
    models: list[str] | None = None  # restrict to these model names


def new_id(prefix: str) -> str:
    """A unique id that sorts by creation time (``j-20261203T154945-3fa9c1d2``)."""
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def device_environment(threads: int | None = None) -> dict[str, Any]:
    """:func:`edgedistill.bench.env.environment` plus GPU/Jetson facts when they can be read."""
    from edgedistill.bench.env import environment

    env = environment(threads)
    try:
        from edgedistill.bench import device_env  # type: ignore[attr-defined]
    except ImportError:
        return env
    for key, fn_name in (("gpu", "gpu_environment"), ("jetson", "jetson_environment")):
        fn = getattr(device_env, fn_name, None)
        if fn is None:
            continue
        try:
            value = fn()
        except Exception as exc:  # a broken driver must not stop profiling on the CPU
            value = {"error": str(exc)[:200]}
        if value:
            env[key] = value
    return env


def relevant_versions(env: dict[str, Any], modules: tuple[str, ...]) -> dict[str, str]:
    """The versions a number depends on: the runtime's libraries, numpy, edgedistill, and
    GPU driver/CUDA/TensorRT/JetPack versions when the environment has them."""
    libraries = env.get("libraries", {})
    wanted = {"edgedistill", "numpy", *modules}
    versions = {
        name: str(v)
        for name, v in libraries.items()
        if name in wanted or any(name.startswith(f"{m}-") for m in modules)
    }
    for section in ("gpu", "jetson"):
        info = env.get(section)
        if isinstance(info, dict):
            for key, value in info.items():
                if isinstance(value, dict):  # {"l4t": {"l4t": "36.3.0", "release": ...}}
                    value = value.get(key)
                low = key.lower()
                if any(w in low for w in ("version", "driver", "cuda", "jetpack", "l4t")) and (
                    isinstance(value, str | int | float)
                ):
                    versions[f"{section}.{key}"] = str(value)
    return dict(sorted(versions.items()))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def plan(spec: JobSpec, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every measurement of a job, in the order they run (model, runtime, precision, ...).

    Raises:
        DataError: An unknown, unusable or uninstalled runtime or precision, a bad number,
            or a request that measures nothing.
    """
    from edgedistill.runtime.registry import RUNTIMES, installed, runtime_spec, runtime_status

    status = runtime_status()
    for key, values in (("batch", spec.batch_sizes), ("threads", spec.threads)):
        if not values or any(v < 1 or v > LIMITS[key] for v in values):
            raise DataError(f"{key} values must be in [1, {LIMITS[key]}], got {values}")
    for key, value in (("warmup", spec.warmup), ("runs", spec.runs)):
        if value < (0 if key == "warmup" else 1) or value > LIMITS[key]:
            raise DataError(f"{key} must be in [0/1, {LIMITS[key]}], got {value}")
    if not spec.runtimes or not spec.precisions:
        raise DataError("give at least one runtime and one precision")
    offered: set[str] = set()
    for name in spec.runtimes:
        try:
            rt = runtime_spec(name)
        except ValueError:
            raise DataError(f"unknown runtime {name!r}; known: {sorted(RUNTIMES)}") from None
        if rt.takes != "onnx":
            onnx_ones = sorted(n for n, s in RUNTIMES.items() if s.takes == "onnx")
            raise DataError(f"runtime {name!r} runs torch modules, not ONNX; use {onnx_ones}")
        state = status.get(name, {})
        if not installed(rt):
            how = state.get("install") or f"pip install 'edgedistill[{rt.extra}]'"
            raise DataError(f"runtime {name!r} is not installed on this device: {how}")
        if state.get("available") is False:
            raise DataError(f"runtime {name!r} needs a CUDA GPU, which this device lacks")
        offered.update(rt.precisions)
    for precision in spec.precisions:
        if precision not in offered:
            raise DataError(
                f"unknown precision {precision!r} for runtimes {spec.runtimes}; "
                f"they offer {sorted(offered)}"
            )
    chosen = [m for m in models if spec.models is None or m["name"] in spec.models]
    if spec.models is not None and len(chosen) != len(spec.models):
        names = sorted(m["name"] for m in models)
        raise DataError(f"models {spec.models} not all in the upload; it holds {names}")
    items = []
    for model, runtime, precision, batch, threads in itertools.product(
        chosen, spec.runtimes, spec.precisions, spec.batch_sizes, spec.threads
    ):
        if precision not in runtime_spec(runtime).precisions:
            continue
        if (precision == "int8") != (model["precision"] == "int8"):
            continue  # int8 measures the QDQ models; other precisions the FP32 ones
        if any(d is None for d in model["input_shape"][1:]):
            raise DataError(
                f"model {model['name']}: input {model['input_name']} has a symbolic dim besides "
                f"the batch ({model['input_shape']}); export it with a fixed input shape"
            )
        items.append(
            {"model": model, "runtime": runtime, "precision": precision, "batch": batch}
            | {"threads": threads}
        )
    if not items:
        precisions = sorted({m["precision"] for m in chosen})
        raise DataError(
            f"nothing to measure: the upload's models are {precisions}, asked for "
            f"{spec.precisions} on {spec.runtimes} (int8 measures QDQ models only)"
        )
    return items


def example_input(model: dict[str, Any], batch: int) -> np.ndarray:
    """A deterministic input [batch, *dims] of the model's dtype (ones for token ids)."""
    shape = (batch, *[int(d) for d in model["input_shape"][1:]])
    if model["input_dtype"] == "int64":
        return np.ones(shape, dtype=np.int64)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
