"""Pure metric functions on arrays, plus model size counters."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy in percent.

    Args:
        logits: [N, K] scores.
        labels: [N] integer classes.
        k: A sample counts as correct when its label is among the k highest scores.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"need logits [N, K] and labels [N], got {logits.shape} and {labels.shape}"
        )
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in 1..{logits.shape[1]}, got {k}")
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k > 1 else logits.argmax(1)[:, None]
    return float((topk == labels[:, None]).any(axis=1).mean() * 100.0)


def agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Percentage of samples whose top-1 class is the same under both models ([N, K] each)."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [N, K] arrays of equal shape, got {a.shape} and {b.shape}")
    return float((a.argmax(1) == b.argmax(1)).mean() * 100.0)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """Largest absolute elementwise difference and the index where it occurs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return float(diff[idx]), tuple(int(i) for i in idx)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all, trainable or not); an ONNX-backed model reports its own."""
    own = getattr(model, "parameter_count", None)
    if own is not None:
        return int(own)
    return sum(p.numel() for p in model.parameters())


def count_macs(
    model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch-pruning's op counter).

    A model with a ``macs(input_shape)`` method counts itself; an ONNX-backed model (one with
    an ``onnx_path``) is counted from its graph (conv and matrix-multiply MACs,
    :func:`edgedistill.teachers.onnx_teacher.onnx_macs`).
    """
    own = getattr(model, "macs", None)
    if callable(own):  # a model that counts itself (ONNX pipelines, text teachers, heads)
        return int(own(tuple(input_shape)))
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is not None:
        from edgedistill.teachers.onnx_teacher import onnx_macs

        return onnx_macs(onnx_path, input_shape)
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        example = torch.ones(1, *input_shape, dtype=dtype)  # ones: a valid token id too
        macs, _ = tp.utils.count_ops_and_params(model, example)
    finally:
        model.train(was_training)
    return int(macs)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Run ``model`` in eval mode over [N, ...] inputs in batches; returns [N, K] float32."""
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i : i + batch_size]).float().numpy() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out)
