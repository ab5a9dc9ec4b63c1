"""Normalised L2 embedding loss: hand-computed values, 2 − 2cos, invariances, gradients, checks."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.distill.l2 import NormalizedL2Loss, normalized_l2_loss


def test_hand_computed_case() -> None:
    student = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, -5.0]])
    # row 0: (0.6, 0.8) - (1, 0) = (-0.4, 0.8) -> 0.16 + 0.64 = 0.8
    # row 1: (0, 1) - (0, -1) = (0, 2) -> 4 (opposite directions: the maximum)
    expected = ((-0.4) ** 2 + 0.8**2 + 0.0**2 + 2.0**2) / 2
    assert expected == pytest.approx(2.4)
    loss = normalized_l2_loss(student, teacher)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_orthogonal_and_45_degree_rows() -> None:
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.0, 7.0], [2.0, 0.0]])
    expected = (2.0 + (2.0 - 2.0 * math.cos(math.pi / 4))) / 2  # orthogonal: 2; 45°: 2 - √2
    assert normalized_l2_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_equals_two_minus_two_cosine() -> None:
    torch.manual_seed(0)
    s = torch.randn(9, 5, dtype=torch.float64)
    t = torch.randn(9, 5, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(s, t, dim=1)
    expected = (2.0 - 2.0 * cos).mean().item()
    assert normalized_l2_loss(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_scale_invariance_and_zero_when_parallel() -> None:
    torch.manual_seed(1)
    s = torch.randn(6, 4)
    t = torch.randn(6, 4)
    base = normalized_l2_loss(s, t).item()
    scales = torch.tensor([[0.01], [1.0], [3.0], [50.0], [0.5], [7.0]])
    assert normalized_l2_loss(s * scales, t * 9.0).item() == pytest.approx(base, rel=1e-5)
    assert normalized_l2_loss(t * scales, t).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_l2_loss(-t, t).item() == pytest.approx(4.0, rel=1e-6)


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(2)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    normalized_l2_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # the loss only depends on the direction: the gradient is orthogonal to each student row
    radial = (student.grad * student.detach()).sum(dim=1)
    torch.testing.assert_close(radial, torch.zeros(4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shapes", [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((6,), (6,))])
def test_shape_mismatch_raises(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    with pytest.raises(ValueError):
        normalized_l2_loss(torch.randn(shapes[0]), torch.randn(shapes[1]))


def test_module_form_matches_function() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    assert NormalizedL2Loss()(s, t).item() == pytest.approx(
        normalized_l2_loss(s, t).item(), rel=1e-7
    )
