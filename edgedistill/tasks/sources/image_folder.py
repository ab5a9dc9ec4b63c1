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
arrays.

Example recipe section::

    data:
      source: image_folder
      path: my_photos        # relative to the recipe file
      size: [96, 96]         # or 96; omit it only when every image already has one size
      color: rgb
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from edgedistill.errors import DataError
from edgedistill.schema import existing_dir
from edgedistill.tasks.inputs import image_input
from edgedistill.tasks.sources._common import Files, class_files, split_files
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.task import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Positive = Annotated[int, Field(gt=0)]


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
