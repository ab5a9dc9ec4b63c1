"""Class-folder layouts: images (``image_folder``) and WAV clips (``audio_folder``).

Both read ``path/<class>/*`` (or ``path/train/<class>/*`` + ``path/test/<class>/*``) with the
sources' own :func:`~edgedistill.tasks.sources._common.class_files`, so a folder init accepts
is a folder the run accepts, and the errors (one class, an empty class folder, a test class
unknown to training) are the same. Every file is opened: an image is decoded with Pillow,
a WAV header read with the standard ``wave`` module.
"""

from __future__ import annotations

import math
import statistics
import wave
from collections import Counter
from pathlib import Path

from edgedistill.errors import DataError
from edgedistill.scaffold.findings import Findings, held_out_share, spread
from edgedistill.tasks.sources._common import Files, class_files
from edgedistill.tasks.sources.image_folder import IMAGE_SUFFIXES

WAV_SUFFIXES = (".wav",)
TEST_FRACTION = 0.2  # the sources' default test_fraction
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
MAX_SIDE = {"small": 32, "medium": 64, "large": 96}  # longest image side per student tier
AUDIO_RATE = 16000  # clips are resampled to this rate unless recorded at a lower one
MIN_CLIP_S = 0.25  # a log-mel front end needs at least one 32 ms frame; keep a margin
MAX_CLIP_S = 10.0


def _class_layout(
    root: Path, suffixes: tuple[str, ...], kind: str
) -> tuple[tuple[str, ...], Files, bool]:
    """(class names, every (file, class index), whether there is a ``test/`` split)."""
    names, train, test = class_files(root, suffixes, None, kind)
    return names, train + (test or []), test is not None


def _counts(names: tuple[str, ...], files: Files) -> dict[str, int]:
    found = Counter(k for _, k in files)
    return {n: found.get(k, 0) for k, n in enumerate(names)}


def _layout(root: Path, split: bool, what: str, held: int) -> str:
    if split:
        return f"{what} per class in {root}/train/<class>/ and {root}/test/<class>/"
    return (
        f"{what} per class in {root}/<class>/; a seeded {TEST_FRACTION:.0%} of each class "
        f"(~{held}) is held out for testing"
    )


# ---- images --------------------------------------------------------------------------------


def inspect_images(root: Path, tier: str) -> Findings:
    """Decode every image: sizes, colour modes, unreadable files; propose size and colour.

    The proposed ``size`` keeps the median aspect ratio with the longest side at most
    ``MAX_SIDE[tier]`` pixels (a multiple of 4); ``color`` is grayscale when every file is a
    grey-level image, else rgb.
    """
    from PIL import Image

    names, files, split = _class_layout(root, IMAGE_SUFFIXES, "images")
    sizes: list[tuple[int, int]] = []  # (H, W)
    modes: Counter[str] = Counter()
    corrupt: list[str] = []
    for path, _ in files:
        try:
            with Image.open(path) as picture:
                picture.load()
                sizes.append((picture.height, picture.width))
                modes[picture.mode] += 1
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            corrupt.append(f"{path}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}")
    counts = _counts(names, files)
    held = (
        sum(1 for p, _ in files if p.is_relative_to(root / "test"))
        if split
        else held_out_share(counts, TEST_FRACTION)
    )
    grey = bool(modes) and all(m in GREY_MODES for m in modes)
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    size = _proposed_size(heights, widths, MAX_SIDE.get(tier, 64))
    color = "grayscale" if grey else "rgb"
    found = Findings(
        modality="image",
        path=root,
        layout=_layout(root, split, "images", held),
        classes=counts,
        unit="images",
        held_out=held,
        corrupt=corrupt,
    )
    found.facts += [
        ("image sizes (H x W)", _sizes_line(sizes)),
        ("colour modes", ", ".join(f"{m} x{n}" for m, n in modes.most_common()) or "-"),
    ]
    found.data = {"source": "image_folder", "path": root, "size": list(size), "color": color}
    found.comments = {
        "source": "one sub-folder of images per class (edgedistill/tasks/sources/image_folder.py)",
        "path": "relative to this recipe file",
        "size": f"[H, W]: every image is resized to this (median image {_median_size(sizes)})",
        "color": "grayscale: every file is a grey-level image"
        if grey
        else "rgb: 3 channels (grayscale for 1)",
    }
    found.input = {"channels": 1 if grey else 3, "size": list(size)}
    return found


def _proposed_size(heights: list[int], widths: list[int], max_side: int) -> tuple[int, int]:
    if not heights:
        return (max_side, max_side)
    h, w = statistics.median(heights), statistics.median(widths)
    scale = min(1.0, max_side / max(h, w))

    def fit(v: float) -> int:
        return max(8, round(v * scale / 4) * 4)

    return (fit(h), fit(w))


