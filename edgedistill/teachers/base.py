"""Frozen teachers and their cards.

A teacher card (YAML, in the top-level ``teachers/`` folder) names an architecture, its
constructor arguments, a safetensors weights file (relative to the card) and that file's
sha256. :func:`load_teacher` checks the hash, builds the model and freezes it visibly
(DESIGN.md, convention 3): ``requires_grad_(False)``, always ``eval()``, inference mode.

Every card reads a weights file (a local ``.safetensors`` / ``.onnx`` next to the card, or a
file inside an installed package), so every card must pin it: ``sha256`` is exactly 64 hex
characters, quoted (YAML reads an all-digit hash, e.g. 64 zeros, as a number). A card without
one loads only with ``allow_unverified=True`` (``--allow-unverified-teacher``, research use;
the run's summary then says ``teacher_verified: false``); a hash that does not match the file
is refused always.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from edgedistill.artifacts import read_safetensors, sha256_file
from edgedistill.errors import RecipeError, UnsafeFileError
from edgedistill.students import build_model


@dataclass(frozen=True)
class TeacherCard:
    """What a teacher card file says."""

    name: str
    arch: str
    config: dict[str, Any]
    weights: Path
    sha256: str | None
    labels: tuple[str, ...]
    raw: dict[str, Any]

    package: str | None = None

    @property
    def verified(self) -> bool:
        """Whether the card pins its weights' sha256 (a loaded teacher then matched it)."""
        return self.sha256 is not None

    @classmethod
    def load(cls, path: Path, *, allow_unverified: bool = False) -> TeacherCard:
        """Parse and check a card.

        A card with ``package`` names a weights file inside that installed package
        (:mod:`edgedistill.teachers.packaged`, checked against ``sha256`` here). Otherwise the
        weights path is relative to the card and must stay inside the card's folder (hashed by
        :func:`verify_teacher_card`).

        Args:
            path: The card file.
            allow_unverified: Accept a card without ``sha256`` (its ``sha256`` is then None).
                A malformed ``sha256`` is refused regardless.

        Raises:
            RecipeError: unreadable card, missing keys, missing or malformed ``sha256``.
            UnsafeFileError: weights outside the card's folder, pickled weights, or a packaged
                file whose sha256 differs.
        """
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RecipeError(f"teacher card {path}: cannot read: {exc}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"teacher card {path}: expected a mapping")
        missing = [key for key in ("name", "arch", "weights") if key not in raw]
        if missing:
            raise RecipeError(f"teacher card {path}: missing {', '.join(missing)}")
        package = raw.get("package")
        if package is not None:
            return cls._packaged(Path(path), raw, str(package), allow_unverified)
        folder = Path(path).resolve().parent
        weights = (folder / str(raw["weights"])).resolve()
        if not weights.is_relative_to(folder):
            raise UnsafeFileError(f"teacher card {path}: weights path escapes the card's folder")
        allowed = ".onnx" if str(raw["arch"]) == "onnx" else ".safetensors"
        if weights.suffix != allowed:
            raise UnsafeFileError(
                f"teacher card {path}: weights of arch '{raw['arch']}' must be {allowed} "
                "(pickled files are refused)"
            )
        if not weights.is_file():
            raise RecipeError(f"teacher card {path}: weights file {weights} does not exist")
        digest = card_sha256(raw.get("sha256"), Path(path), weights, allow_unverified)
        return cls(
            name=str(raw["name"]),
            arch=str(raw["arch"]),
            config=dict(raw.get("config") or {}),
            weights=weights,
            sha256=digest,
            labels=tuple(raw.get("labels") or ()),
            raw=raw,
        )

    @classmethod
    def _packaged(
        cls, path: Path, raw: dict[str, Any], package: str, allow_unverified: bool
    ) -> TeacherCard:
        from edgedistill.teachers.packaged import packaged_weights

        relative = str(raw["weights"])
        where = Path(f"{package}/{relative}")
        digest = card_sha256(raw.get("sha256"), path, where, allow_unverified)
        weights = packaged_weights(str(raw["arch"]), package, relative, digest, path)
        return cls(
            name=str(raw["name"]),
            arch=str(raw["arch"]),
            config=dict(raw.get("config") or {}),
            weights=weights,
            sha256=digest,
            labels=tuple(raw.get("labels") or ()),
            raw=raw,
            package=package,
        )


HEX = frozenset("0123456789abcdef")


def card_sha256(
    value: Any, card: Path, weights: Path, allow_unverified: bool = False
) -> str | None:
    """The card's ``sha256``, checked and lower-cased; None when absent and allowed.

    Args:
        value: What YAML read for ``sha256`` (None when the key is absent).
        card: The card file (named in errors).
        weights: The weights file the hash pins (named in errors).
        allow_unverified: Return None for a missing hash instead of refusing the card.

    Raises:
        RecipeError: missing (unless allowed), a YAML number or boolean (an unquoted hash:
            the message says to quote it), not 64 characters, or not hexadecimal.
    """
    need = f"teacher card {card}: needs sha256: the 64 hex characters of {weights}"
    if value is None or value == "":
        if allow_unverified:
            return None
        raise RecipeError(
            f"{need} (`sha256sum {weights}` prints them; check where the file came from first),"
            " or run with --allow-unverified-teacher for research use"
        )
    if isinstance(value, bool) or not isinstance(value, str):
        kind = (
            "a boolean"
            if isinstance(value, bool)
            else "a number"
            if isinstance(value, int | float)
            else f"a {type(value).__name__}"
        )
        raise RecipeError(
            f"{need} as a quoted string, but YAML read `sha256: {value}` as {kind}: "
            'quote the hash (sha256: "…") so YAML keeps every digit'
        )
    digest = value.strip().lower()
    if len(digest) != 64:
        raise RecipeError(f"{need}, got {len(digest)} characters ({value!r})")
    bad = sorted(set(digest) - HEX)
    if bad:
        raise RecipeError(f"{need}, got non-hex character(s) {''.join(bad)!r} in {value!r}")
    return digest


class FrozenTeacher(nn.Module):
    """A teacher that cannot be trained: no gradients, always in eval mode.

    Args:
        model: The network; its parameters are frozen in place.
        name: Shown in logs and reports.
        weights_sha256: Hash of the weights, the teacher part of every cache key.
    """

    def __init__(self, model: nn.Module, name: str, weights_sha256: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.weights_sha256 = weights_sha256
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        # A frozen teacher never leaves eval mode (BN statistics and dropout stay fixed).
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)


def verify_teacher_card(
    card_path: Path, *, allow_unverified: bool = False
) -> tuple[TeacherCard, str]:
    """Check a card and hash its weights file, without building the model.

    Returns:
        (card, the weights file's sha256): equal to ``card.sha256`` unless the card has none
        (allowed by ``allow_unverified``).

    Raises:
        RecipeError: a malformed card or ``sha256`` (see :func:`card_sha256`).
        UnsafeFileError: the file's sha256 differs from the card's (both hashes in full).
    """
    card = TeacherCard.load(card_path, allow_unverified=allow_unverified)
    if card.package is not None and card.sha256 is not None:
        return card, card.sha256  # hashed and compared by packaged_weights
    digest = sha256_file(card.weights)
    if card.sha256 is not None and card.sha256 != digest:
        raise UnsafeFileError(
            f"teacher weights {card.weights}: sha256 {digest} does not match {card.sha256} "
            f"pinned by {card_path}: download the file again, or if it was replaced on purpose, "
            "put its sha256 in the card"
        )
    return card, digest


def load_teacher(
    card_path: Path, *, allow_unverified: bool = False
) -> tuple[FrozenTeacher, TeacherCard]:
    """Load the teacher a card describes, only after its weights' sha256 matched the card.

    Args:
        card_path: The teacher card (YAML).
        allow_unverified: Load a card without ``sha256`` (research use); a hash that does
            not match is refused regardless.

    Raises:
        RecipeError: a malformed card, a corrupt weights file, or weights that do not fit.
        UnsafeFileError: the weights' sha256 differs from the card's.
    """
    card, digest = verify_teacher_card(card_path, allow_unverified=allow_unverified)
    if card.package is not None:
        from edgedistill.teachers.packaged import build_packaged_teacher

        teacher = build_packaged_teacher(
            card.arch, card.weights, card.config, card.name, digest, card_path
        )
        return teacher, card
    if card.arch == "onnx":
        from edgedistill.export.onnx import check_onnx_file
        from edgedistill.teachers.onnx_teacher import OnnxTeacherModel

        check_onnx_file(card.weights)
        threads = int(card.config.get("threads", 2))
        return FrozenTeacher(OnnxTeacherModel(card.weights, threads), card.name, digest), card
    model = build_model(card.arch, card.config)
    _load_weights(model, read_safetensors(card.weights), card, card_path)
    return FrozenTeacher(model, card.name, digest), card


def _load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], card: TeacherCard, card_path: Path
) -> None:
    """Strict ``load_state_dict``; tensors that do not fit are one line saying which."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{label} {', '.join(items[:3])}{' …' if len(items) > 3 else ''} ({len(items)})"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", shapes),
        )
        if items
    ]
    if not problems:
        try:
            model.load_state_dict(state)
            return
        except RuntimeError as exc:
            problems = [next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), "")]
    raise RecipeError(
        f"teacher card {card_path}: the weights in {card.weights} do not fit arch "
        f"'{card.arch}' with the card's config ({'; '.join(problems)}): fix arch/config in the "
        "card or point it at the right weights file"
    )
