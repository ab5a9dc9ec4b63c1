"""ONNX export with a dynamic batch dimension, and safe loading of ONNX files."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.artifacts import atomic_save
from edgedistill.errors import StageError, UnsafeFileError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    input_dtype: torch.dtype = torch.float32,
) -> Path:
    """Export ``model`` (put in eval mode) to ``path`` atomically.

    Uses the dynamo exporter (``torch.onnx.export(dynamo=True)``); TOOLCHAIN.md: it raises any
    opset below 18 to 18, so 18 is the default. The input is named ``input`` with shape
    [batch, *input_shape] (batch symbolic when ``dynamic_batch``) of ``input_dtype`` (int64 for
    token ids), the output ``logits``.
    """
    model = model.eval()
    # ones, not zeros: also a valid (non-padding) id for models that take int64 token ids
    example = torch.ones(2 if dynamic_batch else 1, *input_shape, dtype=input_dtype)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None

    def write(tmp: Path) -> None:
        # The exporter logs progress lines and warnings on success; keep the console clean and
        # surface the message only if export fails.
        sink = io.StringIO()
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            _quiet_logger("torch.onnx"),
            _quiet_logger("torch.export"),
        ):
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    _Named(model),
                    (example,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=dynamic_shapes,
                    external_data=False,
                    verbose=False,
                )
            except Exception as exc:
                raise StageError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
            if program is None:
                raise StageError(f"ONNX export of {type(model).__name__} returned nothing")
            program.save(str(tmp))
        _strip_stack_traces(tmp)

    atomic_save(path, write)
    return path


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node Python stack traces from the saved model.

    They name the absolute path of every source file, so the same model exported from two
    checkouts (or machines) differed byte-wise although every weight and op was equal; the
    bundle promises byte-identical models for the same recipe. The other debug metadata
    (module hierarchy, fx node) does not depend on the machine and stays.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = False
    for graph in _all_graphs(model):
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
                changed = True
    if changed:
        onnx.save(model, str(path))


def _all_graphs(model: Any) -> Iterator[Any]:
    """The main graph, every subgraph (If/Loop bodies) and every function body."""
    stack = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.g is not None and attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


class _Named(nn.Module):
    """Gives the exported graph a stable input argument name ``x``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@contextlib.contextmanager
def _quiet_logger(name: str):  # type: ignore[no-untyped-def]
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto in a graph and its subgraphs (If/Loop/Scan bodies), sparse included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def check_onnx_file(path: Path) -> None:
    """Refuse an ONNX model whose external-data references leave the model's folder.

    A model file names its external tensors by relative location; a crafted file could name
    ``../../etc/passwd`` or an absolute path and make a loader read (or a bundler copy) it.

    Raises:
        UnsafeFileError: on an absolute or escaping location.
    """
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise StageError(f"{path} is not a readable ONNX model: {exc}") from None
    folder = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UnsafeFileError(
                f"{path}: tensor '{tensor.name}' points outside the model folder ({location!r})"
            )
