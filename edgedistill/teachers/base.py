"""Frozen teachers and their cards.

A teacher card (YAML, in the top-level ``teachers/`` folder) names an architecture, its
constructor arguments, a safetensors weights file (relative to the card) and that file's
sha256. :func:`load_teacher` checks the hash, builds the model and freezes it visibly
(DESIGN.md, convention 3): ``requires_grad_(False)``, always ``eval()``, inference mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from edgedistill.artifacts import sha256_file
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

    @classmethod
    def load(cls, path: Path) -> TeacherCard:
        """Parse and check a card.

        A card with ``package`` names a weights file inside that installed package
        (:mod:`edgedistill.teachers.packaged`; ``sha256`` is then required). Otherwise the
        weights path is relative to the card and must stay inside the card's folder.
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
            return cls._packaged(Path(path), raw, str(package))
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
        return cls(
            name=str(raw["name"]),
            arch=str(raw["arch"]),
            config=dict(raw.get("config") or {}),
            weights=weights,
            sha256=raw.get("sha256"),
            labels=tuple(raw.get("labels") or ()),
            raw=raw,
        )

    @classmethod
    def _packaged(cls, path: Path, raw: dict[str, Any], package: str) -> TeacherCard:
        from edgedistill.teachers.packaged import packaged_weights

        digest = str(raw.get("sha256") or "").lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise RecipeError(
                f"teacher card {path}: a packaged teacher needs sha256: the 64 hex characters "
                f"of its weights file, got {raw.get('sha256')!r}"
            )
        weights = packaged_weights(str(raw["arch"]), package, str(raw["weights"]), digest, path)
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


def load_teacher(card_path: Path) -> tuple[FrozenTeacher, TeacherCard]:
    """Load the teacher a card describes, refusing weights whose sha256 does not match."""
    card = TeacherCard.load(card_path)
    if card.package is not None:  # verified against the pinned sha256 by TeacherCard.load
        from edgedistill.teachers.packaged import build_packaged_teacher

        assert card.sha256 is not None
        teacher = build_packaged_teacher(
            card.arch, card.weights, card.config, card.name, card.sha256, card_path
        )
        return teacher, card
    digest = sha256_file(card.weights)
    if card.sha256 and card.sha256 != digest:
        raise UnsafeFileError(
            f"teacher weights {card.weights}: sha256 {digest[:12]}… does not match the card's "
            f"{str(card.sha256)[:12]}…"
        )
    if card.arch == "onnx":
        from edgedistill.export.onnx import check_onnx_file
        from edgedistill.teachers.onnx_teacher import OnnxTeacherModel

        check_onnx_file(card.weights)
        threads = int(card.config.get("threads", 2))
        return FrozenTeacher(OnnxTeacherModel(card.weights, threads), card.name, digest), card
    model = build_model(card.arch, card.config)
    state = load_file(str(card.weights))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else str(exc)
        raise RecipeError(
            f"teacher {card.name}: weights do not fit '{card.arch}': {first.strip()}"
        ) from None
    return FrozenTeacher(model, card.name, digest), card
