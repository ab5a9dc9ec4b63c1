"""End-to-end chain on a tiny dataset: every stage, skipping, resuming, summary contents."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.pipeline.run import STAGES, run_pipeline


def _recipe(d: dict[str, Any]) -> Recipe:
    return Recipe.from_dict(d)


def test_full_chain_then_rerun_skips_everything(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    out = tmp_path / "run"
    console = Console(file=io.StringIO(), force_terminal=False)
    ctx = run_pipeline(_recipe(tiny_recipe_dict), out, console=console)
    assert ctx.executed == list(STAGES)
    summary = json.loads((out / "summary.json").read_text())
    names = [m["name"] for m in summary["models"]]
    assert names == ["teacher", "student", "student-pruned", "student-int8", "student-pruned-int8"]
    rows = {m["name"]: m for m in summary["models"]}
    for row in rows.values():
        assert set(row) >= {"name", "params", "macs", "size_bytes", "accuracy", "latency_ms"}
        assert row["latency_ms"]["onnxruntime"]["p50"] > 0
        assert 0 <= row["accuracy"] <= 100
    assert rows["student-pruned"]["macs"] <= 0.7 * rows["student"]["macs"]
    assert rows["student-pruned"]["size_bytes"] < rows["student"]["size_bytes"]
    assert "torch" in rows["teacher"]["latency_ms"]
    for stage in STAGES:
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert manifest["fingerprint"] and "libraries" in manifest["environment"]
    bundle = out / "bundle" / "app"
    assert {
        "model.onnx",
        "model-int8.onnx",
        "manifest.json",
        "example.py",
        "samples.npz",
        "README.md",
    } <= {p.name for p in bundle.iterdir()}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.onnx", "model-int8.onnx", "example.py", "samples.npz"}
    assert (
        manifest["input"]["normalization"]["mean"]
        and manifest["labels"] == tiny_recipe_dict["data"]["labels"]
    )
    example = subprocess.run(
        [sys.executable, str(bundle / "example.py")], capture_output=True, text=True, check=True
    )
    assert example.stdout.count("; true: ") == 8
    for report in ("report.md", "report.html", "accuracy_vs_latency.png"):
        assert (out / "report" / report).stat().st_size > 0

    again = run_pipeline(_recipe(tiny_recipe_dict), out, console=console)
    assert again.executed == [] and again.skipped == list(STAGES)
