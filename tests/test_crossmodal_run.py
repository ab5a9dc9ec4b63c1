"""The cross-modal recipe as stages of the one chain: pretrain → distill → ... → bundle, on a
tiny synthetic paired set, re-run skipping, and its recipe errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgedistill.cli.app import app
from edgedistill.config import PretrainConfig, Recipe, load_recipe
from edgedistill.errors import RecipeError
from edgedistill.pipeline.run import STAGES

ROOT = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "name": "tiny-xmodal",
    "threads": 1,
    "data": {
        "source": "paired",
        "frame_size": 16,
        "test_subjects": [2],
        "synthetic": {"subjects": 3, "clips_per_activity": 4},
    },
    "teacher": {"video": {"image_size": 32, "pca_dim": 16}},
    "student": {"arch": "imu_cnn", "config": {"widths": [8, 16]}},
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
    "distill": {"epochs": 4, "batch_size": 16, "terms": [{"name": "ce", "weight": 1.0}]},
    "prune": {"finetune_epochs": 1, "round_to": 4},
    "export": {"openvino": "no"},
    "profile": {"runtimes": ["onnxruntime"], "batch_sizes": [1], "warmup": 2, "runs": 100},
    "gates": {"int8_max_accuracy_drop": 100.0},
}


def test_shipped_recipe_validates_and_uses_the_benchmarked_temperatures() -> None:
    recipe = load_recipe(ROOT / "students" / "egocentric_comodo.yaml")
    assert recipe.pretrain is not None and recipe.data.source == "paired"
    term = recipe.pretrain.term
    # The shipped temperatures are the ones benchmarks/crossmodal.py chose on its validation
    # subject; a re-run that chooses others must update the recipe too.
    chosen = json.loads((ROOT / "benchmarks" / "results" / "crossmodal.json").read_text())
    assert [term.temperature, term.student_temperature] == chosen["comodo_temperatures"]
    assert PretrainConfig().term == term  # the schema default agrees


def test_run_pretrains_deploys_and_reruns_skipping(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for stage in STAGES:
        assert (out / stage / "manifest.json").is_file(), stage
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modality"] == "imu"
    pretrain = summary["pretrain"]
    assert pretrain["term"] == "comodo"
    assert set(pretrain["student_probe_top1"]) == {"all labels", "5 per class"}  # 8/class: no 20
    assert all(round(v, 2) == v for v in pretrain["student_probe_top1"].values())
    distill = json.loads((out / "distill" / "manifest.json").read_text())
    assert distill["metrics"]["pretrained"] is True
    assert [m["name"] for m in summary["models"]] == [
        "student",
        "student-pruned",
        "student-int8",
        "student-pruned-int8",
    ]  # no teacher row: the video teacher does not eat IMU windows
    report = (out / "report" / "report.md").read_text()
    assert "linear probes" in report and "| student features after comodo, 5 per class |" in report
    assert "{'" not in report  # no raw Python dicts
    assert "linear probes" in (out / "report" / "report.html").read_text()
    bundle = out / "bundle" / "app"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["channels"][:3] == ["acc_x", "acc_y", "acc_z"]
    assert manifest["input"]["sample_rate_hz"] == 50.0
    assert (bundle / "README.md").is_file()
    done = subprocess.run(
        [sys.executable, str(bundle / "example.py"), str(bundle / "sample_window.csv")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = CliRunner().invoke(app, ["crossmodal", str(path), "--out", str(out)])  # the alias
    assert again.exit_code == 0, again.output
    assert again.output.count("unchanged, skipped") == len(STAGES)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"pretrain": {"term": {"name": "kd", "weight": 1.0}}}, "comodo, infonce, l2"),
        ({"data": {"source": "paired", "generator": "folder"}}, "data.folder is required"),
        ({"teacher": {"video": {"backbone": "resnet"}}}, "teacher.video.backbone"),
        ({"teacher": None}, "pretrain needs teacher.video"),
        ({"data": {"source": "seglearn-watch"}}, "pretrain needs paired data"),
        ({"data": {"source": "paired", "frame_sise": 3}}, "unknown key 'data.frame_sise'"),
        ({"data": {"source": "pairs"}}, "unknown data source"),
    ],
)
def test_bad_recipes_fail_with_one_line(tmp_path: Path, patch: dict, message: str) -> None:
    raw = {**TINY, **patch}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_relative_data_folder_resolves_next_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "paired").mkdir()
    data = {"source": "paired", "generator": "folder", "folder": "../paired"}
    recipe = Recipe.from_dict({**TINY, "data": data}, base_dir=tmp_path / "recipes")
    assert recipe.data.folder == (tmp_path / "paired").resolve()  # type: ignore[attr-defined]
