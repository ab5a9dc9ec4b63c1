"""TensorRT engines from ONNX (the ``[trt]`` extra, TensorRT 10 Python API).

An engine is tied to the GPU, the TensorRT version and the build options, so it is built on the
machine that runs it and cached under a key of everything that changes it
(:func:`engine_cache_key`): the ONNX file's sha256, TensorRT version, GPU name, compute
capability, precision and the optimization profile. A second build with the same key loads the
cached file; a new key writes a new file atomically, never half an engine.

Precision (:func:`precision_plan`): FP32 sets no flag, FP16 sets ``FP16``, INT8 needs the
quantize stage's QDQ model and sets ``INT8`` (+ ``FP16`` for the layers TensorRT keeps in
float). edgedistill never calibrates inside TensorRT: the QDQ model carries the scales, so an
INT8 request for a model without Q/DQ nodes is refused.

The pure pieces (key, shape profile, precision plan, parser-error line) are separate functions
and are tested on CPU; :func:`build_engine` needs ``tensorrt`` and a CUDA GPU.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.artifacts import atomic_write_bytes, atomic_write_json, sha256_file, sha256_json
from edgedistill.errors import MissingDependencyError, StageError

PRECISIONS = ("fp32", "fp16", "int8")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
Shape = tuple[int, ...]


@dataclass(frozen=True)
class EngineInfo:
    """A built (or reused) engine.

    Attributes:
        path: The serialized engine (``.engine``).
        key: Its cache key (:func:`engine_cache_key`).
        build_seconds: Wall time of the build; 0.0 when the cached engine was reused.
        cached: Whether the engine came from the cache.
    """

    path: Path
    key: str
    build_seconds: float
    cached: bool


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str | Sequence[int],
    precision: str,
    profile: Any,
) -> str:
    """Hex sha256 over a canonical JSON of everything an engine depends on.

    Args:
        onnx_sha256: sha256 of the ONNX file's bytes.
        trt_version: ``tensorrt.__version__``.
        gpu_name: e.g. ``"NVIDIA H200"`` or ``"Orin"``.
        compute_capability: ``"9.0"`` or ``(9, 0)`` (both give the same key).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        profile: The optimization profile, e.g. ``{"input": ((1, 3, 224, 224), ...)}`` or the
            (min, opt, max) tuple of :func:`shape_profile`; tuples and lists hash alike.
    """
    if not isinstance(compute_capability, str):
        compute_capability = ".".join(str(int(v)) for v in compute_capability)
    canonical = json.loads(json.dumps(profile, sort_keys=True))  # tuples -> lists, keys sorted
    return sha256_json(
        {
            "onnx_sha256": onnx_sha256,
            "tensorrt": trt_version,
            "gpu": gpu_name,
            "compute_capability": compute_capability,
            "precision": precision,
            "profile": canonical,
        }
    )


def shape_profile(
    input_shape: Sequence[int], batch_sizes: Iterable[int]
) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) input shapes of a dynamic-batch optimization profile.

    Args:
        input_shape: The per-sample shape, without the batch dimension (e.g. ``(1, 28, 28)``).
        batch_sizes: The batches the engine will run; repeats count (an app's observed batches).

    Returns:
        ``min`` at the smallest batch, ``opt`` at the most common one (ties go to the
        smallest, the latency case TensorRT should tune for), ``max`` at the largest.

    Raises:
        StageError: no batch sizes, or a batch or dimension below 1.
    """
    batches = [int(b) for b in batch_sizes]
    dims = tuple(int(d) for d in input_shape)
    if not batches or any(b < 1 for b in batches):
        raise StageError(f"TensorRT profile: batch sizes must be positive, got {batches}")
    if any(d < 1 for d in dims):
        raise StageError(f"TensorRT profile: the per-sample shape must be static, got {list(dims)}")
    counts = Counter(batches)
    opt = min(counts, key=lambda b: (-counts[b], b))
    return (min(batches), *dims), (opt, *dims), (max(batches), *dims)


