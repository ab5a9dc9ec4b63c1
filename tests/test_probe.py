"""Linear / few-shot probes, stratified label subsets and feature extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.errors import DataError
from edgedistill.probe import (
    ProbeResult,
    extract_features,
    few_shot_indices,
    linear_probe,
    probe_table,
    subsample_labels,
)
from edgedistill.students import build_model


def _blobs(
    n_per_class: int, k: int = 3, dim: int = 8, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k Gaussian blobs with centres 10·e_c (well separated for spread ≈ 1), shuffled."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    x = rng.normal(0.0, spread, (len(y), dim)) + 10.0 * np.eye(k, dim)[y]
    order = rng.permutation(len(y))
    return x[order], y[order]


def test_separable_blobs_give_full_accuracy() -> None:
    x, y = _blobs(40)
    tx, ty = _blobs(30, seed=1)
    result = linear_probe(x, y, tx, ty)
    assert isinstance(result, ProbeResult)
    assert result.accuracy == pytest.approx(100.0)
    assert result.n_train == 120 and result.labels_per_class is None
    assert result.classes == (0, 1, 2)
    # torch tensors are accepted too, with the same answer
    same = linear_probe(torch.from_numpy(x).float(), torch.from_numpy(y), tx, torch.from_numpy(ty))
    assert same.accuracy == pytest.approx(100.0)
    # and a 5-shot probe already separates them
    assert linear_probe(x, y, tx, ty, labels_per_class=5).accuracy == pytest.approx(100.0)


def test_random_labels_are_near_chance() -> None:
    rng = np.random.default_rng(2)
    x, tx = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    y, ty = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    result = linear_probe(x, y, tx, ty)
    assert 15.0 <= result.accuracy <= 35.0  # chance is 25 %


def test_features_are_standardised() -> None:
    # the class signal lives in a feature whose raw scale is tiny next to a noisy one
    x, y = _blobs(40, k=2, dim=2)
    tx, ty = _blobs(30, k=2, dim=2, seed=1)
    scale = np.array([1e-6, 1e3])
    shifted = linear_probe(x * scale + 5.0, y, tx * scale + 5.0, ty)
    assert shifted.accuracy == pytest.approx(linear_probe(x, y, tx, ty).accuracy)


def test_few_shot_picks_exactly_k_per_class_deterministically() -> None:
    _, y = _blobs(30, k=4)
    y[:10] = -1  # unlabelled rows are never picked
    for k in (1, 5, 12):
        rows = few_shot_indices(y, k, seed=3)
        assert len(rows) == 4 * k and len(set(rows.tolist())) == 4 * k
        assert np.bincount(y[rows], minlength=4).tolist() == [k] * 4
        np.testing.assert_array_equal(rows, few_shot_indices(y, k, seed=3))
    assert not np.array_equal(few_shot_indices(y, 5, seed=0), few_shot_indices(y, 5, seed=1))
    # the probe itself is deterministic per seed
    x, _ = _blobs(30, k=4, spread=6.0)
    tx, ty = _blobs(30, k=4, spread=6.0, seed=1)
    runs = [linear_probe(x, y, tx, ty, labels_per_class=2, seed=s) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0].n_train == 8 and runs[0].labels_per_class == 2


def test_insufficient_examples_raise_data_error_naming_the_class() -> None:
    x, y = _blobs(10)
    y[y == 2] = np.where(np.arange((y == 2).sum()) < 3, 2, -1)  # class 2 keeps 3 labels
    with pytest.raises(DataError, match="class 2 has 3"):
        linear_probe(x, y, x, np.maximum(y, 0), labels_per_class=5)
    assert linear_probe(x, y, x, np.maximum(y, 0), labels_per_class=3).n_train == 9


def test_unlabelled_rows_are_ignored() -> None:
    x, y = _blobs(40)
    tx, ty = _blobs(30, seed=1)
    garbage = np.random.default_rng(3).normal(0.0, 100.0, (200, x.shape[1]))
    mixed_x = np.concatenate([x, garbage])
    mixed_y = np.concatenate([y, np.full(200, -1)])
    result = linear_probe(mixed_x, mixed_y, tx, ty)
    assert result.n_train == 120 and result.classes == (0, 1, 2)
    assert result.accuracy == pytest.approx(linear_probe(x, y, tx, ty).accuracy)


def test_bad_inputs_raise_data_error() -> None:
    x, y = _blobs(5)
    with pytest.raises(DataError, match="2-D"):
        linear_probe(x[:, 0], y, x, y)
    with pytest.raises(DataError, match="length"):
        linear_probe(x, y[:-1], x, y)
    with pytest.raises(DataError, match="dimension"):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(DataError, match=">= 0"):
        linear_probe(x, y, x, np.full_like(y, -1))
    with pytest.raises(DataError, match="2 classes"):
        linear_probe(x, np.zeros_like(y), x, y)
    with pytest.raises(DataError, match="finite"):
        linear_probe(np.full_like(x, np.nan), y, x, y)
    with pytest.raises(DataError, match="integer"):
        linear_probe(x, y + 0.5, x, y)
    with pytest.raises(DataError, match="labels_per_class"):
        few_shot_indices(y, 0)


def test_probe_table_rows_and_seed_average() -> None:
    x, y = _blobs(25, k=3, spread=5.0)
    tx, ty = _blobs(20, k=3, spread=5.0, seed=1)
    rows = probe_table(x, y, tx, ty, shots=(None, 2), seeds=(0, 1, 2))
    assert [(r["shots"], r["seed"]) for r in rows] == [
        (None, None),
        (2, 0),
        (2, 1),
        (2, 2),
        (2, None),
    ]
    assert all(set(r) == {"shots", "seed", "accuracy", "std", "n_train"} for r in rows)
    assert rows[0]["accuracy"] == linear_probe(x, y, tx, ty).accuracy
    assert rows[0]["std"] == 0.0 and rows[0]["n_train"] == 75
    per_seed = [r["accuracy"] for r in rows[1:4]]
    assert per_seed[1] == linear_probe(x, y, tx, ty, labels_per_class=2, seed=1).accuracy
    assert rows[4]["accuracy"] == pytest.approx(np.mean(per_seed))
    assert rows[4]["std"] == pytest.approx(np.std(per_seed))
    assert rows[4]["n_train"] == 6


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_stratified_subsample_counts(fraction: float) -> None:
    rng = np.random.default_rng(4)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate([700, 200, 90, 9, 1])])
    labels = np.concatenate([labels, np.full(50, -1)])[rng.permutation(len(labels) + 50)]
    rows = subsample_labels(labels, fraction, seed=5)
    n_labelled = 1000
    assert len(rows) == max(5, round(fraction * n_labelled))
    assert len(np.unique(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows], minlength=5)
    assert (labels[rows] >= 0).all()
    assert (counts >= 1).all()  # every class survives, even at 1 %
    for c, n in enumerate([700, 200, 90, 9, 1]):  # and each keeps about its share
        assert abs(counts[c] - fraction * n) <= 1.0 + (fraction * n < 1)
    np.testing.assert_array_equal(rows, subsample_labels(labels, fraction, seed=5))


def test_subsample_exact_small_case_and_errors() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2])  # 4 / 6 / 2 of 12
    rows = subsample_labels(labels, 0.5, seed=0)
    assert np.bincount(labels[rows]).tolist() == [2, 3, 1]
    assert not np.array_equal(rows, subsample_labels(labels, 0.5, seed=1))
    assert np.bincount(labels[subsample_labels(labels, 0.1, seed=0)]).tolist() == [1, 1, 1]
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match="fraction"):
            subsample_labels(labels, fraction, seed=0)
    with pytest.raises(DataError, match="no labelled rows"):
        subsample_labels(np.full(4, -1), 0.5, seed=0)


def test_extract_features_uses_forward_features_of_a_student() -> None:
    torch.manual_seed(0)
    config = {"in_channels": 3, "num_classes": 4, "widths": [8, 16], "kernel_size": 3}
    model = build_model("imu_cnn", config)
    model.train()
    x = torch.randn(10, 3, 32)
    features = extract_features(model, x, batch_size=3)
    assert isinstance(features, np.ndarray) and features.dtype == np.float32
    assert features.shape == (10, 16)  # pooled features, not the 4 logits
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        expected = model.forward_features(x)  # type: ignore[operator]
    # eval-mode batch norm: the batch size does not change the features
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extract_features(model, x), features, rtol=1e-5, atol=1e-6)


def test_extract_features_falls_back_to_the_output_and_checks_inputs() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.9))  # dropout would differ in train
    x = torch.randn(7, 5, requires_grad=True)
    out = extract_features(model, x, batch_size=2)
    np.testing.assert_allclose(out, model[0](x).detach().numpy(), rtol=1e-6, atol=1e-6)
    assert x.grad is None
    with pytest.raises(DataError, match="non-empty"):
        extract_features(model, torch.zeros(0, 5))
    with pytest.raises(DataError, match="batch_size"):
        extract_features(model, x, batch_size=0)
