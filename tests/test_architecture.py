"""The package's shape: no import cycle, libraries never import the pipeline, one bundle
writer, one parity check, one INT8-or-FP32 decision, no stage dispatched by name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "edgedistill"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Module-level imports of edgedistill modules (lazy imports inside functions excluded)."""
    deps: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgedistill"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                deps.add(full if full in mods else str(node.module))
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("edgedistill")}
    return {d for d in deps if d in mods and d != "edgedistill"}


def test_no_import_cycle() -> None:
    mods = _modules()
    graph = {name: _imports(path, mods) for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_libraries_never_import_the_pipeline() -> None:
    mods = _modules()
    offenders = []
    for name, path in mods.items():
        # The orchestration on top: the command line and the Python API that mirrors it.
        top = ("edgedistill.pipeline", "edgedistill.cli", "edgedistill.api")
        if name.startswith(top) or name == "edgedistill":
            continue
        text = path.read_text()
        if "edgedistill.pipeline" in text:
            offenders.append(name)
    assert offenders == []


def test_one_bundle_writer_one_parity_check_one_precision_decision() -> None:
    sources = {name: path.read_text() for name, path in _modules().items()}
    writers = [n for n, s in sources.items() if "def write_" in s and "bundle(" in s]
    assert writers == ["edgedistill.export.bundle"], writers
    parity = [n for n, s in sources.items() if "differs from torch by" in s]
    assert parity == ["edgedistill.runtime.compare"], parity
    decisions = [n for n, s in sources.items() if '"model-int8.onnx"' in s]
    assert decisions == ["edgedistill.pipeline.stages.bundle"], decisions


def test_stages_are_not_dispatched_by_name() -> None:
    for path in ROOT.rglob("*.py"):
        assert 'f"stage_{' not in path.read_text(), path
