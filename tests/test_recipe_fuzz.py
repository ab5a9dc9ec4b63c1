"""Property-based fuzzing of the recipe loader: mutated valid recipes never give a traceback.

Every shipped recipe in ``students/`` is mutated (keys deleted, duplicated or renamed, values
retyped, random unicode, huge, negative and non-finite numbers, raw bytes in the text) and
loaded with :func:`edgedistill.config.load_recipe`, as ``edgedistill validate`` / ``run`` do.
The loader must either return a valid :class:`Recipe` or raise :class:`RecipeError` (exit 2)
with a one-line message; any other exception is a bug a user would see as a traceback.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedistill.config import Recipe, load_recipe
from edgedistill.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "students").glob("*.yaml"))
BASES = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in RECIPES}

odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 10**12, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324]),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "é", "\U0001f600", "../../etc/passwd", "1e999"]),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path in a parsed recipe."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    """(recipe name, mutated YAML text)."""
    name = draw(st.sampled_from(sorted(BASES)))
    tree = yaml.safe_load(yaml.safe_dump(BASES[name]))  # a deep copy
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(tree, path), path[-1]
        action = draw(st.sampled_from(["delete", "retype", "rename", "nest", "duplicate"]))
        if action == "delete":
            del parent[last]
        elif action == "retype":
            parent[last] = draw(odd_values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = parent.pop(last)
        elif action == "nest":
            parent[last] = {"value": parent[last]}
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(parent[last])
    text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)
    if draw(st.booleans()):  # a duplicated top-level key, which yaml.safe_load lets through
        first = next((line for line in text.splitlines() if line and line[0].isalpha()), "")
        text += first + "\n"
    if draw(st.integers(min_value=0, max_value=9)) == 0:  # raw noise in the text
        at = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=6)) + text[at:]
    return name, text


def _load(text: str | bytes) -> Recipe | RecipeError:
    """Load ``text`` as ``students/fuzz.yaml`` next to the real ``teachers/`` folder."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "students").mkdir()
        for folder in ("teachers", "export"):
            (Path(tmp) / folder).symlink_to(ROOT / folder, target_is_directory=True)
        path = Path(tmp) / "students" / "fuzz.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        try:
            return load_recipe(path)
        except RecipeError as error:
            return error


def _check(outcome: Recipe | RecipeError) -> None:
    if isinstance(outcome, RecipeError):
        message = str(outcome)
        assert outcome.exit_code == 2
        assert message and "\n" not in message and "Traceback" not in message, message


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_shipped_recipe_loads_from_the_fuzz_folder(name: str) -> None:
    """The harness itself: unmutated recipes are valid where the fuzzer writes them."""
    outcome = _load((ROOT / "students" / name).read_text(encoding="utf-8"))
    assert isinstance(outcome, Recipe), outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_recipes_are_valid_or_refused_in_one_line(case: tuple[str, str]) -> None:
    _check(_load(case[1]))


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_in_one_line(data: bytes) -> None:
    outcome = _load(data)
    assert isinstance(outcome, RecipeError)
    _check(outcome)
