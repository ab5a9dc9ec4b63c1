"""The ``edgedistill`` command line: exit codes, one-line errors, --debug, stage commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgedistill.artifacts import sha256_file
from edgedistill.cli.app import app
from edgedistill.errors import RecipeError

EXE = Path(sys.executable).parent / "edgedistill"
STAGE_COMMANDS = (
    "distill",
    "prune",
    "export",
    "quantize",
    "verify",
    "profile",
    "bundle",
    "report",
    "run",
)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The pipeline sets torch's thread count process-wide; restore it for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected exactly one line, got {lines!r}"
    return lines[0]


# ---- validate ---------------------------------------------------------------------------


def test_validate_good_recipe(runner: CliRunner, tiny_recipe_file: Path) -> None:
    result = runner.invoke(app, ["validate", str(tiny_recipe_file)])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "ok" in result.stderr and "tiny" in result.stderr


def test_validate_bad_recipe(
    runner: CliRunner, tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    path = _write(tmp_path, {**tiny_recipe_dict, "seed": "abc"})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "seed = 'abc'" in _one_line(result.stderr)


# ---- one-line errors --------------------------------------------------------------------


def test_run_unknown_key_exits_2_with_one_line(
    runner: CliRunner, tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    raw = {**tiny_recipe_dict, "distill": {**tiny_recipe_dict["distill"], "epoch": 3}}
    path = _write(tmp_path, raw)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert line.startswith("error: ")
    assert "unknown key 'distill.epoch'" in line and "epochs" in line
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()  # nothing ran


def test_run_missing_data_path_exits_nonzero_with_one_line(
    runner: CliRunner, tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    missing = tmp_path / "no-data"
    raw = {**tiny_recipe_dict, "data": {**tiny_recipe_dict["data"], "path": str(missing)}}
    path = _write(tmp_path, raw)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == RecipeError.exit_code != 0
    line = _one_line(result.stderr)
    assert "data.path" in line and str(missing) in line and "does not exist" in line
    assert "Traceback" not in result.output


def test_missing_recipe_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["distill", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in _one_line(result.stderr)


def test_debug_shows_the_exception(
    runner: CliRunner, tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    path = _write(tmp_path, {**tiny_recipe_dict, "bogus": 1})
    result = runner.invoke(app, ["run", str(path), "--debug"])
    assert isinstance(result.exception, RecipeError)
    assert "unknown key 'bogus'" in str(result.exception)
    assert result.exit_code != 0
    for command in ("validate", "export"):
        result = runner.invoke(app, [command, str(path), "--debug"])
        assert isinstance(result.exception, RecipeError), command


def test_subprocess_error_is_one_line_without_traceback(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    path = _write(tmp_path, {**tiny_recipe_dict, "distill": {"epochs": 2, "optimizer": "adam"}})
    # a narrow terminal must not wrap the message onto several lines
    env = {**os.environ, "COLUMNS": "40", "NO_COLOR": "1"}
    proc = subprocess.run(
        [str(EXE), "run", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert line.startswith("error: ") and "unknown key 'distill.optimizer'" in line
    assert proc.stdout == ""


def test_subprocess_debug_prints_a_traceback(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    path = _write(tmp_path, {**tiny_recipe_dict, "bogus": 1})
    proc = subprocess.run(
        [str(EXE), "validate", str(path), "--debug"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "RecipeError" in proc.stderr and "unknown key 'bogus'" in proc.stderr


@pytest.mark.parametrize("folder", ["[draft]", "[/old]"])
def test_error_messages_are_printed_verbatim(
    runner: CliRunner, tmp_path: Path, folder: str
) -> None:
    path = tmp_path / folder / "recipe.yaml"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{folder}/recipe.yaml" in _one_line(result.stderr)


# ---- help -------------------------------------------------------------------------------


def test_help_lists_stage_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = set()
    for line in result.stdout.splitlines():
        words = line.strip("│ ").split()
        if words:
            listed.add(words[0])
    for command in (*STAGE_COMMANDS, "validate"):
        assert command in listed, command


def test_no_arguments_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert "distill" in result.output and "Usage" in result.output


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_stage_command_help(runner: CliRunner, command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--out" in result.stdout and "--force" in result.stdout and "--debug" in result.stdout


# ---- end to end -------------------------------------------------------------------------


def test_distill_end_to_end(runner: CliRunner, tmp_path: Path, tiny_recipe_file: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["distill", str(tiny_recipe_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest_path = out / "distill" / "manifest.json"
    weights = out / "distill" / "student.safetensors"
    assert manifest_path.is_file() and weights.is_file()
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stage"] == "distill" and manifest["recipe"] == "tiny"
    assert manifest["outputs"]["student.safetensors"] == sha256_file(weights)
    assert manifest["metrics"]["epochs"] == 2
    assert manifest["metrics"]["train_samples"] == 384
    assert 0 <= manifest["metrics"]["student_top1"] <= 100
    assert load_file(str(weights))  # a real safetensors file with tensors
    # only the requested stage ran
    assert not (out / "prune" / "manifest.json").exists()
    assert not (out / "export").exists()

    again = runner.invoke(app, ["distill", str(tiny_recipe_file), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "unchanged, skipped" in again.stderr
    assert json.loads(manifest_path.read_text())["fingerprint"] == manifest["fingerprint"]
