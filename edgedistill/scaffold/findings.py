"""What ``edgedistill init`` found in a data folder: one :class:`Findings` per modality.

An inspector (``inspect_media``, ``inspect_imu``, ``inspect_text``) reads the folder the way
its data source (:mod:`edgedistill.tasks.sources`) will, counts samples per class, measures
what a recipe has to fix (image size and colour, sample rate and clip length, window length,
text length) and proposes a ``data`` section. Nothing here trains or writes anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Modality = Literal["image", "imu", "audio", "text"]
MAX_LISTED = 8  # unreadable files named in a message; the rest are counted


@dataclass
class Findings:
    """The inspection of one data folder (or text CSV).

    Attributes:
        modality: "image", "imu", "audio" or "text".
        path: The folder or file the recipe's ``data.path`` names.
        layout: One line describing the layout found (and how the test split is made).
        classes: Class name -> samples the student sees (images, clips, texts, IMU windows),
            in label order.
        unit: What a sample is ("images", "clips", "texts", "windows").
        held_out: About how many of those samples form the test split.
        facts: Further (name, value) rows for the report (sizes, rates, lengths).
        corrupt: ``"<file>: <reason>"`` for every file the source could not read.
        notes: Remarks for the user (few samples, recordings without a label, ...).
        data: The proposed ``data`` section (``path`` absolute; made relative on writing).
        comments: One comment per ``data`` key for the written recipe.
        input: What a teacher card's input must match: ``channels`` and ``size`` (image),
            ``channels`` / ``channel_names`` / ``sample_rate_hz`` / ``window_s`` (IMU),
            ``sample_rate_hz`` / ``clip_s`` (audio), ``max_length`` (text).
    """

    modality: Modality
    path: Path
    layout: str
    classes: dict[str, int]
    unit: str
    held_out: int
    facts: list[tuple[str, str]] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Samples over every class."""
        return sum(self.classes.values())

    @property
    def imbalance(self) -> float:
        """Largest class count / smallest (inf when a class has none)."""
        counts = list(self.classes.values())
        low = min(counts) if counts else 0
        return float("inf") if low == 0 else max(counts) / low


def spread(values: Sequence[float], unit: str = "", digits: int = 0) -> str:
    """``"min .. median .. max unit"`` (one value when all are equal)."""
    if not values:
        return "-"
    low, mid, high = min(values), statistics.median(values), max(values)

    def show(v: float) -> str:
        return f"{v:,.{digits}f}"

    suffix = f" {unit}" if unit else ""
    if low == high:
        return f"{show(low)}{suffix}"
    return f"{show(low)} / {show(mid)} / {show(high)}{suffix} (min / median / max)"


def listed(items: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED` items, then how many more."""
    shown = "; ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f"; and {more} more" if more > 0 else "")


def held_out_share(counts: dict[str, int], fraction: float) -> int:
    """Samples a stratified ``fraction`` holds out (as ``stratified_split`` rounds them)."""
    return sum(min(max(round(fraction * n), 1), n - 1) for n in counts.values() if n > 0)
