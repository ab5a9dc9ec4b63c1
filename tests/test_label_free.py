"""Label-free distillation: unlabelled images beside or instead of labelled ones."""

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
from edgedistill.data import ImageDataset, write_idx
from edgedistill.distill.kd import kd_loss
from edgedistill.distill.objective import LossTermSpec, Objective
from edgedistill.errors import DataError, RecipeError
from edgedistill.pipeline.run import run_pipeline


def _quiet() -> Console:
    return Console(file=io.StringIO())


def test_with_unlabelled_appends_images_with_label_minus_one() -> None:
    x = np.zeros((3, 1, 4, 4), np.uint8)
    ds = ImageDataset("d", x, np.array([0, 1, 2]), x[:1], np.array([0]), ("a", "b", "c"))
    extra = np.full((2, 1, 4, 4), 7, np.uint8)
    both = ds.with_unlabelled(extra)
    assert both.x_train.shape == (5, 1, 4, 4) and both.y_train.tolist() == [0, 1, 2, -1, -1]
    assert ds.with_unlabelled(extra, use_labels=False).y_train.tolist() == [-1] * 5
    assert both.fingerprint() != ds.fingerprint()
    with pytest.raises(DataError, match="do not match"):
        ds.with_unlabelled(np.zeros((2, 1, 5, 5), np.uint8))


def test_ce_ignores_unlabelled_rows_and_kd_uses_all() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([2, -1, 0, -1])
    terms = (LossTermSpec("ce", 1.0), LossTermSpec("kd", 1.0, temperature=2.0))
    loss, parts = Objective(terms, 4, 3)(s, y, torch.arange(4), t, 0, 1)
    ce = F.cross_entropy(s[[0, 2]], y[[0, 2]])
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert loss.item() == pytest.approx((ce + kd_loss(s, t, temperature=2.0)).item(), rel=1e-6)
    _, parts = Objective(terms, 4, 3)(s, torch.full((4,), -1), torch.arange(4), t, 0, 1)
    assert parts["ce"] == 0.0 and parts["kd"] > 0


def test_recipe_checks(tiny_recipe_dict: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unlabelled"):
        Recipe.from_dict({**tiny_recipe_dict, "data": {**tiny_recipe_dict["data"],
                                                      "unlabelled": str(tmp_path / "none")}})  # fmt: skip
    label_free = {**tiny_recipe_dict["data"], "use_labels": False}
    terms = [{"name": "kd", "weight": 1.0}, {"name": "pskd", "weight": 0.5}]
    with pytest.raises(RecipeError, match="need a label"):
        Recipe.from_dict({**tiny_recipe_dict, "data": label_free, "distill": {"terms": terms}})


def test_label_free_distill_learns_from_teacher_soft_labels_only(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    pool = np.random.default_rng(5).integers(0, 255, (128, 16, 16)).astype(np.uint8)
    pool_file = tmp_path / "pool-images-idx3-ubyte.gz"
    write_idx(pool_file, pool)
    recipe = {
        **tiny_recipe_dict,
        "data": {**tiny_recipe_dict["data"], "unlabelled": str(pool_file), "use_labels": False},
        "distill": {**tiny_recipe_dict["distill"],
                    "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 1.0}]},
    }  # fmt: skip
    ctx = run_pipeline(
        Recipe.from_dict(recipe), tmp_path / "run", until="distill", console=_quiet()
    )
    metrics = ctx.manifests["distill"]["metrics"]
    assert metrics["train_samples"] == 384 + 128
    log = (tmp_path / "run" / "distill" / "train_log.csv").read_text().splitlines()
    header = log[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in log[1:]]
    assert all(float(r["ce"]) == 0.0 for r in rows)  # no label was used
    assert all(float(r["kd"]) > 0.0 for r in rows)
    cache = list((tmp_path / "run" / "cache").glob("teacher-logits-*.npy"))
    assert any(np.load(p, mmap_mode="r").shape[0] == 512 for p in cache)
