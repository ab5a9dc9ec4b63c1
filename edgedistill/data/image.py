"""Image classification data: IDX files (MNIST / Fashion-MNIST layout) and in-memory arrays.

Fashion-MNIST installs offline from Debian's ``dataset-fashion-mnist`` package into
``/usr/share/datasets/fashion-mnist``; any folder holding the four standard IDX files
(``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``) works.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgedistill.errors import DataError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

UNLABELLED = -1
"""Label of a training image that has none (teacher soft labels only)."""

FASHION_MNIST_LABELS = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared shape.

    Raises:
        DataError: if the file is missing, truncated or not an unsigned-byte IDX file.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: only unsigned-byte IDX data is supported (type 0x{raw[2]:02x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says {shape} ({expected} bytes), file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder} has no {stem}[.gz]; expected the four MNIST-layout IDX files")


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image classification dataset held in memory as uint8.

    Attributes:
        x_train: [N, C, H, W] uint8 training images.
        y_train: [N] int64 labels.
        x_test: [M, C, H, W] uint8 held-out images.
        y_test: [M] int64 labels.
        labels: class names, index = label.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def fingerprint(self) -> str:
        """sha256 over every array and the labels: the data part of every cache key."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update("\n".join(self.labels).encode())
        return digest.hexdigest()

    def with_unlabelled(self, images: np.ndarray, *, use_labels: bool = True) -> ImageDataset:
        """Append unlabelled [M, C, H, W] uint8 images to the training split (label -1).

        With ``use_labels=False`` every training label becomes -1: distillation then learns
        from the teacher's soft labels alone (label-free distillation, as in SimCLRv2's
        third step and SSLD). Held-out labels are kept for evaluation.
        """
        if images.ndim != 4 or images.shape[1:] != self.x_train.shape[1:]:
            raise DataError(
                f"unlabelled images {tuple(images.shape)} do not match the training images "
                f"[N, {', '.join(str(d) for d in self.x_train.shape[1:])}]"
            )
        labels = self.y_train if use_labels else np.full_like(self.y_train, UNLABELLED)
        return ImageDataset(
            self.name,
            np.concatenate([self.x_train, images.astype(np.uint8)]),
            np.concatenate([labels, np.full(len(images), UNLABELLED, dtype=np.int64)]),
            self.x_test,
            self.y_test,
            self.labels,
        )

    def subset_train(self, limit: int | None, seed: int) -> ImageDataset:
        """The first ``limit`` training images after a seeded shuffle (all when ``None``)."""
        if limit is None or limit >= len(self.y_train):
            return self
        order = np.random.default_rng(seed).permutation(len(self.y_train))[:limit]
        order.sort()
        return ImageDataset(
            self.name,
            self.x_train[order],
            self.y_train[order],
            self.x_test,
            self.y_test,
            self.labels,
        )


def load_idx_dataset(folder: Path, labels: tuple[str, ...], name: str = "idx") -> ImageDataset:
    """Load an MNIST-layout IDX folder. Images become [N, 1, 28, 28] uint8."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        images, targets = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or targets.ndim != 1 or len(images) != len(targets):
            raise DataError(
                f"{folder}: {split} images {images.shape} and labels {targets.shape} do not match"
            )
        if len(targets) == 0:
            raise DataError(f"{folder}: the {split} split is empty")
        if targets.max() >= len(labels):
            raise DataError(
                f"{folder}: label {int(targets.max())} but the recipe names {len(labels)} classes"
            )
    return ImageDataset(
        name=name,
        x_train=arrays["train_images"][:, None].copy(),
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=arrays["test_images"][:, None].copy(),
        y_test=arrays["test_labels"].astype(np.int64),
        labels=labels,
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in .gz); for tests/tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine input normalisation applied after scaling uint8 to [0, 1]:
    ``x = (pixel / 255 - mean) / std``. Recorded in every bundle manifest."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_images(cls, images: np.ndarray) -> Normalization:
        """Statistics of [N, C, H, W] uint8 training images."""
        scaled = images.astype(np.float64) / 255.0
        mean = scaled.mean(axis=(0, 2, 3))
        std = np.maximum(
            scaled.std(axis=(0, 2, 3)), 1e-6
        )  # a constant channel must not divide by 0
        return cls(tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std))

    def apply(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> normalised float32 tensor of the same shape."""
        x = torch.as_tensor(np.asarray(images)).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (x - mean) / std

    def as_dict(self) -> dict[str, object]:
        return {"scale": "pixel / 255", "mean": list(self.mean), "std": list(self.std)}
