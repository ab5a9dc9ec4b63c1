"""Linear probes, few-shot probes and label subsampling for evaluating frozen representations.

The standard linear-evaluation protocol of representation learning (e.g. SimCLR, Chen et al.,
ICML 2020, arXiv:2002.05709; COMODO, Chen et al., 2025, arXiv:2503.07259, which reports
linear-probe and few-shot accuracy of distilled IMU encoders): freeze the encoder, extract one
feature vector per sample, standardise the features with training statistics, and fit a
multinomial logistic regression (L-BFGS) on top. Few-shot variants train on k labelled examples
per class drawn with a seeded RNG; :func:`subsample_labels` draws the stratified label subsets
for "fine-tune with 1% / 10% / 100% of the labels".

Labels are integers ≥ 0; a training label of -1 marks an unlabelled row, which is ignored.
Every user error raises :class:`~edgedistill.errors.DataError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.errors import DataError, MissingDependencyError

UNLABELLED = -1


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe.

    Attributes:
        accuracy: Top-1 test accuracy in percent.
        n_train: Number of labelled training rows the classifier was fitted on.
        labels_per_class: k of a k-shot probe, None when every labelled row was used.
        classes: The sorted class labels present in the training rows.
    """

    accuracy: float
    n_train: int
    labels_per_class: int | None
    classes: tuple[int, ...]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _features(name: str, x: Any) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D [N, D], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise DataError(f"{name} must hold finite numbers")
    return arr.astype(np.float64, copy=False)


def _labels(name: str, y: Any, allow_unlabelled: bool = True) -> np.ndarray:
    arr = _to_numpy(y)
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D [N], got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.number) or (arr != np.round(arr)).any()):
        raise DataError(f"{name} must hold integer class labels")
    labels = arr.astype(np.int64)
    lowest = 0 if not allow_unlabelled else UNLABELLED
    if labels.size and labels.min() < lowest:
        raise DataError(f"{name} has label {labels.min()}; labels must be >= {lowest}")
    return labels


