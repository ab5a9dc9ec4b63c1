"""Recipe terms for RKD and attention transfer, and DINO as a label-free ``pretrain`` stage.

Parsing and one-line errors; each term's value against its paper formula computed by hand;
the distill stage with each term on the smoke recipe (real Fashion-MNIST and its teacher, cut
to a few hundred images and one epoch); a DINO pretrain stage that resumes, then distill from
its weights.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from edgedistill.config import Recipe
from edgedistill.data import write_idx
from edgedistill.data.image import read_idx
from edgedistill.distill.attention import ATTerm
from edgedistill.distill.rkd import RKDTerm
from edgedistill.distill.terms import TermBatch, parse_term
from edgedistill.errors import RecipeError
from edgedistill.pipeline.run import run_pipeline
from edgedistill.pipeline.stages.pretrain import dino_augment
from edgedistill.students.io import load_model

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
AT_PAIRS = [[1, "stages.1"], [2, "stages.2"]]


def _quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


@pytest.fixture(scope="module")
def smoke_dict(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """students/fashion_mnist_smoke.yaml on 320 real training and 200 real test images."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    folder = tmp_path_factory.mktemp("fashion-subset")
    for split, n in (("train", 320), ("t10k", 200)):
        images = read_idx(FASHION / f"{split}-images-idx3-ubyte.gz")[:n]
        labels = read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz")[:n]
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    raw = yaml.safe_load((ROOT / "students" / "fashion_mnist_smoke.yaml").read_text())
    raw["data"] = {**raw["data"], "path": str(folder), "train_limit": None}
    raw["teacher"]["card"] = str(ROOT / "students" / raw["teacher"]["card"])
    raw["threads"] = 1
    raw["distill"] = {"epochs": 1, "batch_size": 64}
    return raw


def _with_terms(raw: dict[str, Any], *terms: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "distill": {**raw["distill"], "terms": [{"name": "ce", "weight": 1.0}, *terms]}}


# ---- parsing and errors ------------------------------------------------------------------


