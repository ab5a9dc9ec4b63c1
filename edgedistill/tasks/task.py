"""The centre of a run: a modality-neutral :class:`Task` and its :class:`InputSpec`.

Every stage receives the task; nothing after data loading branches on the modality except
through it. A data source (:mod:`edgedistill.tasks.sources`) turns a recipe's ``data`` section
into a task; a user's own folder of images, IMU recordings, WAV clips or texts enters the same
way as the shipped examples.

Arrays are held in their *stored* form (uint8 pixels, raw IMU values in their units, a
float waveform in [-1, 1], int64 token ids); :meth:`InputSpec.prepare` turns them into what
the model eats. The same description is written into every bundle manifest, so an app does
exactly what the chain did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from edgedistill.errors import DataError

UNLABELLED = -1
"""Label of a training sample that has none (teacher or self-supervised targets only)."""

MODALITIES = ("image", "imu", "audio", "text")


def _top1(logits: np.ndarray, labels: np.ndarray, values: np.ndarray | None) -> float:
    from edgedistill.metrics import topk_accuracy

    return topk_accuracy(logits, labels)


def _pitch_rpa(logits: np.ndarray, labels: np.ndarray, values: np.ndarray | None) -> float:
    from edgedistill.tasks.pitch import pitch_rpa

    return pitch_rpa(logits, labels, values)


@dataclass(frozen=True)
class TaskMetric:
    """A task metric: how [M, K] logits are scored, and how reports name it.

    Attributes:
        describe: What the number is, for reports ("top-1 accuracy (%)").
        header: A short column header ("top-1 %").
        score: ``score(logits [M, K], labels [M], values [M] or None) -> float`` (higher is
            better); ``values`` are the task's exact held-out targets when it has them.
        classes: The number of classes the metric needs (None: any).
    """

    describe: str
    header: str
    score: Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]
    classes: int | None = None


METRICS: dict[str, TaskMetric] = {
    "top1": TaskMetric("top-1 accuracy (%)", "top-1 %", _top1),
    "pitch_rpa": TaskMetric(
        "raw pitch accuracy (%): decoded pitch within 50 cents of the true f0",
        "RPA % (50 cents)",
        _pitch_rpa,
        classes=360,
    ),
}
"""Task metric name -> :class:`TaskMetric` (``pitch_rpa``: :mod:`edgedistill.tasks.pitch`)."""


@dataclass(frozen=True)
class InputSpec:
    """What the model eats, and how an app makes it from the stored form.

    ``model input = (stored / divisor - mean[c]) / std[c]`` along axis 1 (the channel axis)
    when ``mean``/``std`` are set; ``stored / divisor`` otherwise; int64 inputs (token ids) pass
    through unchanged.

    Attributes:
        modality: One of :data:`MODALITIES`; picks the bundle's example program.
        shape: One sample of model input, e.g. (1, 28, 28) [C, H, W], (6, 100) [C, T],
            (16000,) [T] waveform, (128,) [L] token ids.
        dtype: Model input dtype, "float32" or "int64".
        layout: Human-readable axes of a batch, e.g. "[N, C, H, W]".
        stored_dtype: dtype of the task arrays (e.g. "uint8" pixels, "float32" raw IMU).
        divisor: Stored values are divided by this first (255 for pixels, 1 otherwise).
        mean, std: Per-channel standardisation after the division (None: none).
        raw: What an app starts from, for the manifest: units, channel names, sample rate,
            window and stride, tokenizer, ... (JSON-ready, modality-specific).
    """

    modality: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = ""
    stored_dtype: str = "float32"
    divisor: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise DataError(f"input modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.dtype not in ("float32", "int64"):
            raise DataError(f"model input dtype must be float32 or int64, got {self.dtype!r}")
        if not self.shape or any(int(d) < 1 for d in self.shape):
            raise DataError(f"input shape must be positive, got {self.shape}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if (self.mean is None) != (self.std is None):
            raise DataError("input normalisation needs both mean and std")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or len(self.mean) != self.shape[0]:
                raise DataError(
                    f"normalisation has {len(self.mean)} means and {len(self.std)} stds for "
                    f"{self.shape[0]} channels"
                )
            if not all(np.isfinite(self.mean)) or not all(s > 0 for s in self.std):
                raise DataError("normalisation needs finite means and stds > 0")

    def prepare(self, stored: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Stored samples [N, *shape] -> model input tensor [N, *shape]."""
        x = torch.as_tensor(np.asarray(stored))
        if tuple(x.shape[1:]) != self.shape:
            raise DataError(f"expected inputs shaped [N, {list(self.shape)}], got {list(x.shape)}")
        if self.dtype == "int64":
            return x.long()
        x = x.float()
        if self.divisor != 1.0:
            x = x / self.divisor
        if self.mean is None or self.std is None:
            return x
        view = (1, -1, *([1] * (len(self.shape) - 1)))
        mean = torch.tensor(self.mean, dtype=torch.float32).view(view)
        std = torch.tensor(self.std, dtype=torch.float32).view(view)
        return (x - mean) / std

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> InputSpec:
        """The same input with another standardisation (e.g. a teacher card's own)."""
        return replace(self, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    def fitted(self, x_train: np.ndarray) -> InputSpec:
        """The same contract with mean/std re-estimated on ``x_train`` (stored form): per
        channel (axis 1) over every other axis, after the division; rounded to 6 decimals so
        manifests stay readable. Specs without standardisation are returned unchanged."""
        if self.mean is None or len(x_train) == 0:
            return self
        data = np.asarray(x_train, dtype=np.float64) / self.divisor
        axes = tuple(i for i in range(data.ndim) if i != 1)
        mean = data.mean(axis=axes)
        std = np.maximum(data.std(axis=axes), 1e-6)  # a constant channel must not divide by 0
        return self.with_normalization(
            tuple(round(float(m), 6) for m in mean), tuple(round(float(v), 6) for v in std)
        )

    def normalization(self) -> dict[str, Any]:
        """The preprocessing as a JSON-ready dict (manifests, cache keys)."""
        return {
            "divisor": self.divisor,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "formula": self.formula(),
        }

    def formula(self) -> str:
        """The preprocessing in one line, for humans."""
        if self.dtype == "int64":
            return "input = token ids (see tokenizer)"
        scale = "" if self.divisor == 1.0 else f" / {self.divisor:g}"
        if self.mean is None:
            return f"input = raw{scale}"
        return f"input[c] = (raw[c]{scale} - mean[c]) / std[c]"

    def as_dict(self) -> dict[str, Any]:
        """The complete input contract, as written to a bundle manifest."""
        return {
            "name": "input",
            "modality": self.modality,
            "shape": ["N", *self.shape],
            "dtype": self.dtype,
            "layout": self.layout,
            "stored_dtype": self.stored_dtype,
            "normalization": self.normalization(),
            **self.raw,
        }


@dataclass(frozen=True, eq=False)
class Task:
    """Everything a run needs to know about its data, whatever the modality.

    Attributes:
        name: Dataset name, shown in reports.
        input: The input contract (:class:`InputSpec`).
        labels: Class names; label k is ``labels[k]``.
        x_train, x_test: [N, *input.shape] / [M, *input.shape] samples in stored form.
        y_train: [N] int64 labels, :data:`UNLABELLED` (-1) where a sample has none.
        y_test: [M] int64 labels (every held-out sample is labelled).
        groups_train, groups_test: [N] / [M] int64 group (subject, speaker, recording) of
            each sample, or None; splits are group-disjoint when given.
        metric: The task metric reported for every model, a key of :data:`METRICS` ("top1":
            top-1 accuracy in %; "pitch_rpa": raw pitch accuracy in %).
        source: Where the data came from (a path, a package, a generator and its version).
        paired: Other synchronised streams of the *training* samples, aligned with
            ``x_train`` (cross-modal pre-training), or None.
        y_test_value: [M] float64 exact target of each held-out sample for a metric that
            scores more than the class (``pitch_rpa``: the true f0 in Hz, where the label is
            only its nearest bin), or None.
    """

    name: str
    input: InputSpec
    labels: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    metric: str = "top1"
    source: str = ""
    paired: Any = None
    y_test_value: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise DataError(f"{self.name}: need >= 2 unique class names, got {list(self.labels)}")
        for split, x, y, g in (
            ("train", self.x_train, self.y_train, self.groups_train),
            ("test", self.x_test, self.y_test, self.groups_test),
        ):
            if len(x) == 0:
                raise DataError(f"{self.name}: the {split} split is empty")
            if tuple(x.shape[1:]) != self.input.shape:
                raise DataError(
                    f"{self.name}: {split} samples are {list(x.shape[1:])}, the input spec says "
                    f"{list(self.input.shape)}"
                )
            if y.shape != (len(x),) or (g is not None and g.shape != y.shape):
                raise DataError(f"{self.name}: {split} samples, labels and groups differ in length")
            low = UNLABELLED if split == "train" else 0
            if y.min() < low or y.max() >= len(self.labels):
                raise DataError(
                    f"{self.name}: {split} label {int(y.max() if y.max() >= 0 else y.min())} "
                    f"outside 0..{len(self.labels) - 1} ({len(self.labels)} class names)"
                )
        if (self.groups_train is None) != (self.groups_test is None):
            raise DataError(f"{self.name}: groups must be given for both splits or neither")
        metric = METRICS.get(self.metric)
        if metric is None:
            known = ", ".join(METRICS)
            raise DataError(f"{self.name}: unknown metric {self.metric!r} (known: {known})")
        if metric.classes is not None and len(self.labels) != metric.classes:
            raise DataError(
                f"{self.name}: metric {self.metric} needs {metric.classes} classes, got "
                f"{len(self.labels)}"
            )
        value = self.y_test_value
        if value is not None and (value.shape != self.y_test.shape or not np.isfinite(value).all()):
            raise DataError(
                f"{self.name}: y_test_value must be {len(self.y_test)} finite values, one per "
                f"test sample, got {value.dtype} {list(value.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def modality(self) -> str:
        return self.input.modality

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every array, the labels and the input contract: keys every cache."""
        digest = hashlib.sha256()
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        for array in (*arrays, self.groups_train, self.groups_test):
            if array is None:
                digest.update(b"none")
                continue
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        meta = {"labels": self.labels, "input": self.input.as_dict(), "metric": self.metric}
        digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
        if self.paired is not None:
            digest.update(str(self.paired.fingerprint()).encode())
        if self.y_test_value is not None:  # absent: the digest of tasks without one is unchanged
            value = np.ascontiguousarray(self.y_test_value)
            digest.update(f"y_test_value{value.dtype}{value.shape}".encode() + value.tobytes())
        return digest.hexdigest()

    @cached_property
    def train_inputs(self) -> torch.Tensor:
        """[N, *shape] model inputs of the training split."""
        return self.input.prepare(self.x_train)

    @cached_property
    def test_inputs(self) -> torch.Tensor:
        """[M, *shape] model inputs of the held-out split."""
        return self.input.prepare(self.x_test)

    @property
    def labelled(self) -> np.ndarray:
        """[N] bool: which training samples carry a label."""
        return self.y_train >= 0

    def calibration_index(self, n: int, seed: int) -> np.ndarray:
        """Sorted indices of a seeded sample of ``n`` training samples (all if fewer)."""
        count = min(n, len(self.y_train))
        order = np.random.default_rng(seed + 1).permutation(len(self.y_train))
        return np.sort(order[:count])

    def calibration(self, n: int, seed: int) -> torch.Tensor:
        """Model inputs of a seeded sample of ``n`` training samples (INT8 calibration,
        pruning look-ahead)."""
        return self.input.prepare(self.x_train[self.calibration_index(n, seed)])

    @property
    def metric_info(self) -> TaskMetric:
        """The :class:`TaskMetric` of :attr:`metric` (description and column header)."""
        return METRICS[self.metric]

    def score(self, logits: np.ndarray, labels: np.ndarray | None = None) -> float:
        """The task metric of [M, K] logits against ``labels`` (default: the test labels).

        The exact targets :attr:`y_test_value` take part when the test labels are scored
        (``labels`` None or ``y_test`` itself); other labels, e.g. a validation split of the
        training data, are scored against their classes alone.
        """
        test = labels is None or labels is self.y_test
        values = self.y_test_value if test else None
        return self.metric_info.score(logits, self.y_test if labels is None else labels, values)

    # ---- derived tasks -------------------------------------------------------------------
    def subset_train(self, limit: int | None, seed: int) -> Task:
        """The first ``limit`` training samples after a seeded shuffle (all when None)."""
        if limit is None or limit >= len(self.y_train):
            return self
        order = np.sort(np.random.default_rng(seed).permutation(len(self.y_train))[:limit])
        return self._take_train(order)

    def with_label_fraction(self, fraction: float, seed: int) -> Task:
        """Keep the labels of a seeded, class-stratified ``fraction`` of the labelled training
        samples; the others become unlabelled (label-free pre-training still sees them)."""
        if fraction >= 1.0:
            return self
        from edgedistill.probe import subsample_labels

        keep = subsample_labels(self.y_train, fraction, seed=seed)
        y = np.full_like(self.y_train, UNLABELLED)
        y[keep] = self.y_train[keep]
        return replace(self, y_train=y)

    def with_unlabelled(self, extra: np.ndarray, *, use_labels: bool = True) -> Task:
        """Append unlabelled samples to the training split; ``use_labels=False`` drops every
        training label (label-free distillation from teacher soft labels)."""
        if extra.ndim != self.x_train.ndim or extra.shape[1:] != self.x_train.shape[1:]:
            raise DataError(
                f"unlabelled samples {list(extra.shape)} do not match the training samples "
                f"[N, {', '.join(str(d) for d in self.x_train.shape[1:])}]"
            )
        labels = self.y_train if use_labels else np.full_like(self.y_train, UNLABELLED)
        groups = self.groups_train
        if groups is not None:
            groups = np.concatenate([groups, np.full(len(extra), -1, dtype=np.int64)])
        return replace(
            self,
            x_train=np.concatenate([self.x_train, extra.astype(self.x_train.dtype)]),
            y_train=np.concatenate([labels, np.full(len(extra), UNLABELLED, dtype=np.int64)]),
            groups_train=groups,
            paired=None,
        )

    def _take_train(self, index: np.ndarray) -> Task:
        paired = self.paired.subset(index) if self.paired is not None else None
        return replace(
            self,
            x_train=self.x_train[index],
            y_train=self.y_train[index],
            groups_train=None if self.groups_train is None else self.groups_train[index],
            paired=paired,
        )

    def summary(self) -> str:
        """One line for the console: sizes, classes, groups."""
        n_lab = int(self.labelled.sum())
        lab = "" if n_lab == len(self.y_train) else f" ({n_lab} labelled)"
        groups = ""
        if self.groups_train is not None and self.groups_test is not None:
            groups = (
                f", groups {len(np.unique(self.groups_train))} train / "
                f"{len(np.unique(self.groups_test))} held out"
            )
        return (
            f"{self.name}: {self.modality} {list(self.input.shape)}, {len(self.y_train)} train"
            f"{lab} / {len(self.y_test)} test, {self.num_classes} classes{groups}"
        )
