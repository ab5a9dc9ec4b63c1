"""The recipe schema: parsing, path resolution and the one-line RecipeError contract."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from edgedistill.config import Recipe, load_recipe
from edgedistill.errors import EdgeDistillError, RecipeError


def _recipe_error(raw: Any, **kwargs: Any) -> str:
    """Validate ``raw`` expecting a RecipeError; return its (checked one-line) message."""
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(raw, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def _with(d: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``d`` with ``dotted`` (e.g. ``distill.epochs``) set to ``value``."""
    out = copy.deepcopy(d)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


# ---- valid recipes ----------------------------------------------------------------------


def test_valid_recipe_parses_with_given_and_default_values(
    tiny_recipe_dict: dict[str, Any],
) -> None:
    recipe = Recipe.from_dict(tiny_recipe_dict)
    assert recipe.name == "tiny"
    assert recipe.threads == 1
    assert recipe.data.path == Path(tiny_recipe_dict["data"]["path"]).resolve()
    assert recipe.data.labels == ("left", "middle", "right")
    assert recipe.teacher.card == Path(tiny_recipe_dict["teacher"]["card"]).resolve()
    assert recipe.distill.epochs == 2 and recipe.distill.batch_size == 64
    assert recipe.distill.lr == pytest.approx(0.05)
    assert recipe.prune.target_macs_ratio == pytest.approx(0.7)
    assert recipe.quantize.calibration_samples == 64
    assert recipe.profile.runtimes == ("torch", "onnxruntime")
    assert recipe.profile.batch_sizes == (1, 4)
    # sections and fields the recipe leaves out get their documented defaults
    assert recipe.export.opset == 18 and recipe.export.openvino == "auto"
    assert [(t.name, t.weight) for t in recipe.distill.terms] == [("ce", 0.1), ("kd", 0.9)]
    assert recipe.gates.fp32_max_abs_diff == pytest.approx(1e-4)


def test_recipe_is_frozen(tiny_recipe_dict: dict[str, Any]) -> None:
    recipe = Recipe.from_dict(tiny_recipe_dict)
    with pytest.raises(ValidationError):
        recipe.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        recipe.distill.epochs = 99  # type: ignore[misc]
    with pytest.raises(ValidationError):
        recipe.data.path = Path("/")  # type: ignore[misc]
    assert recipe.name == "tiny" and recipe.distill.epochs == 2


def test_batch_sizes_are_sorted_and_deduplicated(tiny_recipe_dict: dict[str, Any]) -> None:
    recipe = Recipe.from_dict(_with(tiny_recipe_dict, "profile.batch_sizes", [8, 1, 4, 8]))
    assert recipe.profile.batch_sizes == (1, 4, 8)


def test_relative_paths_resolve_against_base_dir(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any]
) -> None:
    base = tmp_path / "project"
    shutil.copytree(tiny_recipe_dict["data"]["path"], base / "data" / "bars")
    card = Path(tiny_recipe_dict["teacher"]["card"])
    shutil.copytree(card.parent, base / "teachers" / "tiny")
    raw = _with(tiny_recipe_dict, "data.path", "data/bars")
    raw["teacher"]["card"] = f"teachers/tiny/{card.name}"

    recipe = Recipe.from_dict(raw, base_dir=base)
    assert recipe.data.path == (base / "data" / "bars").resolve()
    assert recipe.teacher.card == (base / "teachers" / "tiny" / card.name).resolve()
    assert recipe.data.path.is_absolute() and recipe.teacher.card.is_absolute()

    # the same relative paths do not exist relative to another folder
    message = _recipe_error(raw, base_dir=tmp_path)
    assert "data.path" in message


def test_load_recipe_resolves_relative_paths_against_the_recipe_folder(
    tmp_path: Path, tiny_recipe_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_recipe_dict["data"]["path"], tmp_path / "recipes" / "bars")
    raw = _with(tiny_recipe_dict, "data.path", "bars")
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    recipe = load_recipe(Path("recipes/r.yaml"))
    assert recipe.data.path == (tmp_path / "recipes" / "bars").resolve()


