"""DINO: hand-computed loss, centring, sharpening, the centre EMA, the teacher EMA, checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from edgedistill.distill.dino import (
    DINOLoss,
    dino_loss,
    dino_teacher_targets,
    ema_update,
    update_center,
)


def test_hand_computed_case_k2() -> None:
    student = torch.tensor([[0.5 * math.log(3.0), 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    center = torch.tensor([0.5, 0.5])
    # row 0: s / 0.5 = (ln 3, 0) -> p_s = (3/4, 1/4); (t - c) / 0.25 = (2, 0)
    q0 = math.exp(2.0) / (math.exp(2.0) + 1.0)
    row0 = -(q0 * math.log(0.75) + (1.0 - q0) * math.log(0.25))
    # row 1: p_s = (1/2, 1/2), so the loss is ln 2 whatever the teacher target
    row1 = math.log(2.0)
    loss = dino_loss(student, teacher, center, student_temp=0.5, teacher_temp=0.25)
    assert loss.shape == ()
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_default_temperatures_hand_case() -> None:
    student = torch.tensor([[0.1, 0.0]])  # / 0.1 -> (1, 0)
    teacher = torch.tensor([[0.04, 0.0]])  # / 0.04 -> (1, 0)
    p = math.e / (math.e + 1.0)
    expected = -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))  # student = teacher: entropy
    assert dino_loss(student, teacher, torch.zeros(2)).item() == pytest.approx(expected, rel=1e-5)


def test_centering_absorbs_a_shift_of_the_teacher_outputs() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    c = torch.randn(4)
    base = dino_loss(s, t, c).item()
    shift = torch.tensor([3.0, -1.0, 0.5, 7.0])  # any per-dimension shift
    assert dino_loss(s, t + shift, c + shift).item() == pytest.approx(base, rel=1e-5)
    assert dino_loss(s, t + 2.0, c).item() == pytest.approx(base, rel=1e-5)  # softmax shift


def test_centre_of_a_constant_teacher_makes_the_target_uniform() -> None:
    # A teacher stuck on one dimension: once the centre has absorbed it the target is uniform.
    module = DINOLoss(out_dim=3, center_momentum=0.5)
    student = torch.tensor([[0.1, 0.0, 0.0]])  # / 0.1 -> (1, 0, 0)
    teacher = torch.tensor([[10.0, 0.0, 0.0]])
    log_z = math.log(math.e + 2.0)
    first = module(student, teacher).item()  # centre 0: target ~ one-hot on dimension 0
    assert first == pytest.approx(log_z - 1.0, rel=1e-5)
    for _ in range(40):
        last = module(student, teacher).item()
    torch.testing.assert_close(module.center, torch.tensor([10.0, 0.0, 0.0]))
    assert last == pytest.approx(log_z - 1.0 / 3.0, rel=1e-5)  # uniform target


def test_lower_teacher_temperature_sharpens_the_target() -> None:
    teacher, center = torch.tensor([[1.0, 0.0]]), torch.zeros(2)
    q = dino_teacher_targets(teacher, center, teacher_temp=0.5)
    expected0 = math.exp(2.0) / (math.exp(2.0) + 1.0)
    torch.testing.assert_close(q, torch.tensor([[expected0, 1.0 - expected0]]))

    def entropy(tau: float) -> float:
        p = dino_teacher_targets(torch.tensor([[0.3, 0.1, -0.2]]), torch.zeros(3), teacher_temp=tau)
        return float(-(p * p.log()).sum())

    values = [entropy(tau) for tau in (10.0, 1.0, 0.1, 0.04)]
    assert values[0] == pytest.approx(math.log(3.0), rel=1e-2)  # hot: nearly uniform
    assert all(a > b for a, b in itertools.pairwise(values))


def test_update_center_by_hand() -> None:
    center = torch.tensor([0.0, 1.0])
    teacher = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # batch mean (2, 3)
    new = update_center(center, teacher, momentum=0.9)
    torch.testing.assert_close(new, torch.tensor([0.9 * 0.0 + 0.1 * 2.0, 0.9 * 1.0 + 0.1 * 3.0]))
    torch.testing.assert_close(center, torch.tensor([0.0, 1.0]))  # input untouched
    torch.testing.assert_close(
        update_center(center, teacher, momentum=0.0), torch.tensor([2.0, 3.0])
    )


def test_module_uses_then_updates_its_centre() -> None:
    module = DINOLoss(out_dim=2, student_temp=0.5, teacher_temp=0.25, center_momentum=0.9)
    assert "center" in module.state_dict()
    student = torch.tensor([[0.5 * math.log(3.0), 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    expected = dino_loss(student, teacher, torch.zeros(2), student_temp=0.5, teacher_temp=0.25)
    assert module(student, teacher).item() == pytest.approx(expected.item(), rel=1e-7)
    # batch mean (0.5, 0.75), centre 0 -> 0.1 * (0.5, 0.75)
    torch.testing.assert_close(module.center, torch.tensor([0.05, 0.075]))


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(1)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    center = torch.randn(3, requires_grad=True)
    dino_loss(student, teacher, center, student_temp=0.2, teacher_temp=0.05).backward()
    assert teacher.grad is None and center.grad is None
    assert student.grad is not None
    p_s = torch.softmax(student.detach() / 0.2, dim=1)
    q = torch.softmax((teacher.detach() - center.detach()) / 0.05, dim=1)
    torch.testing.assert_close(student.grad, (p_s - q) / (0.2 * 4), rtol=1e-5, atol=1e-6)
    module_teacher = torch.randn(4, 3, requires_grad=True)
    DINOLoss(out_dim=3)(student, module_teacher).backward()
    assert module_teacher.grad is None


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    net.train()
    net(torch.randn(8, 2))  # move the BatchNorm running statistics away from their init
    return net


def test_ema_update_momentum_zero_copies_and_one_keeps() -> None:
    teacher, student = _net(0), _net(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, momentum=1.0, copy_buffers=False)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    ema_update(teacher, student, momentum=0.0)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k], rtol=0, atol=0)


def test_ema_update_by_hand_and_buffers() -> None:
    teacher, student = _net(2), _net(3)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.fill_(3.0)
    ema_update(teacher, student, momentum=0.25)
    for p in teacher.parameters():
        torch.testing.assert_close(p.detach(), torch.full_like(p, 0.25 * 1.0 + 0.75 * 3.0))
        assert p.grad is None
    bn_t, bn_s = teacher[1], student[1]
    assert isinstance(bn_t, nn.BatchNorm1d) and isinstance(bn_s, nn.BatchNorm1d)
    torch.testing.assert_close(bn_t.running_mean, bn_s.running_mean)
    assert bn_t.running_mean is not bn_s.running_mean  # copied, not shared


def test_ema_update_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 3), momentum=0.5)
    with pytest.raises(ValueError, match="names"):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), momentum=0.5)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), momentum=1.5)


def test_bad_input_raises() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        dino_loss(z, torch.zeros(2, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="center"):
        dino_loss(z, z, torch.zeros(4))
    with pytest.raises(ValueError, match="student_temp"):
        dino_loss(z, z, torch.zeros(3), student_temp=0.0)
    with pytest.raises(ValueError, match="teacher_temp"):
        dino_loss(z, z, torch.zeros(3), teacher_temp=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        update_center(torch.zeros(3), z, momentum=-0.1)
    with pytest.raises(ValueError):
        update_center(torch.zeros(4), z)
    with pytest.raises(ValueError, match="out_dim"):
        DINOLoss(out_dim=0)
    with pytest.raises(ValueError, match="teacher_temp"):
        DINOLoss(out_dim=3, teacher_temp=0.0)
