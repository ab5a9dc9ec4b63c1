"""Layered self-distillation as a recipe term: the trainer, the distill stage, resumption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from edgedistill.config import load_recipe
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.pipeline.run import run_pipeline
from edgedistill.students import build_model
from edgedistill.students.io import load_model
from edgedistill.students.multi_exit import MultiExitStudent


def _student(transforms: int, in_channels: int = 1) -> MultiExitStudent:
    torch.manual_seed(0)
    base = build_model(
        "convnet", {"in_channels": in_channels, "num_classes": 3, "widths": [4, 8, 8]}
    )
    return MultiExitStudent(base, num_transforms=transforms)


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    x[:, 0, :, 0] += 2.0 * y[:, None]  # a learnable, rotation-sensitive cue
    return torch.from_numpy(x), torch.from_numpy(y)


def test_layered_term_trains_every_exit_and_resumes_bit_identical(tmp_path: Path) -> None:
    x, y = _data()
    term = LossTermSpec("layered", 1.0, transforms="rotate4", temperature=3.0, feature_weight=0.1)
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, terms=(term,))
    whole = _student(4)
    result = train_student(whole, x, y, settings)
    assert result.history[-1]["layered"] < result.history[0]["layered"]
    ckpt = tmp_path / "ckpt.pt"
    train_student(_student(4), x, y, settings, checkpoint_path=ckpt, stop_after_epoch=1)
    resumed = _student(4)
    train_student(resumed, x, y, settings, checkpoint_path=ckpt)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_layered_term_on_a_student_without_exits_or_the_wrong_head_fails_clearly() -> None:
    x, y = _data()
    term = LossTermSpec("layered", 1.0, transforms="rotate4")
    settings = TrainSettings(epochs=1, batch_size=16, terms=(term,))
    with pytest.raises(ValueError, match="forward_exits"):
        train_student(build_model("convnet", {"in_channels": 1, "num_classes": 3}), x, y, settings)
    with pytest.raises(ValueError, match="num_transforms=4"):
        train_student(_student(1), x, y, settings)


def test_distill_stage_with_layered_term_saves_the_plain_student_and_exit_accuracies(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    recipe = dict(tiny_recipe_dict)
    recipe["student"] = {"arch": "convnet", "config": {"widths": [8, 16, 16]}}
    recipe["distill"] = {
        **recipe["distill"],
        "terms": [{"name": "layered", "weight": 1.0, "transforms": "rotate4"}],
    }
    path = tmp_path / "layered.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ctx = run_pipeline(load_recipe(path), tmp_path / "run", until="distill")
    metrics = ctx.manifests["distill"]["metrics"]
    assert len(metrics["exit_top1"]) == 3
    assert metrics["exit_top1"][-1] == pytest.approx(metrics["student_top1"], abs=0.01)
    model = load_model(tmp_path / "run" / "distill", "student")
    assert not any("heads" in name for name, _ in model.named_modules())
    k = len(tiny_recipe_dict["data"]["labels"])
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, k)  # K classes, not K x 4
    # No teacher term: the teacher ran on the test split (for its reported accuracy) only.
    assert len(list((tmp_path / "run" / "cache").glob("teacher-logits-*.npy"))) == 1


def test_early_exits_are_exported_verified_and_profiled_per_exit(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    recipe = dict(tiny_recipe_dict)
    recipe["student"] = {"arch": "convnet", "config": {"widths": [8, 16, 16]}, "early_exits": True}
    recipe["distill"] = {
        **recipe["distill"],
        "terms": [{"name": "layered", "weight": 1.0, "transforms": "none"}],
    }
    recipe["profile"] = {**recipe["profile"], "runs": 100, "warmup": 1}
    path = tmp_path / "exits.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ctx = run_pipeline(load_recipe(path), tmp_path / "run", until="distill")
    metrics = ctx.manifests["distill"]["metrics"]
    exits = metrics["exits"]
    assert [row["exit"] for row in exits] == [0, 1, 2]
    assert [row["top1"] for row in exits] == pytest.approx(metrics["exit_top1"], abs=0.01)
    assert exits[0]["macs"] < exits[1]["macs"] < exits[2]["macs"]
    assert all(row["p50_ms"] > 0 for row in exits)
    folder = tmp_path / "run" / "distill" / "exits"
    assert {"student-exits.onnx", "exit0.onnx", "exit2.onnx", "exits.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert "exit0.onnx" in str(ctx.manifests["distill"]["outputs"])
