"""Which layout a data folder has, and its inspection.

Checked in this order: a ``.csv`` file (texts); class sub-folders of images or WAV files
(``<class>/`` or ``train/<class>/`` + ``test/<class>/``); a labels CSV with ``recording`` and
``label`` columns beside IMU recordings; one CSV of texts (or ``train.csv`` + ``test.csv``).
Anything else is refused with the layouts init knows and what the folder holds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgedistill.errors import DataError
from edgedistill.scaffold.findings import Findings
from edgedistill.scaffold.inspect_imu import find_labels_file, inspect_imu
from edgedistill.scaffold.inspect_media import class_folder_kind, inspect_audio, inspect_images
from edgedistill.scaffold.inspect_text import inspect_text, text_csv_of

LAYOUTS = (
    "<class>/*.png|*.jpg (images), <class>/*.wav (audio), IMU recordings *.csv|*.npy with a "
    "labels CSV (columns recording,label), or a CSV of texts with a label column"
)


def _contents(folder: Path) -> str:
    kinds = Counter(
        "folders" if p.is_dir() else (p.suffix.lower() or "no suffix")
        for p in folder.iterdir()
        if not p.name.startswith(".")
    )
    return ", ".join(f"{n} {k}" for k, n in kinds.most_common(6))


def inspect_data(path: Path, *, sample_rate: float | None = None, tier: str = "medium") -> Findings:
    """Find the layout of ``path`` and inspect it.

    Args:
        path: A data folder, or a CSV file of texts.
        sample_rate: IMU recordings without a time column: their rate in Hz.
        tier: The student size ("small" / "medium" / "large"); sets the image size.

    Raises:
        DataError: a missing or empty folder, an unknown layout, or data the matching source
            would refuse (one class only, an empty class folder, ...).
        RecipeError: IMU recordings without a time column and no ``sample_rate``.
    """
    path = path.expanduser().resolve()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: init reads a folder, or a .csv file of texts; {LAYOUTS}")
        return inspect_text(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    if not any(not p.name.startswith(".") for p in path.iterdir()):
        raise DataError(f"{path}: the folder is empty; expected {LAYOUTS}")
    kind = class_folder_kind(path)
    if kind == "image":
        return inspect_images(path, tier)
    if kind == "audio":
        return inspect_audio(path)
    imu = find_labels_file(path)
    if imu is not None:
        return inspect_imu(imu[0], imu[1], sample_rate=sample_rate)
    text = text_csv_of(path)
    if text is not None:
        return inspect_text(*text)
    raise DataError(
        f"{path}: no layout init knows (it holds {_contents(path)}); expected {LAYOUTS}"
    )