def test_terms_parse_from_a_recipe_with_their_options(smoke_dict: dict[str, Any]) -> None:
    rkd = {"name": "rkd", "weight": 1.0, "angle_weight": 0.0}
    at = {"name": "at", "weight": 1.0, "pairs": [[1, "stages.1"], {"student_stage": 2, "teacher_tap": "stages.2"}]}  # fmt: skip
    recipe = Recipe.from_dict(_with_terms(smoke_dict, rkd))
    term = recipe.distill.terms[1]
    assert (term.distance_weight, term.angle_weight, term.teacher_tap, term.hint_size) == (
        25.0, 0.0, "pool", 1,
    )  # fmt: skip
    assert term.needs == {"features", "teacher_features"}
    recipe = Recipe.from_dict(_with_terms(smoke_dict, at))
    term = recipe.distill.terms[1]
    assert [(p.student_stage, p.teacher_tap) for p in term.pairs] == [
        (1, "stages.1"), (2, "stages.2"),
    ]  # fmt: skip
    assert (term.beta, term.p, term.hint_size) == (1000.0, 2.0, None)
    again = Recipe.from_dict(recipe.model_dump(mode="json"))  # a dumped recipe reads back
    assert again.distill.terms == recipe.distill.terms


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ([{"name": "rkd", "weight": 1.0, "beta": 2}], r"unknown key .*beta"),
        ([{"name": "rkd", "weight": 1.0, "distance_weight": 0, "angle_weight": 0}], "rkd needs"),
        ([{"name": "rkd", "weight": 1.0, "angle_weight": -1}], "angle_weight"),
        ([{"name": "at", "weight": 1.0}], r"at term needs pairs: \[\[student_stage"),
        (
            [{"name": "at", "weight": 1.0, "pairs": [[1]]}],
            r"a pair is \[student_stage, teacher_tap\]",
        ),
        ([{"name": "at", "weight": 1.0, "pairs": AT_PAIRS, "beta": 0}], "beta"),
        ([{"name": "at", "weight": 1.0, "pairs": AT_PAIRS, "p": 0.5}], r"\bp\b"),
        (
            [{"name": "rkd", "weight": 1.0}, {"name": "at", "weight": 1.0, "pairs": AT_PAIRS}],
            r"cannot be combined \(rkd: features; at: intermediates\)",
        ),
    ],
)
def test_bad_term_options_are_one_line_recipe_errors(
    smoke_dict: dict[str, Any], terms: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(RecipeError, match=message) as info:
        Recipe.from_dict(_with_terms(smoke_dict, *terms))
    assert "\n" not in str(info.value)


def test_teacher_terms_need_a_teacher_card(smoke_dict: dict[str, Any]) -> None:
    raw = {**_with_terms(smoke_dict, {"name": "rkd", "weight": 1.0}), "teacher": None}
    with pytest.raises(RecipeError, match=r"\['rkd'\] need a teacher.card"):
        Recipe.from_dict(raw)


@pytest.mark.parametrize(
    ("pretrain", "message"),
    [
        (
            {"method": "dino", "term": {"name": "l2", "weight": 1.0}},
            "term is for method: crossmodal",
        ),
        ({"dino": {"out_dim": 8}}, "dino needs method: dino"),
        ({"method": "dino", "dino": {"out_dims": 8}}, r"unknown key 'pretrain.dino.out_dims'"),
        (
            {"method": "dino", "epochs": 2, "dino": {"warmup_epochs": 3}},
            r"warmup_epochs \(3\) exceeds epochs \(2\)",
        ),
        ({"method": "byol"}, "pretrain.method"),
        ({"epochs": 2}, "pretrain needs teacher.video"),  # cross-modal is still the default
    ],
)
def test_bad_pretrain_sections_are_one_line_recipe_errors(
    smoke_dict: dict[str, Any], pretrain: dict[str, Any], message: str
) -> None:
    with pytest.raises(RecipeError, match=message) as info:
        Recipe.from_dict({**smoke_dict, "pretrain": pretrain})
    assert "\n" not in str(info.value)


def test_dino_pretrain_section_defaults(smoke_dict: dict[str, Any]) -> None:
    cfg = Recipe.from_dict({**smoke_dict, "pretrain": {"method": "dino"}}).pretrain
    assert cfg is not None and cfg.dino is not None
    settings = cfg.dino_settings(seed=3)
    assert (settings.lr, settings.student_temp, settings.teacher_temp) == (0.01, 0.1, 0.07)
    assert (settings.epochs, settings.batch_size, settings.seed) == (20, 64, 3)
    cfg = Recipe.from_dict({**smoke_dict, "pretrain": {"method": "dino", "lr": 0.002}}).pretrain
    assert cfg is not None and cfg.lr == 0.002


def test_dino_augmentation_follows_the_input_and_refuses_audio() -> None:
    def task(modality: str, shape: tuple[int, ...]) -> Any:
        return SimpleNamespace(modality=modality, input=SimpleNamespace(shape=shape))

    assert dino_augment(task("image", (1, 28, 28)))[1] == "image"
    assert dino_augment(task("imu", (6, 100)))[1] == "imu"
    augment, name = dino_augment(task("imu", (4, 100)))
    assert name == "imu (no rotation)"
    x = torch.randn(2, 4, 100)
    assert augment(x, torch.Generator().manual_seed(0)).shape == x.shape
    with pytest.raises(RecipeError, match=r"not audio \[16000\]; remove the pretrain section"):
        dino_augment(task("audio", (16000,)))


# ---- the terms' values against the papers' formulas, by hand -------------------------------


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_by_hand(s: list[list[float]], t: list[list[float]]) -> tuple[float, float]:
    """Park et al. eq. (3)-(6) with loops: mean Huber over all B² pairs and B³ triplets."""
    b = len(s)

    def dist(e: list[list[float]]) -> list[list[float]]:
        d = [[math.dist(e[i], e[j]) for j in range(b)] for i in range(b)]
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mu for v in row] for row in d]

    def cos(e: list[list[float]], i: int, j: int, k: int) -> float:
        if i == j or k == j:
            return 0.0
        u = [a - c for a, c in zip(e[i], e[j], strict=True)]
        v = [a - c for a, c in zip(e[k], e[j], strict=True)]
        return sum(x * y for x, y in zip(u, v, strict=True)) / (math.hypot(*u) * math.hypot(*v))

    ds, dt = dist(s), dist(t)
    l_d = sum(_huber(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2
    triplets = list(itertools.product(range(b), repeat=3))
    l_a = sum(_huber(cos(s, i, j, k) - cos(t, i, j, k)) for i, j, k in triplets) / b**3
    return l_d, l_a


def test_rkd_term_is_the_weighted_paper_loss() -> None:
    s = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]
    t = [[0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 3.0, 1.0]]
    l_d, l_a = _rkd_by_hand(s, t)
    assert l_d > 0.01 and l_a > 0.01
    options = parse_term(
        {"name": "rkd", "weight": 1.0, "distance_weight": 2.0, "angle_weight": 3.0}
    )
    term = RKDTerm(options)
    teacher = {"pool": torch.tensor(t).reshape(4, 3, 1, 1)}  # a cached [N, C, 1, 1] pooling
    features = torch.tensor(s)
    batch = TermBatch(torch.zeros(4), torch.arange(4), teacher, features=features)
    value = term.loss(batch, 0, 1)
    assert value is not None
    assert value.item() == pytest.approx(2.0 * l_d + 3.0 * l_a, rel=1e-5)
    # too few samples for the angle loss: nothing, not an error (a last batch of 2)
    small = TermBatch(torch.zeros(2), torch.arange(2), {"pool": teacher["pool"][:2]})
    small.features = features[:2]
    assert term.loss(small, 0, 1) is None


def test_at_term_is_half_beta_times_the_per_position_mean() -> None:
    # student: one channel, energy [1, 0, 0, 0] -> Q_s = (1, 0, 0, 0)
    # teacher: two channels, energy [1, 1, 0, 0] -> Q_t = (1, 1, 0, 0) / √2
    # ‖Q_s − Q_t‖² = (1 − 1/√2)² + 1/2 = 2 − √2; mean over 4 positions; times β/2 = 500
    student = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[-1.0, 1.0], [0.0, 0.0]]]])
    one = parse_term({"name": "at", "weight": 1.0, "pairs": [[0, "a"]]})
    batch = TermBatch(torch.zeros(1), torch.arange(1), {"a": teacher, "b": teacher})
    batch.intermediates = [student]
    value = ATTerm(one).loss(batch, 0, 1)
    assert value.item() == pytest.approx(500 * (2 - math.sqrt(2)) / 4, rel=1e-6)
    two = parse_term({"name": "at", "weight": 1.0, "pairs": [[0, "a"], [0, "b"]], "beta": 10})
    assert ATTerm(two).teacher_taps() == ("a", "b")
    assert ATTerm(two).loss(batch, 0, 1).item() == pytest.approx(
        2 * 5 * (2 - math.sqrt(2)) / 4, rel=1e-6
    )


