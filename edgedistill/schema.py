"""The base of every recipe section: typed, frozen, unknown keys refused, one-line errors.

Shared by the recipe schema (:mod:`edgedistill.config`) and the data sources
(:mod:`edgedistill.tasks.sources`), which register their own sections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from edgedistill.errors import RecipeError


class Section(BaseModel):
    """A recipe section: frozen, and unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    """A path from a recipe, resolved against the recipe file's folder (validation context)."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return path.resolve()


def existing_dir(value: Path, info: ValidationInfo) -> Path:
    """:func:`resolve_path` that must name a folder."""
    path = resolve_path(value, info)
    if not path.is_dir():
        raise ValueError(f"folder {str(path)!r} does not exist")
    return path


def existing_file(value: Path, info: ValidationInfo) -> Path:
    """:func:`resolve_path` that must name a file."""
    path = resolve_path(value, info)
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    return path


def validate_section(
    model: type[BaseModel], raw: Any, *, base_dir: Path | None, source: str, prefix: str = ""
) -> Any:
    """Validate ``raw`` as ``model``; the first problem becomes a one-line RecipeError."""
    try:
        return model.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        message = describe_validation_error(exc, model, prefix, raw=raw)
        raise RecipeError(f"{source}: {message}") from None


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file (UTF-8).

    Raises:
        RecipeError: one line naming the file when it is missing, a folder, unreadable, not
            UTF-8 text (with the offset of the first bad byte) or not valid YAML.
    """
    try:
        if path.is_dir():
            raise RecipeError(f"{what} file '{path}' is a folder, not a file: name the YAML file")
        if not path.is_file():
            raise RecipeError(f"{what} file '{path}' does not exist")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        line = exc.object[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{what} file '{path}' is not UTF-8 text (byte 0x{bad} on line {line}, offset "
            f"{exc.start}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise RecipeError(
            f"{what} file '{path}' cannot be read ({exc.strerror or exc}): check its permissions"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}: not valid YAML{where}") from None


def _model_at(
    model: type[BaseModel], loc: tuple[int | str, ...], raw: Any = None
) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for listing allowed keys).

    A section whose keys depend on its content (a loss term's on its ``name``) names its
    concrete model through a classmethod ``section_for(raw_mapping)``; ``raw`` is the input
    that failed, walked along ``loc`` to give it that mapping.
    """
    current: Any = model
    node = raw
    for part in loc:
        node = _child(node, part)
        if not isinstance(part, int):
            fields = getattr(current, "model_fields", None)
            if fields is None or part not in fields:
                return None
            current = _first_model(fields[part].annotation)
            if current is None:
                return None
        section_for = getattr(current, "section_for", None)
        if section_for is not None and isinstance(node, Mapping):
            current = section_for(node) or current
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _child(node: Any, part: int | str) -> Any:
    if isinstance(part, str) and isinstance(node, Mapping):
        return node.get(part)
    if isinstance(part, int) and isinstance(node, Sequence) and not isinstance(node, str):
        return node[part] if -len(node) <= part < len(node) else None
    return None


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def describe_validation_error(
    exc: ValidationError, root: type[BaseModel], prefix: str = "", *, raw: Any = None
) -> str:
    """Turn pydantic's error list into one line: field, value, what is allowed.

    ``prefix`` names the section ``root`` validates (e.g. "data") in the message; ``raw`` is
    the validated input (it tells which model a content-dependent section uses).
    """
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    field = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(top level)"
    kind = first["type"]
    value = first.get("input")
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1], raw)
        allowed = ", ".join(owner.model_fields) if owner else "see the documentation"
        message = f"unknown key '{field}' (allowed here: {allowed})"
    elif kind == "missing":
        message = f"'{field}' is required"
    elif isinstance(value, dict):  # a whole section was rejected: its content says nothing
        reason = str(first["msg"]).removeprefix("Value error, ")
        message = reason if not loc and not prefix else f"{field}: {reason}"
    else:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        reason = str(first["msg"]).removeprefix("Value error, ")
        limit = (first.get("ctx") or {}).get("le")
        if kind == "less_than_equal" and isinstance(limit, int | float):
            reason = f"must be at most {limit:,} (a sanity limit of this field)"
        message = f"{field} = {shown}: {reason}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message
