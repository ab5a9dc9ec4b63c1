"""Datasets and modality transforms."""

from edgedistill.data.image import (
    FASHION_MNIST_LABELS,
    ImageDataset,
    Normalization,
    load_idx_dataset,
    read_idx,
    write_idx,
)

__all__ = [
    "FASHION_MNIST_LABELS",
    "ImageDataset",
    "Normalization",
    "load_idx_dataset",
    "read_idx",
    "write_idx",
]
