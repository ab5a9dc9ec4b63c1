"""Hinton KD loss: hand-computed values, the T² factor, gradients and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.distill.kd import KDLoss, kd_loss


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) in nats, computed with plain math."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_hand_computed_case_at_t1() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert expected == pytest.approx(0.1308120, abs=1e-6)
    loss = kd_loss(student, teacher, temperature=1.0)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_case_at_t2_has_t_squared_factor() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    # teacher / 2 = (ln sqrt(3), 0) -> p_t = (sqrt3 / (sqrt3 + 1), 1 / (sqrt3 + 1))
    s3 = math.sqrt(3.0)
    p_t = [s3 / (s3 + 1), 1 / (s3 + 1)]
    kl = _kl(p_t, [0.5, 0.5])
    expected = 4.0 * kl  # T² = 4
    assert expected == pytest.approx(
        4 * (0.6339746 * math.log(1.2679492) + 0.3660254 * math.log(0.7320508)), rel=1e-6
    )
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)
    # Without the T² factor the value would be the bare KL: make sure that is not what we get.
    assert kd_loss(student, teacher, temperature=2.0).item() != pytest.approx(kl, rel=1e-3)


def test_batch_is_averaged_not_summed() -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])  # second row: KL = 0
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_three_classes_hand_case() -> None:
    student = torch.tensor(
        [[math.log(1.0), math.log(2.0), math.log(5.0)]]
    )  # p_s = (.125, .25, .625)
    teacher = torch.tensor([[math.log(2.0), math.log(1.0), math.log(1.0)]])  # p_t = (.5, .25, .25)
    expected = _kl([0.5, 0.25, 0.25], [0.125, 0.25, 0.625])
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kl_direction_is_teacher_to_student() -> None:
    # KL is asymmetric: swapping the arguments must change the value (checks p_t weights the sum).
    s = torch.tensor([[math.log(1.0), math.log(2.0), math.log(5.0)]])
    t = torch.tensor([[math.log(2.0), math.log(1.0), math.log(1.0)]])
    forward = _kl([0.5, 0.25, 0.25], [0.125, 0.25, 0.625])
    reverse = _kl([0.125, 0.25, 0.625], [0.5, 0.25, 0.25])
    assert forward != pytest.approx(reverse, rel=1e-2)
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(forward, rel=1e-6)
    assert kd_loss(t, s, temperature=1.0).item() == pytest.approx(reverse, rel=1e-6)


def test_zero_when_equal_and_invariant_to_logit_shift() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 10) * 3
    for temperature in (0.5, 1.0, 4.0, 20.0):
        assert kd_loss(z, z.clone(), temperature=temperature).item() == pytest.approx(0.0, abs=1e-5)
        # softmax ignores a per-row constant, so shifting the student changes nothing
        assert kd_loss(z + 7.0, z, temperature=temperature).item() == pytest.approx(0.0, abs=1e-5)


def test_non_negative_on_random_inputs() -> None:
    torch.manual_seed(1)
    for _ in range(20):
        s, t = torch.randn(8, 5) * 4, torch.randn(8, 5) * 4
        for temperature in (0.3, 1.0, 4.0):
            assert kd_loss(s, t, temperature=temperature).item() >= 0.0


def test_matches_per_sample_formula_on_random_inputs() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    temperature = 3.0
    total = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist(), strict=True):

        def soft(row: list[float]) -> list[float]:
            e = [math.exp(v / temperature) for v in row]
            return [v / sum(e) for v in e]

        total += _kl(soft(row_t), soft(row_s))
    expected = temperature**2 * total / len(s)
    assert kd_loss(s, t, temperature=temperature).item() == pytest.approx(expected, rel=1e-10)


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(3)
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    temperature = 2.0
    kd_loss(student, teacher, temperature=temperature).backward()
    assert teacher.grad is None
    assert student.grad is not None
    # d/ds [T² · mean_b KL(p_t || p_s)] = T · (p_s - p_t) / B
    p_s = torch.softmax(student.detach() / temperature, dim=-1)
    p_t = torch.softmax(teacher.detach() / temperature, dim=-1)
    expected = temperature * (p_s - p_t) / student.shape[0]
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-6)


def test_large_temperature_approaches_logit_matching() -> None:
    # Hinton 2015, section 2.1: for large T, T²·KL -> 1/(2K) · Σ_k ((s - mean s) - (t - mean t))_k²
    torch.manual_seed(4)
    s = torch.randn(5, 6, dtype=torch.float64)
    t = torch.randn(5, 6, dtype=torch.float64)
    k = s.shape[1]
    d = (s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))
    limit = (0.5 * (d**2).sum(1) / k).mean().item()
    value = kd_loss(s, t, temperature=200.0).item()
    assert value == pytest.approx(limit, rel=5e-3)
    # and at T = 1 the value is clearly different (the limit is not trivially reached)
    assert kd_loss(s, t, temperature=1.0).item() != pytest.approx(limit, rel=2e-2)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_raises(temperature: float) -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, z, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature)


@pytest.mark.parametrize("shapes", [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((6,), (2, 3))])
def test_shape_mismatch_raises(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    with pytest.raises(ValueError, match="shape"):
        kd_loss(torch.zeros(shapes[0]), torch.zeros(shapes[1]), temperature=1.0)


def test_module_form_matches_function() -> None:
    torch.manual_seed(5)
    s, t = torch.randn(7, 4), torch.randn(7, 4)
    module = KDLoss(temperature=3.0)
    assert module.temperature == 3.0
    assert module(s, t).item() == pytest.approx(kd_loss(s, t, temperature=3.0).item(), rel=1e-7)
    assert KDLoss()(s, t).item() == pytest.approx(kd_loss(s, t, temperature=4.0).item(), rel=1e-7)