# ---- rejected recipes -------------------------------------------------------------------


def test_unknown_top_level_key(tiny_recipe_dict: dict[str, Any]) -> None:
    raw = {**tiny_recipe_dict, "distil": {"epochs": 3}}
    message = _recipe_error(raw, source="r.yaml")
    assert message.startswith("r.yaml: ")
    assert "unknown key 'distil'" in message
    for allowed in (
        "data",
        "teacher",
        "student",
        "distill",
        "prune",
        "quantize",
        "export",
        "profile",
        "gates",
    ):
        assert allowed in message.split("allowed here:")[1]


def test_unknown_nested_key_names_dotted_field_and_lists_allowed(
    tiny_recipe_dict: dict[str, Any],
) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, "distill.learning_rate", 0.1))
    assert "unknown key 'distill.learning_rate'" in message
    allowed = message.split("allowed here:")[1]
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "terms"):
        assert key in allowed
    # keys of other sections are not offered
    assert "calibration_samples" not in allowed and "opset" not in allowed


def test_unknown_key_inside_a_list_item(tiny_recipe_dict: dict[str, Any]) -> None:
    terms = [{"name": "ce", "weight": 1.0, "temp": 2.0}]
    message = _recipe_error(_with(tiny_recipe_dict, "distill.terms", terms))
    assert "unknown key 'distill.terms.0.temp'" in message
    allowed = message.split("allowed here:")[1]
    assert "name" in allowed and "weight" in allowed and "temperature" in allowed


@pytest.mark.parametrize(
    ("dotted", "value", "shown"),
    [
        ("distill.epochs", "many", "'many'"),
        ("seed", [1, 2], "[1, 2]"),
        ("quantize.per_channel", "sometimes", "'sometimes'"),
    ],
)
def test_wrong_type_names_field_and_value(
    tiny_recipe_dict: dict[str, Any], dotted: str, value: Any, shown: str
) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, dotted, value))
    assert f"{dotted} = {shown}" in message


def test_out_of_range_value_says_what_is_allowed(tiny_recipe_dict: dict[str, Any]) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, "distill.epochs", 0))
    assert "distill.epochs = 0" in message and "greater than or equal to 1" in message


def test_missing_required_section(tiny_recipe_dict: dict[str, Any]) -> None:
    raw = {k: v for k, v in tiny_recipe_dict.items() if k != "data"}
    message = _recipe_error(raw)
    assert "'data' is required" in message


def test_not_a_mapping(tiny_recipe_dict: dict[str, Any]) -> None:
    message = _recipe_error(["data", "teacher"], source="r.yaml")
    assert message == "r.yaml: expected a mapping of sections, got list"


def test_data_path_that_does_not_exist(tmp_path: Path, tiny_recipe_dict: dict[str, Any]) -> None:
    missing = tmp_path / "no-such-folder"
    message = _recipe_error(_with(tiny_recipe_dict, "data.path", str(missing)))
    assert "data.path" in message
    assert str(missing) in message and "does not exist" in message


def test_data_path_that_is_a_file(tiny_recipe_dict: dict[str, Any]) -> None:
    card = tiny_recipe_dict["teacher"]["card"]
    message = _recipe_error(_with(tiny_recipe_dict, "data.path", card))
    assert "data.path" in message and "does not exist" in message


def test_teacher_card_that_does_not_exist(tmp_path: Path, tiny_recipe_dict: dict[str, Any]) -> None:
    missing = tmp_path / "nowhere" / "card.yaml"
    message = _recipe_error(_with(tiny_recipe_dict, "teacher.card", str(missing)))
    assert "teacher.card" in message
    assert str(missing) in message and "does not exist" in message


