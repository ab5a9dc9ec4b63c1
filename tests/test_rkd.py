"""Relational KD: hand-computed distances and angles, invariances, gradients and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.distill.rkd import RKDLoss, rkd_angle_loss, rkd_distance_loss, rkd_loss


def _huber(x: float) -> float:
    """Smooth-L1 with delta = 1."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# A 3-4-5 right triangle (teacher) and an isosceles right triangle (student).
TEACHER = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]
STUDENT = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def test_hand_computed_distance_loss() -> None:
    # teacher distances 3, 4, 5: off-diagonal mean (2·3 + 2·4 + 2·5) / 6 = 4
    t = [3 / 4, 4 / 4, 5 / 4]
    # student distances 1, 1, sqrt2: mean (2 + sqrt2) / 3
    m = (2 + math.sqrt(2)) / 3
    s = [1 / m, 1 / m, math.sqrt(2) / m]
    # each unordered pair appears twice among the 3 × 3 entries; the diagonal contributes 0
    expected = 2 * sum(_huber(a - b) for a, b in zip(s, t, strict=True)) / 9
    assert expected == pytest.approx(0.00348125, rel=1e-5)
    loss = rkd_distance_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hand_computed_angle_loss() -> None:
    # cosines of the angle at each vertex: teacher 0 (right angle), 3/5, 4/5;
    # student 0, sqrt2/2, sqrt2/2. Per vertex j there are 9 (i, k) entries: 4 are degenerate
    # (i = j or k = j) -> 0, 2 have i = k -> 1, 2 are the angle (i, k) and (k, i) -> cos.
    t = [0.0, 3 / 5, 4 / 5]
    s = [0.0, math.sqrt(2) / 2, math.sqrt(2) / 2]
    expected = 2 * sum(_huber(a - b) for a, b in zip(s, t, strict=True)) / 27
    loss = rkd_angle_loss(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hand_case_reordered_collinear_points_uses_linear_huber_branch() -> None:
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]])  # last two points swapped
    # angles: teacher cos at vertices (1, -1, 1), student (1, 1, -1): two |diff| = 2 cases
    expected_angle = 2 * (_huber(2.0) + _huber(2.0)) / 27
    assert expected_angle == pytest.approx(6 / 27)
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(expected_angle, rel=1e-6)
    # distances: teacher (1, 2, 1) / (4/3), student (2, 1, 1) / (4/3) for pairs (01, 02, 12)
    t, s = [0.75, 1.5, 0.75], [1.5, 0.75, 0.75]
    expected_dist = 2 * sum(_huber(a - b) for a, b in zip(s, t, strict=True)) / 9
    assert expected_dist == pytest.approx(0.125)
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(expected_dist, rel=1e-6)
    combined = rkd_loss(student, teacher, distance_weight=2.0, angle_weight=3.0).item()
    assert combined == pytest.approx(2.0 * expected_dist + 3.0 * expected_angle, rel=1e-6)


def _random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_invariant_to_scale_rotation_and_translation() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 4, generator=g, dtype=torch.float64)
    q = _random_orthogonal(4, g)
    assert not torch.allclose(q, torch.eye(4, dtype=torch.float64))
    for scale in (0.01, 1.0, 3.7, 250.0):
        student = scale * teacher @ q + torch.randn(1, 4, generator=g, dtype=torch.float64)
        assert rkd_distance_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
        assert rkd_angle_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
        assert rkd_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-10)
    # a non-similarity map (anisotropic scaling) is not invariant
    stretched = teacher * torch.tensor([1.0, 5.0, 1.0, 1.0], dtype=torch.float64)
    assert rkd_distance_loss(stretched, teacher).item() > 1e-4
    assert rkd_angle_loss(stretched, teacher).item() > 1e-4


def test_student_and_teacher_dimensions_may_differ() -> None:
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(5, 3, generator=g, dtype=torch.float64)
    # isometric embedding of R^3 into R^7 (orthonormal columns), then scaled
    embed = _random_orthogonal(7, g)[:, :3]
    student = 2.5 * teacher @ embed.t()
    assert student.shape == (5, 7)
    assert rkd_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-10)
    assert rkd_loss(torch.randn(5, 7, generator=g, dtype=torch.float64), teacher).item() > 0


def test_zero_when_equal_non_negative_and_flattens() -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 2, 3)
    assert rkd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(4, 2, 3), torch.randn(4, 5)
    assert rkd_loss(s, t).item() == pytest.approx(rkd_loss(s.reshape(4, 6), t).item(), rel=1e-6)
    for _ in range(5):
        assert rkd_loss(torch.randn(5, 3), torch.randn(5, 4)).item() >= 0.0


def test_gradient_reaches_student_only_and_is_finite_for_duplicates() -> None:
    torch.manual_seed(3)
    student = torch.randn(5, 4)
    student[1] = student[0]  # coincident points: clamped distance and zero direction vector
    student.requires_grad_(True)
    teacher = torch.randn(5, 6, requires_grad=True)
    rkd_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum().item() > 0


def test_batch_size_limits_raise() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        rkd_distance_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least 3"):
        rkd_angle_loss(torch.randn(2, 3), torch.randn(2, 3))
    rkd_distance_loss(torch.randn(2, 3), torch.randn(2, 3))  # B = 2 is fine for distances
    with pytest.raises(ValueError, match="at least 3"):
        rkd_loss(torch.randn(2, 3), torch.randn(2, 3))
    # without the angle term a pair is enough
    assert rkd_loss(torch.randn(2, 3), torch.randn(2, 3), angle_weight=0.0).item() >= 0.0
    with pytest.raises(ValueError, match="at least 2"):
        rkd_loss(torch.randn(1, 3), torch.randn(1, 3), distance_weight=0.0, angle_weight=0.0)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="batch sizes differ"):
        rkd_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        rkd_distance_loss(torch.randn(4), torch.randn(4))
    for kwargs in ({"distance_weight": -1.0}, {"angle_weight": -0.5}):
        with pytest.raises(ValueError, match="weights"):
            rkd_loss(torch.randn(4, 3), torch.randn(4, 3), **kwargs)
        with pytest.raises(ValueError, match="weights"):
            RKDLoss(**kwargs)


def test_module_form_matches_function() -> None:
    torch.manual_seed(4)
    s, t = torch.randn(6, 3), torch.randn(6, 8)
    module = RKDLoss(distance_weight=1.0, angle_weight=2.0)
    expected = rkd_loss(s, t, distance_weight=1.0, angle_weight=2.0).item()
    assert module(s, t).item() == pytest.approx(expected, rel=1e-7)
    assert RKDLoss()(s, t).item() == pytest.approx(rkd_loss(s, t).item(), rel=1e-7)
    default = 25.0 * rkd_distance_loss(s, t) + 50.0 * rkd_angle_loss(s, t)
    assert RKDLoss()(s, t).item() == pytest.approx(default.item(), rel=1e-6)
