"""FitNets hint loss: hand-computed MSE, adapter shapes per rank, gradients and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgedistill.distill.fitnets import FitNetsLoss, HintAdapter, hint_loss


def test_hand_computed_mse() -> None:
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    teacher = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    # differences 1, 0, -2, 3 -> squares 1, 0, 4, 9 -> mean 14 / 4
    expected = (1.0 + 0.0 + 4.0 + 9.0) / 4
    loss = hint_loss(student, teacher)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-7)


def test_zero_when_equal_and_non_negative() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5)
    assert hint_loss(x, x.clone()).item() == 0.0
    for _ in range(5):
        assert hint_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4)).item() >= 0.0


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [
        ((2, 5), (2, 9)),  # [B, D] -> Linear
        ((2, 3, 10), (2, 6, 10)),  # [B, C, T], same T
        ((2, 3, 12), (2, 6, 5)),  # [B, C, T], longer student sequence
        ((2, 3, 4), (2, 6, 8)),  # [B, C, T], shorter student sequence
        ((2, 4, 8, 8), (2, 16, 8, 8)),  # [B, C, H, W], same spatial size
        ((2, 4, 16, 12), (2, 16, 4, 3)),  # larger student map
        ((2, 4, 4, 4), (2, 16, 8, 8)),  # smaller student map
        ((2, 4, 7, 5), (2, 16, 3, 4)),  # non-integer ratios
    ],
)
def test_adapter_output_matches_teacher_shape(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
) -> None:
    torch.manual_seed(1)
    adapter = HintAdapter(student_shape, teacher_shape)
    out = adapter(torch.randn(student_shape))
    assert tuple(out.shape) == teacher_shape
    # the runtime batch size may differ from the one in the shapes
    other_batch = (5, *student_shape[1:])
    assert tuple(adapter(torch.randn(other_batch)).shape) == (5, *teacher_shape[1:])


def test_adapter_layers_by_rank() -> None:
    assert isinstance(HintAdapter((2, 5), (2, 9)).proj, nn.Linear)
    conv1 = HintAdapter((2, 3, 7), (2, 6, 7)).proj
    assert isinstance(conv1, nn.Sequential)
    assert isinstance(conv1[0], nn.Conv1d) and isinstance(conv1[1], nn.BatchNorm1d)
    conv2 = HintAdapter((2, 3, 4, 4), (2, 6, 4, 4)).proj
    assert isinstance(conv2, nn.Sequential)
    assert isinstance(conv2[0], nn.Conv2d) and isinstance(conv2[1], nn.BatchNorm2d)
    assert conv2[0].kernel_size == (1, 1)
    plain = HintAdapter((2, 3, 4, 4), (2, 6, 4, 4), batch_norm=False).proj
    assert isinstance(plain, nn.Conv2d) and plain.bias is not None


def test_adapter_pools_then_projects_hand_case() -> None:
    # 1x1x4x4 student -> 2x2 by averaging 2x2 blocks, then a 1x1 conv with weight 2, bias 0.5
    adapter = HintAdapter((1, 1, 4, 4), (1, 1, 2, 2), batch_norm=False)
    conv = adapter.proj
    assert isinstance(conv, nn.Conv2d)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        assert conv.bias is not None
        conv.bias.fill_(0.5)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # block means: (0+1+4+5)/4, (2+3+6+7)/4, (8+9+12+13)/4, (10+11+14+15)/4
    block_means = [[2.5, 4.5], [10.5, 12.5]]
    expected = torch.tensor([[[[2.0 * v + 0.5 for v in row] for row in block_means]]])
    torch.testing.assert_close(adapter(x), expected)
    # and the hint loss against a zero teacher is the mean of the squares
    teacher = torch.zeros(1, 1, 2, 2)
    hand = sum((2.0 * v + 0.5) ** 2 for row in block_means for v in row) / 4
    assert hint_loss(adapter(x), teacher).item() == pytest.approx(hand, rel=1e-6)


def test_fitnets_loss_linear_hand_case() -> None:
    loss_fn = FitNetsLoss((1, 2), (1, 1))
    linear = loss_fn.adapter.proj
    assert isinstance(linear, nn.Linear)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -1.0]]))
        linear.bias.fill_(0.0)
    student = torch.tensor([[3.0, 1.0], [0.0, 2.0]])  # adapted: 2, -2
    teacher = torch.tensor([[1.0], [1.0]])
    expected = ((2.0 - 1.0) ** 2 + (-2.0 - 1.0) ** 2) / 2
    assert loss_fn(student, teacher).item() == pytest.approx(expected, rel=1e-7)


def test_gradients_reach_adapter_and_student_not_teacher() -> None:
    torch.manual_seed(2)
    for s_shape, t_shape in (
        ((3, 4, 6, 6), (3, 8, 3, 3)),
        ((3, 4, 9), (3, 8, 3)),
        ((3, 4), (3, 8)),
    ):
        loss_fn = FitNetsLoss(s_shape, t_shape)
        student = torch.randn(s_shape, requires_grad=True)
        teacher = torch.randn(t_shape, requires_grad=True)
        loss_fn(student, teacher).backward()
        assert teacher.grad is None
        assert student.grad is not None and student.grad.abs().sum().item() > 0
        params = list(loss_fn.parameters())
        assert params and all(p.requires_grad for p in params)
        assert all(p.grad is not None for p in params)


def test_training_the_adapter_reduces_the_loss() -> None:
    torch.manual_seed(3)
    loss_fn = FitNetsLoss((8, 3, 5), (8, 4, 5), batch_norm=False)
    student = torch.randn(8, 3, 5)
    teacher = torch.einsum("oc,bct->bot", torch.randn(4, 3), student)  # reachable by a 1x1 conv
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    first = loss_fn(student, teacher).item()
    for _ in range(50):
        loss = loss_fn(student, teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn(student, teacher).item() < 0.1 * first


def test_batch_size_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="batch"):
        HintAdapter((2, 3, 4, 4), (3, 6, 4, 4))
    loss_fn = FitNetsLoss((2, 3, 4, 4), (2, 6, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        loss_fn(torch.randn(2, 3, 4, 4), torch.randn(3, 6, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        hint_loss(torch.randn(2, 6), torch.randn(3, 6))


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "match"),
    [
        ((4,), (4,), "rank"),
        ((2, 3, 4, 4, 4), (2, 3, 4, 4, 4), "rank"),
        ((2, 3, 4, 4), (2, 3, 4), "rank"),
        ((2, 0, 4), (2, 3, 4), "positive"),
    ],
)
def test_unsupported_shapes_raise(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        HintAdapter(student_shape, teacher_shape)
    with pytest.raises(ValueError, match=match):
        FitNetsLoss(student_shape, teacher_shape)


def test_wrong_runtime_input_raises() -> None:
    adapter = HintAdapter((2, 3, 4, 4), (2, 6, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        adapter(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        adapter(torch.randn(2, 3, 4))
    loss_fn = FitNetsLoss((2, 3, 4, 4), (2, 6, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        loss_fn(torch.randn(2, 3, 4, 4), torch.randn(2, 6, 5, 5))
