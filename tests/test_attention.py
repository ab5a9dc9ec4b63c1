"""Attention transfer: hand-computed maps and loss, channel/spatial mismatch, gradients, checks."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.distill.attention import ATLoss, at_loss, attention_map


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _sq_dist(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


# student 1×2×2×2: channel 0 = [[1, 0], [0, 1]], channel 1 = [[-1, 2], [0, 1]]
STUDENT = [[[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 2.0], [0.0, 1.0]]]]
# teacher 1×3×2×2 (a different channel count): only two non-zero entries
TEACHER = [[[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -2.0]], [[0.0, 0.0], [0.0, 0.0]]]]


def test_hand_computed_attention_map_p2() -> None:
    # mean over the 2 channels of f²: ((1+1)/2, (0+4)/2, (0+0)/2, (1+1)/2) = (1, 2, 0, 1)
    expected = _unit([1.0, 2.0, 0.0, 1.0])
    assert expected == pytest.approx([1 / math.sqrt(6), 2 / math.sqrt(6), 0.0, 1 / math.sqrt(6)])
    q = attention_map(torch.tensor(STUDENT))
    assert q.shape == (1, 4)
    torch.testing.assert_close(q, torch.tensor([expected]))


def test_hand_computed_attention_map_p1_uses_absolute_values() -> None:
    # mean over channels of |f|: ((1+1)/2, (0+2)/2, 0, (1+1)/2) = (1, 1, 0, 1)
    q = attention_map(torch.tensor(STUDENT), p=1)
    torch.testing.assert_close(q, torch.tensor([_unit([1.0, 1.0, 0.0, 1.0])]))


def test_hand_computed_loss_with_different_channel_counts() -> None:
    q_s = _unit([1.0, 2.0, 0.0, 1.0])
    # teacher: mean over 3 channels of f² = (4/3, 0, 0, 4/3) -> (1, 0, 0, 1) / sqrt2
    q_t = _unit([4 / 3, 0.0, 0.0, 4 / 3])
    expected = _sq_dist(q_s, q_t)
    assert expected == pytest.approx(2 - 2 * (2 / math.sqrt(12)), rel=1e-12)  # 2 - 2·cos
    loss = at_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_batch_is_averaged_and_3d_features() -> None:
    # [B, C, T] with B = 2, T = 3; sample 0 maps are equal (contributes 0)
    student = torch.tensor([[[1.0, 2.0, 2.0]], [[1.0, 0.0, 0.0]]])
    teacher = torch.tensor(
        [[[-2.0, 4.0, 4.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]]
    )
    # sample 1: student f² = (1, 0, 0), teacher mean_c f² = (0, 0, 4.5) -> orthogonal unit vectors
    expected = (0.0 + _sq_dist([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])) / 2
    assert at_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert expected == 1.0


def test_mismatched_spatial_size_pools_the_larger_map() -> None:
    # student 1×1×4×4 with f² = arange(16); pooled over 2×2 blocks to the teacher's 2×2
    student = torch.arange(16.0).sqrt().reshape(1, 1, 4, 4)
    block_means = [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4]
    block_means.append((10 + 11 + 14 + 15) / 4)
    teacher = torch.ones(1, 2, 2, 2)
    expected = _sq_dist(_unit(block_means), _unit([1.0, 1.0, 1.0, 1.0]))
    assert at_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # the direction of the mismatch does not matter: the teacher can be the larger one
    assert at_loss(teacher, student).item() == pytest.approx(expected, rel=1e-5)
    # 1-D: a length-4 student against a length-2 teacher
    s1 = torch.tensor([[[1.0, 1.0, 0.0, 2.0]]])  # f² = (1, 1, 0, 4) -> pooled (1, 2)
    t1 = torch.tensor([[[1.0, 0.0]]])
    expected_1d = _sq_dist(_unit([1.0, 2.0]), [1.0, 0.0])
    assert at_loss(s1, t1).item() == pytest.approx(expected_1d, rel=1e-6)


def test_zero_when_maps_equal() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(3, 4, 5, 5)
    # duplicated channels, sign flips and a global scale leave the normalised map unchanged
    student = 2.5 * torch.cat([teacher, -teacher], dim=1)
    assert at_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    x = torch.randn(2, 3, 7)
    assert at_loss(x, x.clone(), p=4).item() == pytest.approx(0.0, abs=1e-6)


def test_non_negative_and_bounded() -> None:
    torch.manual_seed(1)
    for _ in range(10):
        value = at_loss(torch.randn(4, 3, 6, 6), torch.randn(4, 8, 3, 3)).item()
        assert 0.0 <= value <= 2.0


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(2)
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 5, 2, 2, requires_grad=True)
    at_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum().item() > 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="rank"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="batch"):
        at_loss(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        attention_map(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        at_loss(torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        at_loss(torch.randn(0, 3, 4), torch.randn(0, 3, 4))
    for p in (0.0, 0.5, -2.0):
        with pytest.raises(ValueError, match="p must"):
            at_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), p=p)
        with pytest.raises(ValueError, match="p must"):
            attention_map(torch.randn(2, 3, 4), p=p)
        with pytest.raises(ValueError, match="p must"):
            ATLoss(p)


def test_module_form_matches_function() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(3, 4, 6, 6), torch.randn(3, 2, 6, 6)
    assert ATLoss(p=4)(s, t).item() == pytest.approx(at_loss(s, t, p=4).item(), rel=1e-7)
    assert ATLoss()(s, t).item() == pytest.approx(at_loss(s, t).item(), rel=1e-7)
