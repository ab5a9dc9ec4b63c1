"""Run-directory behaviour: partial re-runs after a config change, resume after SIGKILL,
atomic artifacts, and the slow smoke run on the real Fashion-MNIST."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from edgedistill.artifacts import sha256_file
from edgedistill.config import Recipe, load_recipe
from edgedistill.pipeline.run import STAGES, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


def test_changing_one_section_reruns_only_downstream_stages(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    out = tmp_path / "run"
    run_pipeline(Recipe.from_dict(tiny_recipe_dict), out, until="quantize", console=_quiet())
    changed = {**tiny_recipe_dict, "quantize": {"calibration_samples": 32}}
    ctx = run_pipeline(Recipe.from_dict(changed), out, until="quantize", console=_quiet())
    assert ctx.skipped == ["pretrain", "distill", "prune", "export"]
    assert ctx.executed == ["quantize"]


def test_tampered_artifact_is_rebuilt(tmp_path: Path, tiny_recipe_dict: dict[str, Any]) -> None:
    out = tmp_path / "run"
    run_pipeline(Recipe.from_dict(tiny_recipe_dict), out, until="export", console=_quiet())
    onnx = out / "export" / "student.onnx"
    original = sha256_file(onnx)
    onnx.write_bytes(b"not a model")
    ctx = run_pipeline(Recipe.from_dict(tiny_recipe_dict), out, until="export", console=_quiet())
    assert ctx.executed == ["export"]
    assert sha256_file(onnx) == original  # export is deterministic


def test_no_temporary_files_left_behind(tmp_path: Path, tiny_recipe_dict: dict[str, Any]) -> None:
    out = tmp_path / "run"
    run_pipeline(Recipe.from_dict(tiny_recipe_dict), out, until="quantize", console=_quiet())
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_run_killed_mid_distill_resumes_to_the_same_weights(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    recipe = {**tiny_recipe_dict, "distill": {**tiny_recipe_dict["distill"], "epochs": 12}}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))

    reference = tmp_path / "uninterrupted"
    run_pipeline(load_recipe(recipe_file), reference, until="distill", console=_quiet())

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgedistill", "distill", str(recipe_file), "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint, manifest = (
        killed / "distill" / "checkpoint.pt",
        killed / "distill" / "manifest.json",
    )
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the training never wrote a checkpoint before being killed"
    assert not manifest.exists(), "the stage finished before the kill; nothing was resumed"

    ctx = run_pipeline(load_recipe(recipe_file), killed, until="distill", console=_quiet())
    assert ctx.executed == ["distill"]
    got = killed / "distill" / "student.safetensors"
    want = reference / "distill" / "student.safetensors"
    assert sha256_file(got) == sha256_file(want)
    history = (killed / "distill" / "train_log.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 12


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_smoke_recipe_on_real_fashion_mnist(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    ctx = run_pipeline(
        load_recipe(ROOT / "students" / "fashion_mnist_smoke.yaml"), out, console=_quiet()
    )
    assert ctx.executed == list(STAGES)
    summary = json.loads((out / "summary.json").read_text())
    rows = {m["name"]: m for m in summary["models"]}
    assert rows["teacher"]["accuracy"] > 90
    assert rows["student"]["params"] * 20 <= rows["teacher"]["params"]
    example = subprocess.run(
        [sys.executable, str(out / "bundle" / "app" / "example.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert example.stdout.count("image ") == 8
