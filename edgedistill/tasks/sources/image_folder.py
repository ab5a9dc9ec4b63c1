"""``image_folder``: a folder of labelled images, one sub-folder per class.

Layout (class names are the sub-folder names; ``train`` and ``test`` are reserved)::

    path/<class>/*.png|*.jpg|*.jpeg            one sub-folder per class (at least 2); a
                                               seeded, class-stratified ``test_fraction`` of
                                               each class is held out
    path/train/<class>/... + path/test/<class>/...   or your own split: every test class must
                                               also be a training class (``train/`` alone is
                                               split like ``path/<class>/``)

Images are read with Pillow, converted to grayscale (``L``) or RGB and, when ``size`` is set,
resized (bilinear) to it; they are stored as uint8 [N, C, H, W]. Files are read in sorted order
and other files (and hidden folders) are skipped, so the same folder always gives the same
arrays. The helpers here (class folders, stratified split, label order) are shared with the
``audio_folder``, ``imu`` and ``text_csv`` sources.

Example recipe section::

    data:
      source: image_folder
      path: my_photos        # relative to the recipe file
      size: [96, 96]         # or 96; omit it only when every image already has one size
      color: rgb
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from edgedistill.errors import DataError
from edgedistill.schema import existing_dir
from edgedistill.tasks.inputs import image_input
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Positive = Annotated[int, Field(gt=0)]
Files = list[tuple[Path, int]]  # (file, class index), in class then file-name order


class ImageFolderConfig(SourceConfig):
    """The ``data`` section of an image folder.

    Attributes:
        path: The folder (see the module docstring for its layout).
        size: Resize every image to this many pixels: ``96`` (square) or ``[H, W]``. When
            omitted every image must already have the same size.
        color: ``grayscale`` (1 channel) or ``rgb`` (3 channels).
        test_fraction: Share of each class held out when there is no ``test/`` folder.
        labels: Class names in label order (default: the sorted sub-folder names); every
            sub-folder must be listed.
    """

    source: str = "image_folder"
    path: Path = Field(description="folder with one sub-folder of images per class")
    size: Positive | tuple[Positive, Positive] | None = None
    color: Literal["grayscale", "rgb"] = "grayscale"
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    labels: tuple[str, ...] | None = Field(default=None, min_length=2)

    _path = field_validator("path")(existing_dir)


# ---- helpers shared by the folder-per-class sources ----------------------------------------


def label_order(found: Iterable[str]) -> tuple[str, ...]:
    """Sorted names; numerically when every name is an integer ("2" before "10")."""
    names = sorted(set(found))
    if names and all(n.lstrip("-").isdecimal() for n in names):
        names.sort(key=int)
    return tuple(names)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices holding out ``round(fraction * n_k)`` rows of every
    class k (at least 1 when the class has 2 rows or more, never all of them), drawn with
    ``np.random.default_rng(seed)`` class by class in label order."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for k in np.unique(y):
        rows = np.flatnonzero(y == k)
        n_test = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        test.append(rng.permutation(rows)[:n_test])
    held = np.zeros(len(y), dtype=bool)
    held[np.concatenate(test).astype(np.int64)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name[0] != "."}


def class_files(
    root: Path, suffixes: Sequence[str], labels: Sequence[str] | None, kind: str
) -> tuple[tuple[str, ...], Files, Files | None]:
    """Class names and the files of a folder-per-class dataset.

    Returns:
        (class names, training files, test files or None when there is no ``test/`` folder).

    Raises:
        DataError: for a folder without class sub-folders, a single class, a class folder
            without ``suffixes`` files, a ``labels`` entry without a folder (or a folder not
            in ``labels``), a test class unknown to training, or ``test/`` without ``train/``.
    """
    wanted = "/".join(f"*{s}" for s in suffixes)
    test_dir = root / "test"
    split = (root / "train").is_dir()
    if test_dir.is_dir() and not split:
        raise DataError(f"{root}: has test/ but no train/; add train/<class>/ or drop test/")
    train_root = root / "train" if split else root
    found = _class_dirs(train_root)
    if not found:
        raise DataError(
            f"{train_root}: no class sub-folders; expected {train_root}/<class>/{wanted}"
        )
    if len(found) < 2:
        raise DataError(
            f"{train_root}: needs at least 2 class sub-folders, found only {list(found)}"
        )
    if labels is None:
        names = label_order(found)
    else:
        names = tuple(labels)
        missing = [n for n in names if n not in found]
        extra = [n for n in found if n not in names]
        if missing or len(set(names)) != len(names):
            raise DataError(
                f"{train_root}: data.labels names {missing or 'a class twice'} with no class "
                f"folder; the folders are {list(found)}"
            )
        if extra:
            raise DataError(f"{train_root}: folders {extra} are not in data.labels; list them")

    def files_of(folder: Path, k: int) -> Files:
        files = [
            (f, k) for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in suffixes
        ]
        if not files:
            raise DataError(f"{folder}: class folder has no {kind} ({wanted})")
        return files

    train = [pair for k, n in enumerate(names) for pair in files_of(found[n], k)]
    if not split or not test_dir.is_dir():
        return names, train, None
    tests = _class_dirs(test_dir)
    unknown = [n for n in tests if n not in names]
    if unknown:
        raise DataError(f"{test_dir}: classes {unknown} have no folder in {train_root}")
    test = [pair for k, n in enumerate(names) if n in tests for pair in files_of(tests[n], k)]
    if not test:
        raise DataError(f"{test_dir}: no class sub-folders; expected {test_dir}/<class>/{wanted}")
    return names, train, test


def split_files(
    train: Files, test: Files | None, fraction: float, seed: int
) -> tuple[Files, Files]:
    """(train, test) files: the given test folder, else a stratified share of ``train``."""
    if test is not None:
        return train, test
    tr, te = stratified_split(np.array([k for _, k in train], dtype=np.int64), fraction, seed)
    return [train[i] for i in tr], [train[i] for i in te]


# ---- images ------------------------------------------------------------------------------


def read_images(files: Files, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [N, C, H, W] of ``files`` in ``mode`` ("L"/"RGB"), resized to ``size`` (H, W)."""
    from edgedistill.data.packaged import import_optional

    Image = import_optional(
        "PIL.Image", package="pillow", extra="data", purpose="reading image folders"
    )

    out: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for path, _ in files:
        try:
            with Image.open(path) as picture:
                image = picture.convert(mode)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read the image ({exc})") from None
        if size is not None:
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        elif first is None:
            first = (path, image.size)
        elif image.size != first[1]:
            (w0, h0), (w1, h1) = first[1], image.size
            raise DataError(
                f"{path}: is {h1}x{w1} (HxW) but {first[0]} is {h0}x{w0}; images differ in size, "
                "set data.size to resize them all"
            )
        pixels = np.asarray(image, dtype=np.uint8)
        out.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


@register_source("image_folder", ImageFolderConfig)
def load_image_folder(cfg: ImageFolderConfig, context: SourceContext) -> Task:
    names, train, test = class_files(cfg.path, IMAGE_SUFFIXES, cfg.labels, "images")
    train, test = split_files(train, test, cfg.test_fraction, context.seed)
    size = (cfg.size, cfg.size) if isinstance(cfg.size, int) else cfg.size
    mode = "L" if cfg.color == "grayscale" else "RGB"
    x_train = read_images(train, mode, size)
    x_test = read_images(test, mode, size)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(
            f"{test[0][0]}: test images are {x_test.shape[2:]} but training images "
            f"{x_train.shape[2:]}; set data.size to resize them all"
        )
    return Task(
        name=cfg.name or cfg.path.name,
        input=image_input(x_train),
        labels=names,
        x_train=x_train,
        y_train=np.array([k for _, k in train], dtype=np.int64),
        x_test=x_test,
        y_test=np.array([k for _, k in test], dtype=np.int64),
        source=str(cfg.path),
    )
