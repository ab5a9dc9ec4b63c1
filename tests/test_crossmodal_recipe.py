"""The crossmodal recipe end to end on a tiny synthetic paired set, and its error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgedistill.cli.app import app
from edgedistill.crossmodal_recipe import CrossModalRecipe
from edgedistill.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny-xmodal",
    "threads": 1,
    "data": {
        "frame_size": 16,
        "test_subjects": [2],
        "synthetic": {"subjects": 3, "clips_per_activity": 4},
    },
    "teacher": {"image_size": 32, "pca_dim": 16},
    "student": {"config": {"widths": [8, 16]}},
    "pretrain": {
        "epochs": 2,
        "batch_size": 16,
        "term": {
            "name": "comodo",
            "weight": 1.0,
            "temperature": 0.05,
            "student_temperature": 0.1,
            "queue_size": 64,
        },
    },
    "finetune": {"epochs": 4},
    "deploy": {"prune_ratio": None, "runs": 20, "int8_max_drop": 100.0},
}


def test_shipped_recipe_validates() -> None:
    recipe = CrossModalRecipe.load(ROOT / "students" / "egocentric_comodo.yaml")
    assert recipe.pretrain.term.name == "comodo"
    term = recipe.pretrain.term
    # The shipped temperatures are the ones benchmarks/crossmodal.py chose on its validation
    # subject; a re-run that chooses others must update the recipe too.
    chosen = json.loads((ROOT / "benchmarks" / "results" / "crossmodal.json").read_text())
    assert [term.temperature, term.student_temperature] == chosen["comodo_temperatures"]
    assert CrossModalRecipe(name="x").pretrain.term == term  # the schema default agrees


def test_crossmodal_command_end_to_end_then_resumes(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["crossmodal", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["student_probe_top1"]) == {"all", "5"}  # 8 windows/class: no 20-shot
    bundle = out / "deploy" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["channels"][:3] == ["acc_x", "acc_y", "acc_z"]
    assert manifest["input"]["sample_rate_hz"] == 50.0
    done = subprocess.run(
        [sys.executable, str(bundle / "example.py"), str(bundle / "sample_window.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "activity:" in done.stdout
    again = CliRunner().invoke(app, ["crossmodal", str(path), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "pre-training unchanged" in again.output


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"pretrain": {"term": {"name": "kd", "weight": 1.0}}}, "comodo, infonce, l2"),
        ({"data": {"source": "folder"}}, "data.folder is required"),
        ({"teacher": {"backbone": "resnet"}}, "teacher.backbone"),
        ({"student": {"arch": "convnet"}}, "student.arch"),
    ],
)
def test_bad_recipes_fail_with_one_line(tmp_path: Path, patch: dict, message: str) -> None:
    raw = {**TINY, **patch}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=message):
        CrossModalRecipe.load(path)


def test_relative_data_folder_resolves_next_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {"source": "folder", "folder": "../paired"}}))
    assert CrossModalRecipe.load(path).data.folder == (tmp_path / "paired").resolve()
    path.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        CrossModalRecipe.load(path)
