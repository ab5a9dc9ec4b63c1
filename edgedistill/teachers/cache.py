"""Teacher output cache: the teacher runs once per (weights, data, transform, taps).

The outputs are stored as a ``.npy`` file named by the sha256 of the key and opened
memory-mapped, so an epoch after the first never runs the teacher, and a second run (or the
pruning stage's recovery fine-tuning) reuses the file. Any change of a key part changes the
name, which invalidates the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgedistill.artifacts import atomic_save, sha256_json
from edgedistill.distill.ddp import DataParallelContext
from edgedistill.faults import maybe_die


def teacher_cache_key(
    *, teacher_sha256: str, data_sha256: str, transform: dict[str, Any], taps: list[str]
) -> str:
    """Hex key of a cache entry from its four parts."""
    return sha256_json(
        {"teacher": teacher_sha256, "data": data_sha256, "transform": transform, "taps": taps}
    )


def cached_teacher_logits(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    transform: Callable[[np.ndarray], torch.Tensor],
    *,
    key: str,
    cache_dir: Path,
    batch_size: int = 500,
    on_batch: Callable[[int], None] | None = None,
    prefix: str = "teacher-logits",
) -> tuple[np.ndarray, bool]:
    """Teacher logits for ``images``, from the cache when present.

    Args:
        teacher: Maps a normalised batch [B, C, H, W] to logits [B, K].
        images: [N, C, H, W] raw images (uint8).
        transform: Raw batch -> normalised float tensor.
        key: From :func:`teacher_cache_key`.
        cache_dir: Folder of cache files.
        batch_size: Teacher batch size when computing.
        on_batch: Called with the number of images after each batch (progress bars).
        prefix: File name prefix (the same cache serves logits and tapped features).

    Returns:
        (read-only memory-mapped [N, K] float32 array, whether it was a cache hit).
    """
    path = Path(cache_dir) / f"{prefix}-{key[:32]}.npy"
    ddp = DataParallelContext.current()
    if not ddp.is_main:
        ddp.barrier()  # rank 0 fills the cache first (below); the others memory-map it
        return np.load(path, mmap_mode="r"), True
    result = _load_or_compute(teacher, images, transform, path, batch_size, on_batch)
    ddp.barrier()
    return result


def _load_or_compute(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    transform: Callable[[np.ndarray], torch.Tensor],
    path: Path,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> tuple[np.ndarray, bool]:
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape[0] == len(images):
            return cached, True
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        with torch.inference_mode():
            chunks.append(teacher(transform(batch)).float().cpu().numpy())
        if on_batch is not None:
            on_batch(len(batch))
        maybe_die("teacher_batch")  # tests only
    logits = np.concatenate(chunks).astype(np.float32)
    atomic_save(path, lambda tmp: np.save(tmp, logits))
    return np.load(path, mmap_mode="r"), False
