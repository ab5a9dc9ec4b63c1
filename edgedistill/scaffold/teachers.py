"""Which teacher card fits a data folder, and what the recipe must then set.

A card fits when (1) it reads the folder's modality, (2) its input can be produced from the
data (image size and colour, IMU channel count and rate, audio clip length within a factor of
2 of the card's), (3) its classes are the folder's (plain KD, the card's label order) or the
teacher can get a head for them (``teacher.adapt``: a linear probe on its frozen features),
and (4) its weights are installed and match the card's sha256. Automatic proposals take only
teachers made for the data's classes or general feature extractors (cards without labels); a
card trained for other classes is proposed with ``teacher.adapt`` only when asked for by name
(``--teacher``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgedistill.errors import EdgeDistillError, MissingDependencyError, RecipeError
from edgedistill.scaffold.findings import Findings

ADAPT = {"method": "linear_probe", "epochs": 100, "lr": 0.01}
CLIP_TOLERANCE = 2.0  # an audio card fits clips between half and twice its own length


@dataclass
class TeacherFit:
    """One card judged against the data.

    Attributes:
        card: The card file.
        name: The card's ``name``.
        fits: Whether a recipe can use it.
        reason: Why not, or how it is used (one line).
        adapt: Train a head for the data's classes (``teacher.adapt``).
        data: ``data`` keys the card needs (size, colour, rate, window, label order).
        exact_labels: The card was trained for exactly the data's classes.
        same_modality: The card reads the data's modality (whether or not it fits).
    """

    card: Path
    name: str
    fits: bool
    reason: str
    adapt: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    exact_labels: bool = False
    same_modality: bool = True


def default_cards_dir() -> Path:
    """``teachers/`` of the working folder, else the one next to the package (a checkout)."""
    here = Path("teachers")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "teachers"


def _card_modality(raw: dict[str, Any]) -> str | None:
    spec = raw.get("input") or {}
    layout = str(spec.get("layout", ""))
    shape = spec.get("shape") or []
    if "channels" in spec or layout == "[N, C, T]":
        return "imu"
    if "sample_rate_hz" in spec or layout == "[N, T]":
        return "audio"
    if len(shape) == 3:
        return "image"
    if not spec and raw.get("package"):
        from edgedistill.teachers.packaged import packaged_teacher

        try:
            return "text" if packaged_teacher(str(raw.get("arch"))).extra == "text" else None
        except EdgeDistillError:
            return None
    return None


def _input_fit(raw: dict[str, Any], found: Findings) -> tuple[str | None, dict[str, Any]]:
    """(why the card's input cannot be made from the data or None, data keys to set)."""
    spec = raw.get("input") or {}
    have = found.input
    if found.modality == "image":
        c, h, w = (int(v) for v in spec["shape"])
        data: dict[str, Any] = {"size": [h, w], "color": "grayscale" if c == 1 else "rgb"}
        if c not in (1, 3):
            return f"reads {c}-channel images", {}
        return None, data
    if found.modality == "imu":
        rate, channels = float(spec.get("sample_rate_hz", 0)), list(spec.get("channels") or [])
        if len(channels) != have["channels"]:
            return f"reads {len(channels)} channels, the recordings have {have['channels']}", {}
        if rate and abs(rate - have["sample_rate_hz"]) > 1e-6 and not have["timed"]:
            return (
                f"reads {rate:g} Hz; the recordings are {have['sample_rate_hz']:g} Hz without a "
                "time column to resample them"
            ), {}
        window = float(spec.get("window_s", have["window_s"]))
        data = {"sample_rate_hz": rate or have["sample_rate_hz"], "window_s": window}
        data["stride_s"] = float(spec.get("stride_s", window / 2))
        if channels == have["channel_names"]:
            data["channels"] = channels
        return None, data
    if found.modality == "audio":
        rate = int(spec.get("sample_rate_hz", 16000))
        clip = int((spec.get("shape") or [rate])[0]) / rate
        if not clip / CLIP_TOLERANCE <= have["clip_s"] <= clip * CLIP_TOLERANCE:
            return f"reads {clip:g} s clips, the folder's are ~{have['clip_s']:g} s", {}
        return None, {"sample_rate_hz": rate, "clip_s": round(clip, 9)}
    return None, {}


def _adaptable(raw: dict[str, Any]) -> bool:
    """Whether ``teacher.adapt`` can train a head on the card's teacher (forward_features)."""
    if raw.get("package"):
        return True  # the packaged builders wrap feature extractors (speech, text encoders)
    if str(raw.get("arch")) == "onnx":
        return False
    from edgedistill.students import build_model

    try:
        return hasattr(
            build_model(str(raw["arch"]), dict(raw.get("config") or {})), "forward_features"
        )
    except Exception:  # a card whose model cannot be built cannot be adapted either
        return False


def _installed(card: Path) -> str | None:
    """None when the card's weights are present and match its sha256, else why not."""
    from edgedistill.teachers.base import verify_teacher_card

    try:
        verify_teacher_card(card)
    except MissingDependencyError as exc:
        return f"not installed ({exc})"
    except EdgeDistillError as exc:
        return str(exc)
    return None


def judge_card(card: Path, found: Findings, *, explicit: bool = False) -> TeacherFit:
    """Judge one card; ``explicit`` (the user named it) also allows adapting a teacher that
    was trained for other classes."""
    try:
        raw = yaml.safe_load(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = f"unreadable card ({exc})".splitlines()[0]
        return TeacherFit(card, card.stem, False, reason, same_modality=False)
    if not isinstance(raw, dict) or "arch" not in raw:
        return TeacherFit(card, card.stem, False, "not a teacher card", same_modality=False)
    name = str(raw.get("name", card.stem))
    modality = _card_modality(raw)
    if modality != found.modality:
        reason = f"reads {modality or 'unknown'} input, not {found.modality}"
        return TeacherFit(card, name, False, reason, same_modality=False)
    problem, data = _input_fit(raw, found)
    if problem is not None:
        return TeacherFit(card, name, False, problem)
    card_labels = [str(v) for v in raw.get("labels") or []]
    classes = list(found.classes)
    exact = bool(card_labels) and sorted(card_labels) == sorted(classes)
    if exact:
        data["labels"] = card_labels
        how = "trained for these classes: plain KD"
    elif card_labels and not explicit:
        shown = ", ".join(card_labels[:4]) + (" ..." if len(card_labels) > 4 else "")
        return TeacherFit(
            card, name, False,
            f"trained for other classes ({shown}); --teacher {card.stem} adapts it to yours",
        )  # fmt: skip
    elif not _adaptable(raw):
        return TeacherFit(card, name, False, "has other classes and no features to adapt")
    else:
        how = "a head for your classes is trained on its frozen features (teacher.adapt)"
    missing = _installed(card)
    if missing is not None:
        return TeacherFit(card, name, False, missing)
    return TeacherFit(card, name, True, how, adapt=not exact, data=data, exact_labels=exact)


def resolve_card(value: str, cards_dir: Path) -> Path:
    """A card file from ``--teacher``: a path, or a card's file stem or ``name`` in
    ``cards_dir``.

    Raises:
        RecipeError: no such file or card (the cards found are listed).
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve()
    cards = sorted(cards_dir.glob("*.yaml")) if cards_dir.is_dir() else []
    for card in cards:
        if card.stem == value:
            return card.resolve()
        try:
            raw = yaml.safe_load(card.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and str(raw.get("name")) == value:
            return card.resolve()
    known = ", ".join(c.stem for c in cards) or f"none in {cards_dir}"
    raise RecipeError(f"--teacher {value}: no such card file or card name (cards: {known})")


def choose_teacher(
    found: Findings, *, cards_dir: Path, requested: str | None = None
) -> tuple[TeacherFit | None, list[TeacherFit]]:
    """(the teacher to use or None, every card judged).

    Raises:
        RecipeError: ``requested`` names a card that does not fit the data (why, in one line).
    """
    if requested is not None:
        card = resolve_card(requested, cards_dir)
        fit = judge_card(card, found, explicit=True)
        if not fit.fits:
            raise RecipeError(
                f"--teacher {requested}: {fit.name} does not fit this {found.modality} data: "
                f"{fit.reason}; pick another card or omit --teacher"
            )
        return fit, [fit]
    cards = sorted(cards_dir.glob("*.yaml")) if cards_dir.is_dir() else []
    judged = [judge_card(card, found) for card in cards]
    fitting = [f for f in judged if f.fits]
    fitting.sort(key=lambda f: (not f.exact_labels, f.name))
    return (fitting[0] if fitting else None), judged
