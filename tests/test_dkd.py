"""Decoupled KD: hand-computed values, the Eq. 5 decomposition of Hinton KD, gradients, checks."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.distill.dkd import DKDLoss, dkd_loss
from edgedistill.distill.kd import kd_loss


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) in nats, computed with plain math."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _soft(row: list[float], temperature: float) -> list[float]:
    e = [math.exp(v / temperature) for v in row]
    return [v / sum(e) for v in e]


# p_s = (1/8, 2/8, 5/8), p_t = (2/4, 1/4, 1/4) at T = 1; target class 0.
STUDENT = [[math.log(1.0), math.log(2.0), math.log(5.0)]]
TEACHER = [[math.log(2.0), math.log(1.0), math.log(1.0)]]
# binary (target, rest): teacher (1/2, 1/2), student (1/8, 7/8)
TCKD_HAND = 0.5 * math.log(0.5 / 0.125) + 0.5 * math.log(0.5 / 0.875)
# non-target classes renormalised: teacher (1/2, 1/2), student (2/7, 5/7)
NCKD_HAND = 0.5 * math.log(0.5 / (2 / 7)) + 0.5 * math.log(0.5 / (5 / 7))


def test_hand_computed_tckd_and_nckd_three_classes() -> None:
    # closed forms: TCKD = ½ ln(16/7) ≈ 0.4133393, NCKD = ½ ln(49/40) ≈ 0.1014704
    assert math.isclose(TCKD_HAND, 0.5 * math.log(16 / 7), rel_tol=1e-12)
    assert math.isclose(NCKD_HAND, 0.5 * math.log(49 / 40), rel_tol=1e-12)
    assert math.isclose(TCKD_HAND, 0.4133393, abs_tol=1e-6)
    assert math.isclose(NCKD_HAND, 0.1014704, abs_tol=1e-6)
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([0])
    tckd = dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=1.0)
    nckd = dkd_loss(s, t, y, alpha=0.0, beta=1.0, temperature=1.0)
    assert tckd.shape == ()
    assert tckd.item() == pytest.approx(TCKD_HAND, rel=1e-6)
    assert nckd.item() == pytest.approx(NCKD_HAND, rel=1e-6)
    both = dkd_loss(s, t, y, alpha=2.0, beta=8.0, temperature=1.0)
    assert both.item() == pytest.approx(2.0 * TCKD_HAND + 8.0 * NCKD_HAND, rel=1e-6)


def test_hand_case_eq5_decomposition() -> None:
    # KD = TCKD + (1 - p_t^target) · NCKD; here p_t^target = 1/2.
    kd_hand = _kl([0.5, 0.25, 0.25], [0.125, 0.25, 0.625])
    assert kd_hand == pytest.approx(TCKD_HAND + 0.5 * NCKD_HAND, rel=1e-12)


def test_target_choice_matters() -> None:
    # target class 2: binary teacher (1/4, 3/4) vs student (5/8, 3/8);
    # non-target (classes 0, 1): teacher (2/3, 1/3) vs student (1/3, 2/3).
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    tckd = _kl([0.25, 0.75], [0.625, 0.375])
    nckd = _kl([2 / 3, 1 / 3], [1 / 3, 2 / 3])
    value = dkd_loss(s, t, torch.tensor([2]), alpha=1.0, beta=3.0, temperature=1.0)
    assert value.item() == pytest.approx(tckd + 3.0 * nckd, rel=1e-6)


def test_temperature_scales_logits_and_multiplies_by_t_squared() -> None:
    temperature = 2.0
    p_s = _soft(STUDENT[0], temperature)
    p_t = _soft(TEACHER[0], temperature)
    tckd = _kl([p_t[0], 1 - p_t[0]], [p_s[0], 1 - p_s[0]])
    nckd = _kl(
        [p_t[1] / (1 - p_t[0]), p_t[2] / (1 - p_t[0])],
        [p_s[1] / (1 - p_s[0]), p_s[2] / (1 - p_s[0])],
    )
    expected = temperature**2 * (1.0 * tckd + 8.0 * nckd)
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([0])
    value = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=temperature).item()
    assert value == pytest.approx(expected, rel=1e-5)
    assert value != pytest.approx(expected / temperature**2, rel=1e-3)


def test_eq5_decomposition_matches_kd_loss_on_random_inputs() -> None:
    torch.manual_seed(0)
    s = torch.randn(12, 7, dtype=torch.float64) * 3
    t = torch.randn(12, 7, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (12,))
    for temperature in (1.0, 4.0):
        p_target = torch.softmax(t / temperature, dim=-1).gather(1, y[:, None]).squeeze(1)
        decomposed = torch.zeros((), dtype=torch.float64)
        for i in range(len(s)):
            row = (s[i : i + 1], t[i : i + 1], y[i : i + 1])
            tckd = dkd_loss(*row, alpha=1.0, beta=0.0, temperature=temperature)
            nckd = dkd_loss(*row, alpha=0.0, beta=1.0, temperature=temperature)
            kd = kd_loss(row[0], row[1], temperature=temperature)
            torch.testing.assert_close(tckd + (1 - p_target[i]) * nckd, kd, rtol=1e-10, atol=1e-12)
            decomposed = decomposed + tckd + (1 - p_target[i]) * nckd
        kd_batch = kd_loss(s, t, temperature=temperature)
        torch.testing.assert_close(decomposed / len(s), kd_batch, rtol=1e-10, atol=1e-12)
        # alpha = beta = 1 is NOT Hinton KD: NCKD is no longer down-weighted by (1 - p_t^target)
        plain = dkd_loss(s, t, y, alpha=1.0, beta=1.0, temperature=temperature)
        assert plain.item() > kd_batch.item()


def test_matches_the_authors_masking_formulation() -> None:
    # mdistiller's dkd_loss: binary probabilities by summing the softmax, and NCKD by subtracting
    # 1000 from the target logit (after dividing by T) before the softmax.
    torch.manual_seed(4)
    s = torch.randn(9, 6, dtype=torch.float64) * 2
    t = torch.randn(9, 6, dtype=torch.float64) * 2
    y = torch.randint(0, 6, (9,))
    alpha, beta, temperature = 1.5, 8.0, 4.0
    gt = torch.nn.functional.one_hot(y, 6).to(torch.float64)
    p_s, p_t = torch.softmax(s / temperature, 1), torch.softmax(t / temperature, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() / len(s)
    q_t = torch.softmax(t / temperature - 1000.0 * gt, 1)
    log_q_s = torch.log_softmax(s / temperature - 1000.0 * gt, 1)
    terms = torch.where(q_t > 0, q_t * (q_t.log() - log_q_s), torch.zeros_like(q_t))
    nckd = terms.sum() / len(s)
    expected = temperature**2 * (alpha * tckd + beta * nckd)
    value = dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=temperature)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


def test_zero_when_equal_and_non_negative() -> None:
    torch.manual_seed(1)
    z = torch.randn(16, 10) * 3
    y = torch.randint(0, 10, (16,))
    for temperature in (0.5, 1.0, 4.0):
        assert dkd_loss(z, z.clone(), y, temperature=temperature).item() == pytest.approx(
            0.0, abs=1e-5
        )
        assert dkd_loss(z + 5.0, z, y, temperature=temperature).item() == pytest.approx(
            0.0, abs=1e-5
        )
    for _ in range(10):
        s, t = torch.randn(8, 5) * 4, torch.randn(8, 5) * 4
        y = torch.randint(0, 5, (8,))
        for alpha, beta in ((1.0, 0.0), (0.0, 1.0), (1.0, 8.0)):
            assert dkd_loss(s, t, y, alpha=alpha, beta=beta).item() >= 0.0


def test_two_classes_has_no_nckd() -> None:
    # with K = 2 there is a single non-target class, so NCKD is identically zero
    s, t = torch.tensor([[0.3, -1.0]]), torch.tensor([[2.0, 0.5]])
    nckd = dkd_loss(s, t, torch.tensor([1]), alpha=0.0, beta=1.0, temperature=1.0)
    assert nckd.item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(2)
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    dkd_loss(student, teacher, torch.tensor([0, 1, 2, 4])).backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum().item() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"alpha": -0.1}, "alpha"),
        ({"beta": -1.0}, "beta"),
    ],
)
def test_bad_hyper_parameters_raise(kwargs: dict[str, float], match: str) -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        dkd_loss(z, z, torch.tensor([0, 1]), **kwargs)
    with pytest.raises(ValueError, match=match):
        DKDLoss(**kwargs)


def test_bad_shapes_and_targets_raise() -> None:
    z = torch.zeros(2, 3)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="shape"):
        dkd_loss(z, torch.zeros(2, 4), y)
    with pytest.raises(ValueError, match="K >= 2"):
        dkd_loss(torch.zeros(2, 1), torch.zeros(2, 1), y)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        dkd_loss(torch.zeros(6), torch.zeros(6), y)
    with pytest.raises(ValueError, match="targets must have shape"):
        dkd_loss(z, z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        dkd_loss(z, z, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="lie in"):
        dkd_loss(z, z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="lie in"):
        dkd_loss(z, z, torch.tensor([-1, 0]))


def test_module_form_matches_function() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(7, 4), torch.randn(7, 4)
    y = torch.randint(0, 4, (7,))
    module = DKDLoss(alpha=0.5, beta=2.0, temperature=3.0)
    expected = dkd_loss(s, t, y, alpha=0.5, beta=2.0, temperature=3.0).item()
    assert module(s, t, y).item() == pytest.approx(expected, rel=1e-7)
    assert DKDLoss()(s, t, y).item() == pytest.approx(dkd_loss(s, t, y).item(), rel=1e-7)