def precision_plan(precision: str, onnx_has_qdq: bool) -> tuple[str, ...]:
    """The ``tensorrt.BuilderFlag`` names to set for ``precision``.

    Raises:
        StageError: an unknown precision; INT8 from a model without Q/DQ nodes (we never
            calibrate inside TensorRT); FP32/FP16 from a QDQ model (it is an INT8 model).
    """
    if precision not in PRECISIONS:
        raise StageError(f"TensorRT precision must be one of {list(PRECISIONS)}, not {precision!r}")
    if precision == "int8":
        if not onnx_has_qdq:
            raise StageError(
                "TensorRT int8 needs a QDQ model (the quantize stage's *-int8.onnx): edgedistill "
                "never calibrates inside TensorRT; build the FP32 model as fp32 or fp16"
            )
        return ("INT8", "FP16")
    if onnx_has_qdq:
        raise StageError(
            f"this ONNX model has Q/DQ nodes, so it is an INT8 model: build it as int8, "
            f"not {precision}"
        )
    return ("FP16",) if precision == "fp16" else ()


def onnx_has_qdq(path: Path) -> bool:
    """Whether the ONNX model (any subgraph included) holds QuantizeLinear/DequantizeLinear."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def walk(graph: Any) -> bool:
        for node in graph.node:
            if node.op_type in QDQ_OPS:
                return True
            for attr in node.attribute:
                if attr.HasField("g") and walk(attr.g):
                    return True
                if any(walk(sub) for sub in attr.graphs):
                    return True
        return False

    return walk(model.graph)


def asymmetric_quantizers(path: Path) -> list[str]:
    """Names of QuantizeLinear nodes whose zero point is not a constant int8 zero.

    TensorRT supports symmetric INT8 quantization only (int8 zero point 0); ONNX Runtime's
    default QDQ activations are uint8 with a zero point (``quantize.activations: uint8``).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    bad = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            continue  # no zero point: uint8 with zero 0 per the spec (TensorRT refuses uint8)
        if zero.dtype.name != "int8" or zero.any():
            bad.append(node.name or node.output[0])
    return bad