def few_shot_indices(labels: Any, k: int, seed: int = 0) -> np.ndarray:
    """Indices of k labelled rows per class, drawn without replacement with a seeded RNG.

    Args:
        labels: [N] integer labels; rows labelled -1 are never picked.
        k: Examples per class (≥ 1); every class present must have at least k.
        seed: RNG seed; the same seed always picks the same rows.

    Returns:
        [k · n_classes] int64 row indices, sorted ascending.
    """
    y = _labels("labels", labels)
    if k < 1:
        raise DataError(f"labels_per_class must be >= 1, got {k}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y[y != UNLABELLED]):
        rows = np.flatnonzero(y == c)
        if len(rows) < k:
            raise DataError(f"class {c} has {len(rows)} labelled training rows, {k}-shot needs {k}")
        picked.append(rng.choice(rows, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def subsample_labels(labels: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """A stratified subset of the labelled rows keeping at least one example per class.

    With N labelled rows (label ≠ -1) in K classes, exactly ``max(K, round(fraction · N))``
    rows are kept; class c gets ≈ fraction · n_c of them (at least 1, largest remainders
    rounded up), drawn without replacement with a seeded RNG.

    Args:
        labels: [N] integer labels; rows labelled -1 are never kept.
        fraction: Share of the labelled rows to keep, in (0, 1].
        seed: RNG seed; the same seed always keeps the same rows.

    Returns:
        int64 row indices into ``labels``, sorted ascending.
    """
    y = _labels("labels", labels)
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    classes, counts = np.unique(y[y != UNLABELLED], return_counts=True)
    if len(classes) == 0:
        raise DataError("labels has no labelled rows to subsample")
    total = max(len(classes), math.floor(fraction * counts.sum() + 0.5))
    quota = fraction * counts
    keep = np.clip(np.floor(quota).astype(np.int64), 1, counts)
    while keep.sum() != total:  # fix the rounding: +1 to the largest remainders, -1 smallest
        remainder = quota - keep
        if keep.sum() < total:
            keep[np.argmax(np.where(keep < counts, remainder, -np.inf))] += 1
        else:
            keep[np.argmin(np.where(keep > 1, remainder, np.inf))] -= 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(y == c), size=n, replace=False)
        for c, n in zip(classes, keep, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    labels_per_class: int | None = None,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 2000,
) -> ProbeResult:
    """Fit a standardised multinomial logistic regression on frozen features; test accuracy.

    Args:
        train_x: [N, D] training features (numpy array or tensor).
        train_y: [N] training labels; rows labelled -1 are ignored.
        test_x: [M, D] test features.
        test_y: [M] test labels (all ≥ 0).
        labels_per_class: k for a k-shot probe (see :func:`few_shot_indices`); None uses
            every labelled training row.
        seed: Seed of the k-shot draw; the fit itself (L-BFGS) is deterministic.
        C: Inverse L2 regularisation strength of the logistic regression (> 0).
        max_iter: L-BFGS iteration limit.

    Returns:
        A :class:`ProbeResult`. The scaler is fitted on the rows the classifier sees.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise MissingDependencyError("scikit-learn", "probe", "linear probing") from None
    x, y = _features("train_x", train_x), _labels("train_y", train_y)
    tx, ty = _features("test_x", test_x), _labels("test_y", test_y, allow_unlabelled=False)
    if len(x) != len(y) or len(tx) != len(ty):
        raise DataError(
            f"features and labels differ in length: {len(x)}/{len(y)}, {len(tx)}/{len(ty)}"
        )
    if x.shape[1] != tx.shape[1]:
        raise DataError(f"train features have dimension {x.shape[1]}, test features {tx.shape[1]}")
    if len(ty) == 0:
        raise DataError("test set is empty")
    if C <= 0 or max_iter < 1:
        raise DataError(f"C must be > 0 and max_iter >= 1, got C={C}, max_iter={max_iter}")
    if labels_per_class is None:
        rows = np.flatnonzero(y != UNLABELLED)
    else:
        rows = few_shot_indices(y, labels_per_class, seed)
    classes = tuple(int(c) for c in np.unique(y[rows]))
    if len(classes) < 2:
        raise DataError(f"a probe needs labelled training rows of >= 2 classes, got {classes}")
    scaler = StandardScaler().fit(x[rows])
    # lbfgs fits the multinomial (softmax) model for > 2 classes: `multi_class` is gone in sklearn 1.8
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    # One BLAS thread: lbfgs's result depends (slightly) on the thread count of the BLAS
    # reductions, and a probe must give the same number on every machine.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        model.fit(scaler.transform(x[rows]), y[rows])
    accuracy = float((model.predict(scaler.transform(tx)) == ty).mean() * 100.0)
    return ProbeResult(accuracy, len(rows), labels_per_class, classes)


def probe_table(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    shots: Sequence[int | None] = (None, 5, 20),
    seeds: Sequence[int] = (0, 1, 2),
    C: float = 1.0,
    max_iter: int = 2000,
) -> list[dict[str, Any]]:
    """Linear-probe accuracy for several label budgets, few-shot ones averaged over seeds.

    Every row has the keys ``shots``, ``seed``, ``accuracy`` (%), ``std`` and ``n_train``.
    For each k-shot setting there is one row per seed (``std`` None) followed by the summary
    row with ``seed`` None, the mean accuracy over the seeds and its (population) ``std``.
    ``shots`` None (all labels) draws no subset, so it is fitted once: one row, ``seed`` None,
    ``std`` 0. The ``seed`` None rows are the numbers to report.
    """
    if not seeds:
        raise DataError("probe_table needs at least one seed")
    rows: list[dict[str, Any]] = []
    for k in shots:
        runs = [
            linear_probe(
                train_x, train_y, test_x, test_y, labels_per_class=k, seed=s, C=C, max_iter=max_iter
            )
            for s in ([seeds[0]] if k is None else seeds)
        ]
        accs = np.array([r.accuracy for r in runs])
        if k is not None:
            rows += [
                {"shots": k, "seed": s, "accuracy": r.accuracy, "std": None, "n_train": r.n_train}
                for s, r in zip(seeds, runs, strict=True)
            ]
        summary = {
            "shots": k,
            "seed": None,
            "accuracy": float(accs.mean()),
            "std": float(accs.std()),
        }
        rows.append({**summary, "n_train": runs[0].n_train})
    return rows


@torch.no_grad()
def extract_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Frozen features of ``x``: ``model.forward_features`` when it has one, else its output.

    Runs in eval mode without gradients, in batches, on the model's device; the model's
    training mode is restored afterwards.

    Args:
        model: A student (e.g. a :class:`~edgedistill.students.base.PooledClassifier`, whose
            ``forward_features`` returns pooled features [B, F]) or any module.
        x: [N, ...] inputs, e.g. IMU windows [N, C, T].
        batch_size: Rows per forward pass.

    Returns:
        [N, F] float32 array (outputs of other ranks are reshaped to [N, F]).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or len(x) == 0:
        raise DataError("extract_features needs a non-empty input tensor [N, ...]")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    forward = getattr(model, "forward_features", None)
    if not callable(forward):
        forward = model
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for batch in x.split(batch_size):
            out = forward(batch.to(device))
            chunks.append(out.reshape(out.shape[0], -1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy()