def _median_size(sizes: list[tuple[int, int]]) -> str:
    if not sizes:
        return "-"
    return (
        f"{statistics.median(h for h, _ in sizes):g} x {statistics.median(w for _, w in sizes):g}"
    )


def _sizes_line(sizes: list[tuple[int, int]]) -> str:
    distinct = Counter(sizes)
    if len(distinct) == 1:
        (h, w), _ = distinct.most_common(1)[0]
        return f"all {h} x {w}"
    return (
        f"{len(distinct)} different; heights {spread([h for h, _ in sizes], 'px')}, "
        f"widths {spread([w for _, w in sizes], 'px')}"
    )


# ---- audio ---------------------------------------------------------------------------------


def inspect_audio(root: Path) -> Findings:
    """Read every WAV header: sample rates, channels, durations, unreadable files.

    Proposes ``sample_rate_hz`` (16 kHz, or the most common rate when it is lower) and
    ``clip_s`` (the 90th percentile of the durations, rounded up to 0.1 s, 0.25..10 s).
    """
    names, files, split = _class_layout(root, WAV_SUFFIXES, "WAV files")
    rates: Counter[int] = Counter()
    channels: Counter[int] = Counter()
    durations: list[float] = []
    corrupt: list[str] = []
    for path, _ in files:
        try:
            with wave.open(str(path), "rb") as wav:
                rate, width = wav.getframerate(), wav.getsampwidth()
                frames, chans = wav.getnframes(), wav.getnchannels()
        except (OSError, EOFError, wave.Error) as exc:
            corrupt.append(f"{path}: not a readable PCM WAV ({exc or 'truncated header'})")
            continue
        if width not in (1, 2, 3, 4) or rate < 1 or chans < 1:
            corrupt.append(f"{path}: {8 * width}-bit PCM with {chans} channels is not supported")
            continue
        rates[rate] += 1
        channels[chans] += 1
        durations.append(frames / rate)
    counts = _counts(names, files)
    held = (
        sum(1 for p, _ in files if p.is_relative_to(root / "test"))
        if split
        else held_out_share(counts, TEST_FRACTION)
    )
    common = rates.most_common(1)[0][0] if rates else AUDIO_RATE
    rate = AUDIO_RATE if common >= AUDIO_RATE else common
    clip = proposed_clip(durations)
    found = Findings(
        modality="audio",
        path=root,
        layout=_layout(root, split, "WAV clips", held),
        classes=counts,
        unit="clips",
        held_out=held,
        corrupt=corrupt,
    )
    found.facts += [
        ("sample rates", ", ".join(f"{r:,} Hz x{n}" for r, n in rates.most_common()) or "-"),
        ("channels", ", ".join(f"{c} x{n}" for c, n in channels.most_common()) or "-"),
        ("durations", spread(durations, "s", 2)),
    ]
    if any(d == 0 for d in durations):
        found.notes.append("some WAV files hold no samples; they become silent clips")
    found.data = {"source": "audio_folder", "path": root, "sample_rate_hz": rate, "clip_s": clip}
    resampled = "" if set(rates) <= {rate} else " (other rates are resampled to it)"
    found.comments = {
        "source": "one sub-folder of WAV files per class (edgedistill/tasks/sources/audio_folder.py)",
        "path": "relative to this recipe file",
        "sample_rate_hz": f"the rate the student reads and an app must feed{resampled}",
        "clip_s": "seconds per clip: longer clips are cut around their centre, shorter ones "
        "zero-padded",
    }
    found.input = {"sample_rate_hz": rate, "clip_s": clip}
    return found


def proposed_clip(durations: list[float]) -> float:
    """The 90th-percentile duration rounded up to 0.1 s, within 0.25..10 s."""
    if not durations:
        return 1.0
    ordered = sorted(durations)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return min(MAX_CLIP_S, max(MIN_CLIP_S, math.ceil(round(p90, 6) * 10) / 10))


def class_folder_kind(root: Path) -> str | None:
    """ "image" or "audio" when ``root`` (or ``root/train``) has class folders of images or
    WAV files, else None.

    Raises:
        DataError: class folders that mix images and WAV files.
    """
    train = root / "train" if (root / "train").is_dir() else root
    images = wavs = 0
    for folder in train.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        for f in folder.iterdir():
            suffix = f.suffix.lower()
            images += suffix in IMAGE_SUFFIXES
            wavs += suffix in WAV_SUFFIXES
    if images and wavs:
        raise DataError(
            f"{train}: class folders hold both images ({images}) and WAV files ({wavs}); "
            "keep one kind of data per folder"
        )
    return "image" if images else "audio" if wavs else None
