"""A file given to the wrong command says which command fits.

The project has three kinds of YAML a user may mix up — recipes (``students/``), target
profiles (``export/``) and teacher cards (``teachers/``) — plus run folders, bundles and ONNX
files. Before a command parses its input as its own kind, :func:`file_kind` recognises the
other kinds from their top-level keys, and the command raises a :class:`RecipeError` (exit 2)
whose one line names the command or option that takes that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from edgedistill.errors import RecipeError

Kind = Literal["recipe", "target", "teacher", "onnx", "run", "bundle", "other"]

# Keys only a teacher card has at its top level (recipes name a card under teacher.card).
TEACHER_CARD_KEYS = frozenset({"arch", "weights"})


def _yaml_keys(path: Path) -> set[str] | None:
    """The top-level keys of a YAML mapping, or None when ``path`` is not one (the command's
    own parser then reports what is wrong with it)."""
    import yaml

    try:
        raw: Any = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return {str(key) for key in raw} if isinstance(raw, dict) else None


def file_kind(path: Path) -> Kind:
    """What ``path`` is, judged from its suffix, its folder's contents or its top-level keys.

    A recipe has ``data``; a teacher card has ``arch`` and ``weights``; a target profile has
    only the keys of :data:`edgedistill.config.TARGET_KEYS`, one of them a section it
    overrides (or ``device``). Missing paths and YAML of no known kind are ``"other"``.
    """
    from edgedistill.config import TARGET_KEYS, TARGET_SECTIONS

    if path.is_dir():
        if (path / "export" / "manifest.json").is_file() or (path / "summary.json").is_file():
            return "run"
        if (path / "manifest.json").is_file():
            return "bundle"
        return "other"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if not path.is_file() or path.suffix.lower() not in {".yaml", ".yml"}:
        return "other"
    keys = _yaml_keys(path)
    if not keys:
        return "other"
    if keys >= TEACHER_CARD_KEYS:
        return "teacher"
    if "data" in keys:
        return "recipe"
    if keys <= set(TARGET_KEYS) and keys & {"device", *TARGET_SECTIONS}:
        return "target"
    return "other"


def check_recipe_path(path: Path, command: str) -> None:
    """Refuse a file that is not a recipe, naming the command that takes it.

    Args:
        path: The RECIPE argument.
        command: The command it was given to (``run``, ``validate``, ``distill``, ...).

    Raises:
        RecipeError: ``path`` is a target profile, a teacher card, a run or bundle folder or
            an ONNX file.
    """
    kind = file_kind(path)
    hints = {
        "target": f"this is a target profile, not a recipe: pass it with --target, e.g. "
        f"edgedistill {command} students/fashion_mnist.yaml --target {path}",
        "teacher": "this is a teacher card, not a recipe: a recipe (students/*.yaml) names it "
        "under teacher.card",
        "run": "this is a run folder, not a recipe: give the recipe it was run from "
        f"(students/*.yaml); to measure its models on a device: edgedistill device profile "
        f"{path} --device URL",
        "bundle": "this is a bundle folder, not a recipe: to measure it on a device: "
        f"edgedistill device profile {path} --device URL",
        "onnx": f"this is an ONNX model, not a recipe: to measure it on a device: edgedistill "
        f"device profile {path} --device URL",
    }
    if kind in hints:
        raise RecipeError(f"{path}: {hints[kind]}")


def check_target_path(path: Path) -> None:
    """Refuse a ``--target`` that is a recipe or a teacher card.

    Raises:
        RecipeError: ``path`` is a recipe or a teacher card.
    """
    kind = file_kind(path)
    if kind == "recipe":
        raise RecipeError(
            f"--target {path}: this is a recipe, not a target profile: pass it as RECIPE; "
            "target profiles are in export/"
        )
    if kind == "teacher":
        raise RecipeError(
            f"--target {path}: this is a teacher card, not a target profile: target profiles "
            "are in export/"
        )


def check_profile_path(path: Path) -> None:
    """Refuse a recipe or target profile given to ``device profile`` (before asking for a token).

    Raises:
        RecipeError: ``path`` is a YAML file: a recipe, a target profile or a teacher card.
    """
    kind = file_kind(path)
    if kind == "recipe":
        raise RecipeError(
            f"{path}: this is a recipe; device profile takes a run folder, a bundle or an "
            f".onnx file. Run and measure it with: edgedistill profile {path} --device URL"
        )
    if kind == "target":
        raise RecipeError(
            f"{path}: this is a target profile; measure a recipe on its device with: "
            f"edgedistill profile RECIPE --target {path}"
        )
    if kind == "teacher":
        raise RecipeError(
            f"{path}: this is a teacher card; device profile takes a run folder, a bundle or "
            "an .onnx file"
        )


def check_state_path(path: Path) -> None:
    """Refuse an ``agent serve --state`` that is a file (a recipe, a model, ...).

    Raises:
        RecipeError: ``path`` exists and is not a folder.
    """
    if not path.exists() or path.is_dir():
        return
    kind = file_kind(path)
    if kind == "recipe":
        hint = f"; to run the recipe and measure it on an agent: edgedistill profile {path} "
        hint += "--device URL"
    else:
        hint = ""
    raise RecipeError(
        f"--state {path}: this is a file; give a folder for the agent's uploads and results "
        f"(created if missing){hint}"
    )


def check_has_pretrain(has_pretrain: bool, path: Path) -> None:
    """Refuse ``edgedistill pretrain`` on a recipe that has nothing to pre-train.

    Raises:
        RecipeError: The recipe has no ``pretrain`` section.
    """
    if not has_pretrain:
        raise RecipeError(
            f"{path}: this recipe has no pretrain section, so there is nothing to pre-train: "
            f"train the student with: edgedistill distill {path}"
        )
