"""The catalogue of bad inputs: recipes, data files, teacher cards, run folders and bundles.

Every case is something a user can do by mistake. Each must end in exactly one ``error:``
line on stderr that names the culprit (a file, field or value), the documented exit code
(``edgedistill/errors.py``: 2 bad input, 3 data, 7 unsafe file; 1 for a bundle's program),
no traceback, and a finished run folder (or bundle) left byte-for-byte and mtime untouched.
README, "Error handling", lists the same checks.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_bundle import _run_inline, image_case, imu_case, imu_windows
from typer.testing import CliRunner

from edgedistill.artifacts import sha256_file
from edgedistill.cli.app import app

# ---- a finished run to point bad commands at ------------------------------------------------


def _recipe(idx: Path, card: Path) -> dict[str, Any]:
    return {
        "name": "tiny",
        "threads": 1,
        "data": {"path": str(idx), "name": "bars", "labels": ["horizontal", "vertical", "none"]},
        "teacher": {"card": str(card)},
        "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
        "distill": {"epochs": 1, "batch_size": 64, "lr": 0.05},
        "prune": {"enabled": False},
        "quantize": {"calibration_samples": 32},
        "export": {"openvino": "no"},
        "profile": {
            "threads": 1,
            "batch_sizes": [1],
            "warmup": 1,
            "runs": 100,
            "runtimes": ["onnxruntime"],
        },
        "gates": {"parity_samples": 32, "int8_max_accuracy_drop": 100.0},
    }


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> tuple[dict[str, Any], Path]:
    """(the recipe as a dict, its finished run folder)."""
    base = tmp_path_factory.mktemp("catalogue")
    raw = _recipe(tiny_idx_dir, tiny_teacher_card)
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(base / "run")])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return raw, base / "run"


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# ---- the CLI cases: (make the input in tmp, words the line must contain, exit code) ------------

Make = Callable[[Path, dict[str, Any]], list[str]]


def _recipe_file(tmp: Path, raw: Any, name: str = "recipe.yaml") -> Path:
    path = tmp / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def _changed(**changes: Any) -> Make:
    """A recipe with ``section.key`` (dotted) set to a value; ``None`` value deletes it."""

    def make(tmp: Path, raw: dict[str, Any]) -> list[str]:
        raw = yaml.safe_load(yaml.safe_dump(raw))
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node = raw
            for key in parents:
                node = node.setdefault(key, {})
            if value is None:
                node.pop(last, None)
            else:
                node[last] = value
        return ["run", str(_recipe_file(tmp, raw))]

    return make


def _text(content: bytes) -> Make:
    def make(tmp: Path, raw: dict[str, Any]) -> list[str]:
        path = tmp / "recipe.yaml"
        path.write_bytes(content)
        return ["run", str(path)]

    return make


def _card(damage: str) -> Make:
    """The recipe with its teacher card (and weights) copied and damaged."""

    def make(tmp: Path, raw: dict[str, Any]) -> list[str]:
        card_path = Path(raw["teacher"]["card"])
        card = yaml.safe_load(card_path.read_text())
        weights = tmp / "teacher.safetensors"
        shutil.copy(card_path.parent / card["weights"], weights)
        text = None
        if damage == "no-sha":
            del card["sha256"]
        elif damage == "mismatch":
            card["sha256"] = card["sha256"][:-1] + ("0" if card["sha256"][-1] != "0" else "1")
        elif damage == "truncated":
            weights.write_bytes(weights.read_bytes()[:100])
            card["sha256"] = sha256_file(weights)
        elif damage == "missing":
            weights.unlink()
        if damage == "zeros":
            text = yaml.safe_dump({k: v for k, v in card.items() if k != "sha256"})
            text += "sha256: " + "0" * 64 + "\n"  # YAML reads it as the integer 0
        new_card = tmp / "card.yaml"
        new_card.write_text(text or yaml.safe_dump(card))
        return ["run", str(_recipe_file(tmp, {**raw, "teacher": {"card": str(new_card)}}))]

    return make


def _text_csv(content: bytes) -> Make:
    def make(tmp: Path, raw: dict[str, Any]) -> list[str]:
        (tmp / "reviews.csv").write_bytes(content)
        recipe = {
            "name": "texts",
            "data": {"source": "text_csv", "path": "reviews.csv", "max_length": 32},
            "student": {"arch": "text_cnn"},
            "distill": {"epochs": 1, "terms": [{"name": "ce", "weight": 1.0}]},
        }
        return ["run", str(_recipe_file(tmp, recipe))]

    return make


def _out_is_a_file(tmp: Path, raw: dict[str, Any]) -> list[str]:
    (tmp / "taken").write_text("a file, not a folder")
    return ["run", str(_recipe_file(tmp, raw)), "--out", str(tmp / "taken")]


def _target(content: dict[str, Any] | None) -> Make:
    def make(tmp: Path, raw: dict[str, Any]) -> list[str]:
        target = tmp / "target.yaml"
        if content is not None:
            target.write_text(yaml.safe_dump(content))
        return ["run", str(_recipe_file(tmp, raw)), "--target", str(target)]

    return make


CLI_CASES: dict[str, tuple[Make, tuple[str, ...], int]] = {
    # recipes
    "yaml-syntax": (_text(b"name: x\ndata: [\n"), ("recipe.yaml",), 2),
    "unknown-key": (_changed(bogus=1), ("bogus",), 2),
    "misspelled-section": (_changed(distil={"epochs": 1}), ("distil",), 2),
    "wrong-type": (_changed(seed="abc"), ("seed",), 2),
    "negative-epochs": (_changed(distill__epochs=-1), ("epochs",), 2),
    "absurd-epochs": (_changed(distill__epochs=10**12), ("epochs", "10000"), 2),
    "not-utf8": (_text(b"name: caf\xe9\n"), ("recipe.yaml", "UTF-8"), 2),
    "empty-recipe": (_text(b""), ("recipe.yaml",), 2),
    "recipe-is-a-list": (_text(b"- a\n- b\n"), ("recipe.yaml",), 2),
    "unknown-student": (_changed(student__arch="resnet9000"), ("resnet9000",), 2),
    "bad-student-argument": (_changed(student__config={"widths": "wide"}), ("widths",), 2),
    "unknown-runtime": (_changed(profile__runtimes=["tflite"]), ("tflite",), 2),
    "missing-target": (_target(None), ("target.yaml",), 2),
    "target-unknown-key": (_target({"name": "t", "bogus": 1}), ("bogus",), 2),
    # data files
    "missing-data-folder": (_changed(data__path="/nonexistent/idx"), ("/nonexistent/idx",), 2),
    "labels-do-not-match": (_changed(data__labels=["a", "b"]), ("label",), 3),
    "text-csv-not-utf8": (_text_csv(b"text,label\ncaf\xe9,pos\nok,neg\n"), ("reviews.csv",), 3),
    "text-csv-no-label-column": (_text_csv(b"text\nhello\nworld\n"), ("reviews.csv",), 3),
    # teacher cards
    "card-without-sha256": (_card("no-sha"), ("sha256",), 2),
    "card-sha256-unquoted-zeros": (_card("zeros"), ("sha256", "quote"), 2),
    "card-sha256-mismatch": (_card("mismatch"), ("teacher.safetensors",), 7),
    "card-weights-truncated": (_card("truncated"), ("teacher.safetensors",), 2),
    "card-weights-missing": (_card("missing"), ("teacher.safetensors",), 2),
    # run folders
    "out-is-a-file": (_out_is_a_file, ("taken",), 2),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_in_one_line_and_leaves_the_run_alone(
    case: str, finished: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    raw, run = finished
    make, words, code = CLI_CASES[case]
    args = make(tmp_path, raw)
    if "--out" not in args:
        args += ["--out", str(run)]
    before = _tree(run)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    line = _error_line(result.stderr)
    for word in words:
        assert word in line, (case, line)
    assert result.exit_code == code, (case, result.exit_code, line)
    assert _tree(run) == before, case


def test_validate_refuses_the_same_recipes(
    finished: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """``validate`` says what ``run`` would: a sample of the cases above through it."""
    raw, _ = finished
    for case in ("unknown-student", "labels-do-not-match", "card-sha256-mismatch", "not-utf8"):
        make, words, code = CLI_CASES[case]
        folder = tmp_path / case
        folder.mkdir()
        args = make(folder, raw)
        result = CliRunner().invoke(app, ["validate", args[1]])
        line = _error_line(result.stderr)
        assert result.exit_code == code and all(w in line for w in words), (case, line)


# ---- bundles ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "image": image_case(tmp_path_factory.mktemp("image")).bundle,
        "imu": imu_case(tmp_path_factory.mktemp("imu")).bundle,
    }


def _npy(name: str, array: np.ndarray) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        np.save(tmp / name, array, allow_pickle=True)
        return [str(tmp / name)]

    return make


BUNDLE_CASES: dict[str, tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = {
    "image-floats-0-1": ("image", _npy("f.npy", np.full((1, 12, 12), 0.5, np.float32)), ("f.npy",)),
    "image-nan": ("image", _npy("n.npy", np.full((1, 12, 12), np.nan, np.float32)), ("NaN",)),
    "image-empty-batch": ("image", _npy("e.npy", np.zeros((0, 12, 12), np.uint8)), ("e.npy",)),
    "image-object-array": ("image", _npy("o.npy", np.array([{"a": 1}], dtype=object)), ("o.npy",)),
    "image-missing-file": ("image", lambda tmp: [str(tmp / "absent.png")], ("absent.png",)),
    "imu-wrong-units": ("imu", _npy("deg.npy", imu_windows()[0] * 57.3), ("deg.npy",)),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_bundle_refuses_in_one_line_and_stays_as_shipped(
    case: str, bundles: dict[str, Path], tmp_path: Path
) -> None:
    modality, make, words = BUNDLE_CASES[case]
    bundle = bundles[modality]
    before = _tree(bundle)
    result = _run_inline(bundle, *make(tmp_path))
    assert result.returncode == 1 and result.stdout == "", (case, result)
    line = _error_line(result.stderr)
    assert all(w in line for w in words), (case, line)
    assert _tree(bundle) == before, case


def test_the_catalogue_is_at_least_25_cases() -> None:
    assert len(CLI_CASES) + len(BUNDLE_CASES) >= 25
