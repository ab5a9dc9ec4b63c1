"""The loss-term registry: a term registered once (here, in this test module) is usable from a
recipe, through the trainer and the distill stage, with no list to edit; recipe errors name
the allowed values; every registered term declares what it reads."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.distill.objective import TEACHER_TERMS, LossTermSpec, Objective
from edgedistill.distill.terms import (
    NEEDS,
    STUDENT_OUTPUTS,
    TEACHER_LOGITS,
    TERMS,
    Term,
    TermBatch,
    TermConfig,
    register_term,
)
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import RecipeError
from edgedistill.students import build_model

BUILT_IN = {"ce", "kd", "dkd", "pskd", "fitnets", "layered", "comodo", "infonce", "l2"}


class L1Config(TermConfig):
    """Options of the toy term."""

    scale: float = Field(default=1.0, gt=0)


@register_term("test_l1")
class L1Term(Term[L1Config]):
    """A toy term: scale · mean |z_s − z_t| between student and teacher logits."""

    config = L1Config
    needs = frozenset({"logits", "teacher_logits"})

    def loss(self, batch: TermBatch, epoch: int, total_epochs: int) -> torch.Tensor:
        assert batch.logits is not None
        return self.options.scale * (batch.logits - batch.teacher[TEACHER_LOGITS]).abs().mean()


def _recipe(tiny_recipe_dict: dict[str, Any], terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {**tiny_recipe_dict, "distill": {**tiny_recipe_dict["distill"], "terms": terms}}


TOY_TERMS = [
    {"name": "ce", "weight": 0.5},
    {"name": "test_l1", "weight": 1.0, "scale": 2.0, "warmup_epochs": 2},
]


def _recipe_error(raw: dict[str, Any]) -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_term_registered_in_a_test_module_runs_from_a_recipe_through_the_trainer(
    tiny_recipe_dict: dict[str, Any],
) -> None:
    recipe = Recipe.from_dict(_recipe(tiny_recipe_dict, TOY_TERMS))
    toy = recipe.distill.terms[1]
    assert isinstance(toy, L1Config) and toy.scale == 2.0
    assert recipe.distill.model_dump()["terms"][1]["scale"] == 2.0  # dumped with its options
    assert "test_l1" in TEACHER_TERMS  # derived from its needs: the distill stage loads logits
    # What the distill stage does with the recipe's terms:
    specs = tuple(LossTermSpec(**t.model_dump()) for t in recipe.distill.terms)
    assert specs[1].scale == 2.0 and specs[1].weight_at(0) == 0.5
    assert LossTermSpec(**dataclasses.asdict(specs[1])) == specs[1]  # settings read back

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    loss, parts = Objective(specs, 8, 3)(s, y, torch.arange(8), t, epoch=1, total_epochs=3)
    expected = 0.5 * F.cross_entropy(s, y) + 1.0 * 2.0 * (s - t).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert list(parts) == ["ce", "test_l1"]

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(48, 1, 8, 8)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, size=48))
    teacher = rng.normal(size=(48, 3)).astype(np.float32)
    torch.manual_seed(0)
    model = build_model("convnet", {"in_channels": 1, "num_classes": 3, "widths": [4, 8]})
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, terms=specs)
    history = train_student(model, x, labels, settings, teacher_logits=teacher).history
    assert history[-1]["test_l1"] < history[0]["test_l1"]
    with pytest.raises(ValueError, match="teacher_logits"):
        train_student(model, x, labels, settings)


def test_the_distill_stage_runs_a_registered_term(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    from edgedistill.pipeline.run import run_pipeline

    recipe = Recipe.from_dict(_recipe(tiny_recipe_dict, TOY_TERMS))
    run_pipeline(recipe, tmp_path / "run", until="distill", console=Console(file=io.StringIO()))
    log = (tmp_path / "run" / "distill" / "train_log.csv").read_text().splitlines()
    assert log[0].split(",")[:4] == ["epoch", "loss", "ce", "test_l1"]


def test_recipe_checks_read_the_terms_needs(tiny_recipe_dict: dict[str, Any]) -> None:
    no_teacher = {k: v for k, v in _recipe(tiny_recipe_dict, TOY_TERMS).items() if k != "teacher"}
    assert "['test_l1'] need a teacher.card" in _recipe_error(no_teacher)


def test_unknown_term_names_and_options_are_one_line_errors_naming_the_allowed_values(
    tiny_recipe_dict: dict[str, Any],
) -> None:
    message = _recipe_error(_recipe(tiny_recipe_dict, [{"name": "l3", "weight": 1.0}]))
    assert "distill.terms.0: unknown loss term 'l3'; known: " in message
    assert all(name in message for name in [*BUILT_IN, "test_l1"])

    toy = {"name": "test_l1", "weight": 1.0, "alpha": 2.0}  # dkd's option, not the toy's
    message = _recipe_error(_recipe(tiny_recipe_dict, [toy]))
    assert message.endswith(
        "unknown key 'distill.terms.0.alpha' (allowed here: name, weight, temperature, "
        "final_temperature, warmup_epochs, scale)"
    )
    dkd = {"name": "dkd", "weight": 1.0, "scale": 2.0}
    message = _recipe_error(_recipe(tiny_recipe_dict, [dkd]))
    assert "unknown key 'distill.terms.0.scale'" in message and "alpha, beta)" in message
    message = _recipe_error(_recipe(tiny_recipe_dict, [{**TOY_TERMS[1], "scale": 0}]))
    assert "distill.terms.0.scale = 0: Input should be greater than 0" in message

    with pytest.raises(ValueError, match=r"allowed here: .*scale"):
        LossTermSpec("test_l1", 1.0, beta=8.0)
    with pytest.raises(ValueError, match=r"unknown loss term 'l3'; known: .*test_l1"):
        LossTermSpec("l3", 1.0)


def test_every_registered_term_declares_what_it_needs() -> None:
    assert BUILT_IN | {"test_l1"} <= set(TERMS.names())
    for name in TERMS.names():
        kind = TERMS.get(name)
        assert kind.name == name
        assert kind.needs and kind.needs <= NEEDS.keys(), name
        assert len(kind.needs & STUDENT_OUTPUTS.keys()) == 1, name
        assert issubclass(kind.config, TermConfig), name
        assert kind.loss is not Term.loss, f"{name} computes no loss"
    assert set(TEACHER_TERMS) == {
        n for n in TERMS.names() if "teacher_logits" in TERMS.get(n).needs
    }


def test_bad_declarations_are_refused_when_registered() -> None:
    class NoOutput(Term[TermConfig]):
        needs = frozenset({"teacher_logits"})

    class Unknown(Term[TermConfig]):
        needs = frozenset({"logits", "teacher_mood"})

    with pytest.raises(ValueError, match="exactly one of logits, features"):
        register_term("test_no_output")(NoOutput)
    with pytest.raises(ValueError, match=r"unknown needs \['teacher_mood'\]"):
        register_term("test_unknown_need")(Unknown)
    with pytest.raises(ValueError, match="already registered"):
        register_term("kd")(L1Term)
    assert "test_no_output" not in TERMS and "test_unknown_need" not in TERMS
