"""The scheduled, weighted objective: terms against their loss functions, schedules by hand,
PS-KD memory through training and resume, and recipes that use the new terms."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.distill.dkd import dkd_loss
from edgedistill.distill.kd import kd_loss
from edgedistill.distill.objective import LossTermSpec, Objective
from edgedistill.distill.pskd import pskd_alpha, pskd_loss
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import RecipeError
from edgedistill.pipeline.run import run_pipeline
from edgedistill.students.vision import ConvNet


def _batch(seed: int = 0, b: int = 6, k: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, k, generator=g),
        torch.randn(b, k, generator=g) * 2,
        torch.randint(0, k, (b,), generator=g),
        torch.arange(b),
    )


def test_weight_warmup_and_temperature_decay_by_hand() -> None:
    term = LossTermSpec("kd", 0.9, temperature=6.0, final_temperature=2.0, warmup_epochs=3)
    assert [term.weight_at(e) for e in range(5)] == pytest.approx([0.3, 0.6, 0.9, 0.9, 0.9])
    # 5 epochs: 6 → 2 linearly, i.e. steps of 1.0
    assert [term.temperature_at(e, 5) for e in range(5)] == pytest.approx([6, 5, 4, 3, 2])
    assert LossTermSpec("kd", 1.0).temperature_at(3, 5) == 4.0


def test_bad_terms_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown loss term"):
        LossTermSpec("mse", 1.0)
    with pytest.raises(ValueError, match="teacher_tap"):
        LossTermSpec("fitnets", 1.0)
    with pytest.raises(ValueError, match="transforms"):
        LossTermSpec("layered", 1.0, transforms="flip")
    with pytest.raises(ValueError):
        LossTermSpec("kd", -1.0)
    with pytest.raises(ValueError, match="unique"):
        Objective((LossTermSpec("ce", 1.0), LossTermSpec("ce", 2.0)), 4, 3)


def test_ce_plus_kd_plus_dkd_is_the_weighted_sum_of_the_loss_functions() -> None:
    s, t, y, idx = _batch()
    terms = (
        LossTermSpec("ce", 0.2),
        LossTermSpec("kd", 0.5, temperature=3.0),
        LossTermSpec("dkd", 0.3, temperature=2.0, alpha=1.0, beta=4.0),
    )
    loss, parts = Objective(terms, 6, 4)(s, y, idx, t, epoch=0, total_epochs=3)
    expected = (
        0.2 * F.cross_entropy(s, y)
        + 0.5 * kd_loss(s, t, temperature=3.0)
        + 0.3 * dkd_loss(s, t, y, alpha=1.0, beta=4.0, temperature=2.0)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"ce", "kd", "dkd"}
    assert parts["kd"] == pytest.approx(kd_loss(s, t, temperature=3.0).item(), rel=1e-6)


def test_teacher_terms_need_teacher_logits() -> None:
    s, _, y, idx = _batch()
    objective = Objective((LossTermSpec("kd", 1.0),), 6, 4)
    assert objective.needs_teacher
    with pytest.raises(ValueError, match="needs teacher logits"):
        objective(s, y, idx, None, 0, 2)
    assert not Objective((LossTermSpec("ce", 1.0), LossTermSpec("kd", 0.0)), 6, 4).needs_teacher


def test_pskd_uses_labels_first_then_previous_epoch_predictions() -> None:
    s0, _, y, idx = _batch(seed=1)
    objective = Objective((LossTermSpec("pskd", 1.0, alpha_T=0.8),), 6, 4)
    loss0, _ = objective(s0, y, idx, None, epoch=0, total_epochs=4)
    assert loss0.item() == pytest.approx(F.cross_entropy(s0, y).item(), rel=1e-6)
    remembered = F.softmax(s0, dim=-1)
    s1 = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    loss1, _ = objective(s1, y, idx, None, epoch=1, total_epochs=4)
    alpha = pskd_alpha(1, 4, alpha_T=0.8)
    assert alpha == pytest.approx(0.4)
    expected = pskd_loss(s1, y, remembered, alpha=alpha)
    assert loss1.item() == pytest.approx(expected.item(), rel=1e-5)
    state = objective.state()["pskd_memory"]
    assert torch.allclose(state, F.softmax(s1, dim=-1), atol=1e-6)
    other = Objective((LossTermSpec("pskd", 1.0),), 6, 4)
    other.load_state(objective.state())
    assert torch.equal(other.state()["pskd_memory"], state)


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def test_pskd_training_resumes_bit_identically(tmp_path: Path) -> None:
    x, y = _data()
    settings = TrainSettings(epochs=3, batch_size=32, seed=3, terms=(LossTermSpec("pskd", 1.0),))

    def model() -> ConvNet:
        torch.manual_seed(0)
        return ConvNet(in_channels=1, num_classes=3, widths=(4, 8))

    reference = model()
    train_student(reference, x, y, settings)
    ckpt = tmp_path / "ckpt.pt"
    train_student(
        model(), x, y, settings, checkpoint_path=ckpt, fingerprint="f", stop_after_epoch=2
    )
    resumed = model()
    result = train_student(resumed, x, y, settings, checkpoint_path=ckpt, fingerprint="f")
    assert result.resumed_from_epoch == 2
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert "pskd" in result.history[-1]


def test_recipe_accepts_dkd_and_pskd_terms_and_runs_distill(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    recipe = {
        **tiny_recipe_dict,
        "distill": {
            **tiny_recipe_dict["distill"],
            "terms": [
                {"name": "ce", "weight": 0.5},
                {"name": "dkd", "weight": 0.5, "beta": 2.0, "warmup_epochs": 2},
                {"name": "pskd", "weight": 0.2},
            ],
        },
    }
    ctx = run_pipeline(
        Recipe.from_dict(recipe), tmp_path / "run", until="distill",
        console=Console(file=io.StringIO()),
    )  # fmt: skip
    log = (tmp_path / "run" / "distill" / "train_log.csv").read_text().splitlines()
    assert log[0].split(",")[:5] == ["epoch", "loss", "ce", "dkd", "pskd"]
    assert ctx.manifests["distill"]["metrics"]["epochs"] == 2
    bad = {**recipe, "distill": {"terms": [{"name": "dkd", "weight": 1, "beta": -1}]}}
    with pytest.raises(RecipeError, match="beta"):
        Recipe.from_dict(bad)
    assert np.isfinite(float(log[-1].split(",")[1]))