@pytest.mark.parametrize(
    ("dotted", "value", "allowed"),
    [
        ("prune.importance", "l3", ("'l1'", "'l2'")),
        ("quantize.calibration_method", "kl", ("'minmax'", "'entropy'", "'percentile'")),
        ("export.openvino", "maybe", ("'auto'", "'yes'", "'no'")),
        ("profile.runtimes", ["torch", "tflite"], ("'torch'", "'onnxruntime'", "'openvino'")),
    ],
)
def test_literal_value_not_allowed_lists_allowed_values(
    tiny_recipe_dict: dict[str, Any], dotted: str, value: Any, allowed: tuple[str, ...]
) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, dotted, value))
    assert dotted in message
    bad = value[-1] if isinstance(value, list) else value
    assert repr(bad) in message
    for option in allowed:
        assert option in message


def test_duplicate_loss_term_names(tiny_recipe_dict: dict[str, Any]) -> None:
    terms = [{"name": "kd", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 2.0}]
    message = _recipe_error(_with(tiny_recipe_dict, "distill.terms", terms))
    assert "distill.terms" in message and "once" in message


def test_loss_terms_need_a_positive_weight(tiny_recipe_dict: dict[str, Any]) -> None:
    terms = [{"name": "ce", "weight": 0.0}, {"name": "kd", "weight": 0.0}]
    message = _recipe_error(_with(tiny_recipe_dict, "distill.terms", terms))
    assert "distill.terms" in message and "positive weight" in message


def test_batch_sizes_without_one_rejected(tiny_recipe_dict: dict[str, Any]) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, "profile.batch_sizes", [4, 8]))
    assert "profile.batch_sizes" in message and "batch size 1" in message


def test_non_positive_batch_size_rejected(tiny_recipe_dict: dict[str, Any]) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, "profile.batch_sizes", [1, 0]))
    assert "profile.batch_sizes" in message and "positive" in message


def test_several_problems_reports_the_first_and_a_count(tiny_recipe_dict: dict[str, Any]) -> None:
    raw = _with(tiny_recipe_dict, "distill.epochs", 0)
    raw = _with(raw, "distill.batch_size", 0)
    raw = _with(raw, "gates.parity_samples", 0)
    message = _recipe_error(raw)
    assert message.endswith("(and 2 more problems)")


def test_long_values_are_shortened(tiny_recipe_dict: dict[str, Any]) -> None:
    message = _recipe_error(_with(tiny_recipe_dict, "name", ["x" * 500]))
    assert "..." in message and "x" * 100 not in message


# ---- load_recipe ------------------------------------------------------------------------


def test_load_recipe_reads_a_valid_file(tiny_recipe_file: Path) -> None:
    recipe = load_recipe(tiny_recipe_file)
    assert isinstance(recipe, Recipe) and recipe.name == "tiny"


def test_invalid_yaml_message_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nseed: 1\ndata: path: here\nteacher: {}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message == f"{path}: not valid YAML at line 3"


def test_recipe_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"recipe file '{path}' does not exist"
    assert info.value.exit_code == 2
    assert isinstance(info.value, EdgeDistillError)


def test_load_recipe_errors_name_the_file(tmp_path: Path, tiny_recipe_dict: dict[str, Any]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe_dict, "bogus": 1}))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: unknown key 'bogus'")


def test_empty_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "expected a mapping" in str(info.value)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: {**d, "surprise": {"a": 1}},
        lambda d: _with(d, "student.depth", 3),
        lambda d: _with(d, "distill.epochs", "x\ny"),
        lambda d: {k: v for k, v in d.items() if k != "teacher"},
        lambda d: _with(d, "profile.runtimes", ["tflite"]),
        lambda d: _with(d, "profile.batch_sizes", [2]),
    ],
)
def test_messages_contain_no_newline(tiny_recipe_dict: dict[str, Any], mutate: Any) -> None:
    _recipe_error(mutate(tiny_recipe_dict))  # the helper asserts there is no newline
