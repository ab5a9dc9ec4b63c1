"""Trainer options: LR schedules, gradient clipping, early stopping (with resume), TensorBoard,
and the recipe fields that drive them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import RecipeError
from edgedistill.pipeline.run import run_pipeline
from edgedistill.students.vision import ConvNet


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float(), y


def _model() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(in_channels=1, num_classes=3, widths=(4, 8))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    # lr logged at the start of each of 2 epochs of 2 steps: cosine from 0.1 to 0 over 4 steps
    # is 0.1 then 0.1·(1 + cos(π/2))/2 = 0.05; constant stays 0.1.
    [("cosine", [0.1, 0.05]), ("constant", [0.1, 0.1])],
)
def test_lr_schedules(schedule: str, expected: list[float]) -> None:
    x, y = _data()
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.1, schedule=schedule)
    result = train_student(_model(), x, y, settings)
    assert [row["lr"] for row in result.history] == pytest.approx(expected)


def test_gradient_clipping_bounds_each_update() -> None:
    x, y = _data()
    # No momentum or weight decay: an SGD step moves the weights by exactly lr · clipped grad.
    settings = TrainSettings(
        epochs=1, batch_size=64, lr=1.0, momentum=0.0, weight_decay=0.0,
        schedule="constant", grad_clip=0.01,
    )  # fmt: skip
    model = _model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_student(model, x, y, settings)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(0.01, rel=1e-3)


def test_early_stopping_restores_the_best_epoch_and_stops() -> None:
    x, y = _data()
    scores = iter([50.0, 70.0, 60.0, 65.0, 90.0, 95.0])
    snapshots: list[torch.Tensor] = []

    def evaluate(m: torch.nn.Module) -> float:
        snapshots.append(m.classifier.weight.detach().clone())
        return next(scores)

    settings = TrainSettings(epochs=6, batch_size=32, early_stopping_patience=2)
    model = _model()
    result = train_student(model, x, y, settings, evaluate=evaluate)
    assert len(result.history) == 4  # epochs 3 and 4 did not beat epoch 2
    assert result.stopped_early and result.best_epoch == 2
    assert torch.equal(model.classifier.weight, snapshots[1])


def test_early_stopping_state_survives_a_resume(tmp_path: Path) -> None:
    x, y = _data()
    settings = TrainSettings(epochs=6, batch_size=32, early_stopping_patience=2)

    def scorer() -> Any:
        values = iter([50.0, 70.0, 60.0, 65.0, 90.0, 95.0])
        return lambda m: next(values)

    reference = _model()
    train_student(reference, x, y, settings, evaluate=scorer())
    ckpt = tmp_path / "ckpt.pt"
    first = scorer()
    train_student(_model(), x, y, settings, evaluate=first, checkpoint_path=ckpt,
                  fingerprint="f", stop_after_epoch=3)  # fmt: skip
    resumed = _model()
    # the scorer continues where the killed run stopped (epoch 4 -> 65)
    result = train_student(resumed, x, y, settings, evaluate=first, checkpoint_path=ckpt,
                           fingerprint="f")  # fmt: skip
    assert result.resumed_from_epoch == 3 and result.best_epoch == 2
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(epochs=1, schedule="step")
    with pytest.raises(ValueError, match="grad_clip"):
        TrainSettings(epochs=1, grad_clip=0.0)
    x, y = _data()
    with pytest.raises(ValueError, match="evaluate"):
        train_student(_model(), x, y, TrainSettings(epochs=1, early_stopping_patience=1))


def test_tensorboard_is_written_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    x, y = _data()
    train_student(_model(), x, y, TrainSettings(epochs=1), tensorboard_dir=tmp_path / "tb")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_recipe_early_stopping_uses_a_validation_split(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    recipe = {
        **tiny_recipe_dict,
        "distill": {**tiny_recipe_dict["distill"], "epochs": 3, "early_stopping_patience": 1,
                    "validation_fraction": 0.25, "grad_clip": 5.0, "schedule": "cosine"},
    }  # fmt: skip
    ctx = run_pipeline(
        Recipe.from_dict(recipe), tmp_path / "run", until="distill",
        console=Console(file=io.StringIO()),
    )  # fmt: skip
    metrics = ctx.manifests["distill"]["metrics"]
    assert 1 <= metrics["epochs"] <= 3
    assert 0 <= metrics["student_top1"] <= 100
    with pytest.raises(RecipeError, match="schedule"):
        Recipe.from_dict({**recipe, "distill": {"schedule": "step"}})
