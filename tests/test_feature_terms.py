"""FitNets as a recipe term: cached teacher hints, trainable adapters, resumable training."""

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
from edgedistill.errors import RecipeError
from edgedistill.pipeline.run import run_pipeline
from edgedistill.students import build_model

FITNETS = (
    LossTermSpec("ce", 1.0),
    LossTermSpec("fitnets", 2.0, teacher_tap="stages.1", student_stage=1),
)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(n, 1, 8, 8)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=n))
    hints = np.tanh(x.numpy()[:, :, ::2, ::2].repeat(6, axis=1))  # [n, 6, 4, 4], learnable
    return x, y, hints.astype(np.float32)


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", {"in_channels": 1, "num_classes": 3, "widths": [4, 8]})


def test_fitnets_hint_loss_falls_and_adapter_lands_in_the_checkpoint(tmp_path: Path) -> None:
    x, y, hints = _data()
    settings = TrainSettings(epochs=4, batch_size=16, lr=0.05, terms=FITNETS)
    ckpt = tmp_path / "ckpt.pt"
    result = train_student(
        _student(), x, y, settings, teacher_features={"stages.1": hints}, checkpoint_path=ckpt
    )
    first, last = result.history[0]["fitnets"], result.history[-1]["fitnets"]
    assert last < 0.8 * first
    state = torch.load(ckpt, weights_only=True)
    adapter_keys = [k for k in state["objective"] if k.startswith("adapters.stages_1")]
    assert adapter_keys, state["objective"].keys()
    # The adapter is trained: its weights are in the optimiser (not only the student's).
    n_student = len(list(_student().parameters()))
    assert len(state["optimizer"]["param_groups"][0]["params"]) > n_student


def test_fitnets_run_resumes_bit_identical(tmp_path: Path) -> None:
    x, y, hints = _data()
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, terms=FITNETS)
    features = {"stages.1": hints}
    whole = _student()
    train_student(whole, x, y, settings, teacher_features=features)
    ckpt = tmp_path / "ckpt.pt"
    interrupted = _student()
    train_student(
        interrupted, x, y, settings, teacher_features=features, checkpoint_path=ckpt,
        stop_after_epoch=1,
    )  # fmt: skip
    resumed = _student()
    result = train_student(resumed, x, y, settings, teacher_features=features, checkpoint_path=ckpt)
    assert result.resumed_from_epoch == 1
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_fitnets_without_cached_hints_or_with_a_bad_stage_is_refused() -> None:
    x, y, hints = _data()
    settings = TrainSettings(epochs=1, batch_size=16, terms=FITNETS)
    with pytest.raises(ValueError, match=r"stages\.1"):
        train_student(_student(), x, y, settings)
    bad = TrainSettings(
        epochs=1,
        batch_size=16,
        terms=(LossTermSpec("fitnets", 1.0, teacher_tap="stages.1", student_stage=5),),
    )
    with pytest.raises(ValueError, match="student_stage 5"):
        train_student(_student(), x, y, bad, teacher_features={"stages.1": hints})


def _fitnets_recipe(tiny_recipe_dict: dict[str, Any], tmp_path: Path, tap: str) -> Path:
    recipe = dict(tiny_recipe_dict)
    recipe["distill"] = {
        **recipe["distill"],
        "terms": [
            {"name": "ce", "weight": 0.5},
            {"name": "kd", "weight": 0.5},
            {"name": "fitnets", "weight": 1.0, "teacher_tap": tap, "hint_size": 4},
        ],
    }
    path = tmp_path / "fitnets.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_with_fitnets_caches_pooled_teacher_hints(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    recipe = load_recipe(_fitnets_recipe(tiny_recipe_dict, tmp_path, "stages.1"))
    ctx = run_pipeline(recipe, tmp_path / "run", until="distill")
    hints = list((tmp_path / "run" / "cache").glob("teacher-features-*.npy"))
    assert len(hints) == 1
    cached = np.load(hints[0], mmap_mode="r")
    assert cached.shape[0] == 384 and cached.shape[2:] == (4, 4)  # pooled to hint_size
    log = (tmp_path / "run" / "distill" / "train_log.csv").read_text().splitlines()
    assert "fitnets" in log[0]
    assert ctx.manifests["distill"]["metrics"]["student_top1"] > 0


def test_recipe_naming_a_missing_teacher_layer_fails_clearly(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    recipe = load_recipe(_fitnets_recipe(tiny_recipe_dict, tmp_path, "stage9"))
    with pytest.raises(RecipeError, match="teacher_tap 'stage9' is not a layer"):
        run_pipeline(recipe, tmp_path / "run", until="distill")


def test_recipe_fitnets_without_tap_is_a_one_line_error(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    path = _fitnets_recipe(tiny_recipe_dict, tmp_path, "")
    with pytest.raises(RecipeError, match="teacher_tap"):
        load_recipe(path)
