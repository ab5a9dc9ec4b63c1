"""Metric functions and model size counters, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.metrics import (
    agreement,
    count_macs,
    count_params,
    max_abs_diff,
    predict_logits,
    topk_accuracy,
)
from edgedistill.students.vision import ConvNet

LOGITS = np.array(
    [
        [0.1, 0.5, 0.4],  # ranking 1, 2, 0
        [0.9, 0.05, 0.06],  # ranking 0, 2, 1
        [0.2, 0.3, 0.5],  # ranking 2, 1, 0
        [0.7, 0.1, 0.2],  # ranking 0, 2, 1
    ],
    dtype=np.float32,
)
LABELS = np.array([2, 0, 0, 1])


def test_topk_accuracy_hand_case() -> None:
    # top-1 predictions 1, 0, 2, 0 -> only sample 1 is right
    assert topk_accuracy(LOGITS, LABELS, k=1) == pytest.approx(25.0)
    # top-2 sets {1,2}, {0,2}, {2,1}, {0,2} -> samples 0 and 1 are right
    assert topk_accuracy(LOGITS, LABELS, k=2) == pytest.approx(50.0)
    assert topk_accuracy(LOGITS, LABELS, k=3) == pytest.approx(100.0)
    assert topk_accuracy(LOGITS, LABELS) == topk_accuracy(LOGITS, LABELS, k=1)


def test_topk_accuracy_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 200)
    for k in range(1, 8):
        ranked = np.argsort(-logits, axis=1)[:, :k]
        expected = 100.0 * np.mean([labels[i] in ranked[i] for i in range(200)])
        assert topk_accuracy(logits, labels, k=k) == pytest.approx(expected)


def test_topk_accuracy_accepts_lists() -> None:
    assert topk_accuracy([[0.0, 1.0], [1.0, 0.0]], [1, 1]) == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("logits", "labels", "k"),
    [
        (LOGITS, LABELS, 0),
        (LOGITS, LABELS, 4),
        (LOGITS, LABELS[:3], 1),
        (LOGITS[0], LABELS[:1], 1),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), 1),
    ],
)
def test_topk_accuracy_rejects_bad_input(logits: np.ndarray, labels: np.ndarray, k: int) -> None:
    with pytest.raises(ValueError):
        topk_accuracy(logits, labels, k=k)


def test_agreement_hand_case() -> None:
    other = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    # argmax: LOGITS 1,0,2,0 vs other 1,2,2,0 -> 3 of 4 agree
    assert agreement(LOGITS, other) == pytest.approx(75.0)
    assert agreement(LOGITS, LOGITS * 3 + 1) == pytest.approx(100.0)
    assert agreement(other, LOGITS) == pytest.approx(75.0)


@pytest.mark.parametrize("b", [np.zeros((4, 2)), np.zeros((3, 3)), np.zeros(12)])
def test_agreement_rejects_shape_mismatch(b: np.ndarray) -> None:
    with pytest.raises(ValueError):
        agreement(LOGITS, b)
    with pytest.raises(ValueError):
        agreement(np.zeros(3), np.zeros(3))


def test_max_abs_diff_hand_case() -> None:
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    b = np.array([[1.0, 2.5, 3.0], [4.0, 5.0, 3.5]], dtype=np.float32)
    diff, index = max_abs_diff(a, b)
    assert diff == pytest.approx(2.5)
    assert index == (1, 2)
    assert all(isinstance(i, int) for i in index)
    # sign does not matter
    assert max_abs_diff(b, a) == (pytest.approx(2.5), (1, 2))
    assert max_abs_diff(a, a) == (0.0, (0, 0))


def test_max_abs_diff_is_computed_in_float64() -> None:
    # 1 + 2**-30 is not representable in float32; in float64 the difference survives
    a = np.array([1.0 + 2**-30], dtype=np.float64)
    diff, _ = max_abs_diff(a, np.array([1.0]))
    assert diff == pytest.approx(2**-30, rel=1e-9)


def test_max_abs_diff_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        max_abs_diff(np.zeros((2, 3)), np.zeros((3, 2)))


def test_count_params_hand_cases() -> None:
    assert count_params(nn.Linear(3, 4)) == 3 * 4 + 4
    assert count_params(nn.Conv2d(2, 5, 3, bias=False)) == 2 * 5 * 9
    model = ConvNet(in_channels=1, num_classes=3, widths=(4, 8))
    # conv 1->4 (36) + BN 4 (8) + conv 4->8 (288) + BN 8 (16) + linear 8->3 (27)
    assert count_params(model) == 36 + 8 + 288 + 16 + 27
    # frozen parameters are counted too
    for p in model.parameters():
        p.requires_grad_(False)
    assert count_params(model) == 375


def test_count_macs_single_conv() -> None:
    # torch-pruning's convention: a conv costs k_h·k_w·C_in·C_out per output position, plus
    # C_out per position when it has a bias (the bias add counted as one op).
    with_bias = nn.Conv2d(1, 8, 3, padding=1)
    assert count_macs(with_bias, (1, 8, 8)) == 8 * 9 * 64 + 8 * 64
    no_bias = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    assert count_macs(no_bias, (1, 8, 8)) == 8 * 9 * 64
    strided = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    assert count_macs(strided, (3, 8, 8)) == 3 * 4 * 9 * 16


def test_count_macs_linear_and_convnet() -> None:
    # linear: in·out + out (bias)
    assert count_macs(nn.Linear(10, 4), (10,)) == 44
    model = ConvNet(in_channels=1, num_classes=3, widths=(4, 8))
    # torch-pruning also counts elementwise ops: BN 2 per element (affine), ReLU 1 per
    # element, adaptive pooling 1 per input element.
    conv1 = 1 * 4 * 9 * 64
    bn1, relu1 = 2 * 4 * 64, 4 * 64
    conv2 = 4 * 8 * 9 * 16  # stride 2: 4x4 outputs
    bn2, relu2 = 2 * 8 * 16, 8 * 16
    pool = 8 * 16
    linear = 8 * 3 + 3
    expected = conv1 + bn1 + relu1 + conv2 + bn2 + relu2 + pool + linear
    assert count_macs(model, (1, 8, 8)) == expected


def test_count_macs_keeps_training_mode_and_weights() -> None:
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(4, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (1, 8, 8))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched
    model.eval()
    count_macs(model, (1, 8, 8))
    assert not model.training


def test_predict_logits_batches_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(4, 8)).train()
    x = torch.randn(7, 1, 8, 8)
    out = predict_logits(model, x, batch_size=3)
    assert out.shape == (7, 3) and out.dtype == np.float32
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