# ---- the distill stage with each term ------------------------------------------------------


def _log(out: Path) -> dict[str, float]:
    with (out / "distill" / "train_log.csv").open() as fh:
        return {k: float(v) for k, v in next(csv.DictReader(fh)).items()}


@pytest.fixture(scope="module")
def ce_only(smoke_dict: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_pipeline(Recipe.from_dict(_with_terms(smoke_dict)), out, until="distill", console=_quiet())
    return out


@pytest.mark.parametrize(
    ("term", "weight"),
    [
        ({"name": "rkd", "weight": 0.5}, 0.5),
        ({"name": "rkd", "weight": 0.5, "teacher_tap": "logits", "angle_weight": 0.0}, 0.5),
        ({"name": "at", "weight": 2.0, "pairs": AT_PAIRS}, 2.0),
    ],
)
def test_distill_stage_trains_with_the_term(
    smoke_dict: dict[str, Any], ce_only: Path, tmp_path: Path, term: dict[str, Any], weight: float
) -> None:
    out = tmp_path / "run"
    ctx = run_pipeline(
        Recipe.from_dict(_with_terms(smoke_dict, term)), out, until="distill", console=_quiet()
    )
    assert ctx.executed == ["pretrain", "distill"]
    row, base = _log(out), _log(ce_only)
    name = term["name"]
    assert row[name] > 1e-4
    # the logged loss is the weighted sum of the logged terms, and differs from ce-only
    assert row["loss"] == pytest.approx(row["ce"] + weight * row[name], rel=1e-5)
    assert abs(row["loss"] - base["loss"]) > 1e-3
    trained = load_model(out / "distill", "student").state_dict()
    plain = load_model(ce_only / "distill", "student").state_dict()
    assert any(not torch.equal(trained[k], plain[k]) for k in plain)
    if term.get("teacher_tap") != "logits":
        assert list((out / "cache").glob("teacher-features-*")), "teacher layers are cached"


def test_a_teacher_layer_that_does_not_exist_is_one_line(
    smoke_dict: dict[str, Any], tmp_path: Path
) -> None:
    raw = _with_terms(smoke_dict, {"name": "at", "weight": 1.0, "pairs": [[1, "stage.1"]]})
    with pytest.raises(RecipeError, match=r"at teacher_tap 'stage.1' is not a layer of teacher"):
        run_pipeline(Recipe.from_dict(raw), tmp_path / "run", until="distill", console=_quiet())


# ---- DINO pre-training as a stage ----------------------------------------------------------


def test_dino_pretrain_stage_resumes_then_distill_starts_from_it(
    smoke_dict: dict[str, Any], tmp_path: Path
) -> None:
    head = {"out_dim": 32, "hidden": 32, "bottleneck": 16}
    pretrain = {"method": "dino", "epochs": 2, "batch_size": 64, "dino": head}
    recipe = Recipe.from_dict({**_with_terms(smoke_dict), "teacher": None, "pretrain": pretrain})
    out = tmp_path / "run"
    ctx = run_pipeline(recipe, out, until="pretrain", console=_quiet())
    metrics = ctx.manifests["pretrain"]["metrics"]
    assert metrics["method"] == "dino" and metrics["augment"] == "image"
    assert metrics["epochs"] == 2 and metrics["samples"] == 320
    assert metrics["teacher_std"] > 0  # not collapsed to a constant
    assert set(metrics["student_probe_top1"]) == {"all labels"}
    assert 0 <= metrics["random_init_probe_top1"] <= 100
    pretrained = load_model(out / "pretrain", "student").state_dict()
    # killed after the last checkpoint, before the manifest: the re-run resumes, trains no more
    (out / "pretrain" / "manifest.json").unlink()
    console = _quiet()
    ctx = run_pipeline(recipe, out, until="distill", console=console)
    assert ctx.executed == ["pretrain", "distill"]
    assert "resumed pretrain from epoch 2" in console.file.getvalue()  # type: ignore[attr-defined]
    again = load_model(out / "pretrain", "student").state_dict()
    assert all(torch.equal(again[k], pretrained[k]) for k in pretrained)
    assert ctx.manifests["distill"]["metrics"]["pretrained"] is True
    assert "pretrain/student.safetensors" in ctx.manifests["distill"]["inputs"]
    fresh = run_pipeline(
        Recipe.from_dict({**_with_terms(smoke_dict), "teacher": None}),
        tmp_path / "plain",
        until="distill",
        console=_quiet(),
    )
    assert fresh.manifests["distill"]["metrics"]["pretrained"] is False
    differs = load_model(out / "distill", "student").state_dict()
    plain = load_model(tmp_path / "plain" / "distill", "student").state_dict()
    assert any(not torch.equal(differs[k], plain[k]) for k in plain)
    assert np.isfinite(ctx.manifests["distill"]["metrics"]["student_top1"])
