"""Any ONNX model as a frozen teacher: loading, safety, graph-derived size, and the full chain."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console

from edgedistill.artifacts import sha256_file
from edgedistill.config import Recipe
from edgedistill.errors import UnsafeFileError
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import count_macs, count_params
from edgedistill.pipeline.run import run_pipeline
from edgedistill.students import build_model
from edgedistill.teachers import load_teacher
from edgedistill.teachers.onnx_teacher import onnx_macs, onnx_param_count


@pytest.fixture
def onnx_card(tmp_path: Path, tiny_teacher_card: Path) -> Path:
    """The tiny torch teacher exported to ONNX, with an ``arch: onnx`` card."""
    torch_teacher, card = load_teacher(tiny_teacher_card)
    folder = tmp_path / "onnx-teacher"
    path = export_onnx(torch_teacher.model.to_deploy(), (1, 16, 16), folder / "teacher.onnx")
    raw = {**card.raw, "arch": "onnx", "config": {"threads": 1}, "weights": "teacher.onnx",
           "sha256": sha256_file(path)}  # fmt: skip
    card_path = folder / "card.yaml"
    card_path.write_text(yaml.safe_dump(raw))
    return card_path


def test_onnx_teacher_matches_the_torch_teacher(onnx_card: Path, tiny_teacher_card: Path) -> None:
    onnx_teacher, _ = load_teacher(onnx_card)
    torch_teacher, _ = load_teacher(tiny_teacher_card)
    x = torch.randn(5, 1, 16, 16)
    assert torch.allclose(onnx_teacher(x), torch_teacher(x), atol=1e-4)
    assert not onnx_teacher.training


def test_onnx_size_counters_by_hand(tmp_path: Path) -> None:
    # Conv 1->4 (3x3, pad 1) on 6x6 then global pool and Linear 4->2:
    # conv: 36 positions · 4 outputs · 9 = 1296 MACs; linear: 4·2 = 8 MACs.
    # parameters (BN folded into the conv by to_deploy): 36 + 4 bias + 8 + 2 = 50.
    model = build_model("convnet", {"in_channels": 1, "num_classes": 2, "widths": [4]}).eval()
    # non-trivial BN statistics, so the folded conv bias is non-zero and stays in the graph
    model.stages[0].layers[0][1].running_mean.fill_(0.5)
    path = export_onnx(model.to_deploy(), (1, 6, 6), tmp_path / "m.onnx")
    assert onnx_macs(path, (1, 6, 6)) == 1296 + 8
    assert onnx_param_count(path) == 50


def test_onnx_card_refuses_other_formats_and_bad_hashes(onnx_card: Path) -> None:
    raw = yaml.safe_load(onnx_card.read_text())
    bad = onnx_card.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "weights": "teacher.safetensors"}))
    (onnx_card.parent / "teacher.safetensors").write_bytes(b"x")
    with pytest.raises(UnsafeFileError, match=r"\.onnx"):
        load_teacher(bad)
    bad.write_text(yaml.safe_dump({**raw, "sha256": "0" * 64}))
    with pytest.raises(UnsafeFileError, match="sha256"):
        load_teacher(bad)


def test_full_chain_with_an_onnx_teacher(
    tmp_path: Path, onnx_card: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    recipe = {**tiny_recipe_dict, "teacher": {"card": str(onnx_card)}}
    out = tmp_path / "run"
    run_pipeline(Recipe.from_dict(recipe), out, console=Console(file=io.StringIO()))
    summary = json.loads((out / "summary.json").read_text())
    rows = {m["name"]: m for m in summary["models"]}
    teacher, _ = load_teacher(onnx_card)
    assert rows["teacher"]["params"] == count_params(teacher.model) > 0
    assert rows["teacher"]["macs"] == count_macs(teacher.model, (1, 16, 16)) > 0
    assert "torch" not in rows["teacher"]["latency_ms"]  # no torch form to time
    assert any("vs teacher (onnxruntime)" in k for k in summary["speedups"])
    assert sha256_file(out / "export" / "teacher.onnx") == sha256_file(
        onnx_card.parent / "teacher.onnx"
    )