def onnx_input(path: Path) -> tuple[str, tuple[int | None, ...], str]:
    """Name, shape (None for symbolic dims) and element type name of the model's first input."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        return value.name, dims, onnx.TensorProto.DataType.Name(tensor.elem_type)
    raise StageError(f"{path}: the ONNX model has no input")


def parser_error_line(onnx_path: Path, errors: Sequence[Any]) -> str:
    """One line for a failed ONNX parse, naming the first node TensorRT could not take.

    ``errors`` are TensorRT ``IParserError`` objects (``desc()``, ``node()``, and in TensorRT
    10 ``node_name()`` / ``node_operator()``); only what an error offers is used.
    """
    if not errors:
        return f"TensorRT could not parse {onnx_path} (no parser error reported)"
    first = errors[0]

    def ask(method: str) -> Any:
        fn = getattr(first, method, None)
        try:
            return fn() if callable(fn) else None
        except Exception:  # an older binding without the field
            return None

    desc = " ".join(str(ask("desc") or "unknown error").split())
    where = []
    op, node_name, index = ask("node_operator"), ask("node_name"), ask("node")
    if op:
        where.append(f"op {op}")
    if node_name:
        where.append(f"'{node_name}'")
    if isinstance(index, int) and index >= 0:
        where.append(f"#{index}")
    node = f" at node {' '.join(where)}" if where else ""
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"TensorRT cannot build {onnx_path.name}{node}: {desc}{more}"


def import_tensorrt(purpose: str = "TensorRT engines") -> Any:
    """``import tensorrt`` or a one-line :class:`MissingDependencyError` naming ``[trt]``."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("tensorrt", "trt", purpose) from None
    return tensorrt


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(name, compute capability "major.minor") of a CUDA device, for the cache key."""
    import torch

    from edgedistill.runtime.torch_cuda_runner import require_cuda

    require_cuda("a TensorRT build")
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def build_engine(
    onnx_path: Path,
    engine_dir: Path,
    *,
    precision: str = "fp32",
    batch_sizes: Sequence[int] = (1,),
    workspace_mb: int = 1024,
    timing_cache_path: Path | None = None,
) -> EngineInfo:
    """Build (or reuse) a TensorRT engine for ``onnx_path`` with a dynamic-batch profile.

    Args:
        onnx_path: FP32 ONNX model, or the quantize stage's QDQ model for ``precision="int8"``.
        engine_dir: Where engines are cached (``<stem>-<precision>-<key[:16]>.engine``, plus a
            ``.json`` beside it recording what the key covers).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (see :func:`precision_plan`).
        batch_sizes: Batches the engine must run (:func:`shape_profile`).
        workspace_mb: Builder workspace memory limit.
        timing_cache_path: Read before and written after the build (shared between builds:
            repeated layers are not timed again). None: no persistent timing cache.

    Raises:
        MissingDependencyError: ``tensorrt`` not installed, or no CUDA GPU.
        StageError: a node TensorRT cannot parse (one line naming it), a failed build, or a
            precision the model does not support.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    from edgedistill.export.onnx import check_onnx_file

    check_onnx_file(onnx_path)
    name, dims, _ = onnx_input(onnx_path)
    flags = precision_plan(precision, onnx_has_qdq(onnx_path))
    if precision == "int8" and (asymmetric := asymmetric_quantizers(onnx_path)):
        raise StageError(
            f"{onnx_path.name}: TensorRT needs symmetric int8 Q/DQ, but {len(asymmetric)} "
            f"quantizers (first: {asymmetric[0]}) have a uint8 or non-zero zero point; set "
            "quantize.activations: int8-symmetric (the GPU target profiles do) and re-run"
        )
    profile = shape_profile(_sample_shape(onnx_path, dims), batch_sizes)
    gpu_name, capability = gpu_identity()
    key = engine_cache_key(
        sha256_file(onnx_path), trt.__version__, gpu_name, capability, precision, {name: profile}
    )
    engine_dir = Path(engine_dir)
    path = engine_dir / f"{onnx_path.stem}-{precision}-{key[:16]}.engine"
    if path.is_file():
        return EngineInfo(path, key, 0.0, True)
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise StageError(parser_error_line(onnx_path, errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(name, *profile)
    config.add_optimization_profile(opt_profile)
    cache_bytes = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        cache_bytes = Path(timing_cache_path).read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, False)  # (cache, ignore_mismatch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StageError(
            f"TensorRT could not build {onnx_path.name} as {precision} (see the log above)"
        )
    engine = bytes(serialized)
    atomic_write_bytes(path, engine)  # never half an engine under the final name
    if timing_cache_path is not None:
        atomic_write_bytes(Path(timing_cache_path), bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - started
    record = {
        "onnx": onnx_path.name,
        "tensorrt": trt.__version__,
        "gpu": gpu_name,
        "compute_capability": capability,
        "precision": precision,
        "flags": list(flags),
        "profile": {name: [list(s) for s in profile]},
        "key": key,
        "build_seconds": round(seconds, 3),
    }
    atomic_write_json(path.with_suffix(".json"), record)
    return EngineInfo(path, key, seconds, False)


def _sample_shape(onnx_path: Path, dims: tuple[int | None, ...]) -> Shape:
    """The per-sample input shape (batch dimension dropped); every other dim must be static."""
    if len(dims) < 1:
        raise StageError(f"{onnx_path}: the input has no batch dimension")
    sample = dims[1:]
    if any(d is None for d in sample):
        shown = ["N", *("?" if d is None else d for d in sample)]
        raise StageError(
            f"{onnx_path}: TensorRT profiles here vary the batch only; input shape is {shown}"
        )
    return tuple(int(d) for d in sample if d is not None)
