"""PS-KD: hand-computed soft-target CE, the alpha schedule, the prediction memory, checks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedistill.distill.pskd import PredictionMemory, pskd_alpha, pskd_loss


def test_hand_computed_two_classes() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p = (3/4, 1/4) and (1/2, 1/2)
    targets = torch.tensor([0, 1])
    prev = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    # alpha = 0.5: soft targets (0.5 + 0.1, 0.4) = (0.6, 0.4) and (0.25, 0.5 + 0.25) = (0.25, 0.75)
    row0 = -(0.6 * math.log(0.75) + 0.4 * math.log(0.25))
    row1 = -(0.25 * math.log(0.5) + 0.75 * math.log(0.5))
    assert row1 == pytest.approx(math.log(2.0))
    loss = pskd_loss(logits, targets, prev, alpha=0.5)
    assert loss.shape == ()
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_alpha_schedule_follows_official_code() -> None:
    # alpha_t = alpha_T * (epoch + 1) / total_epochs, epoch counted from 0
    assert pskd_alpha(0, 300) == pytest.approx(0.8 / 300)
    assert pskd_alpha(149, 300) == pytest.approx(0.4)
    assert pskd_alpha(299, 300) == pytest.approx(0.8)  # last epoch reaches alpha_T
    assert pskd_alpha(1, 4, alpha_T=0.5) == pytest.approx(0.25)
    values = [pskd_alpha(e, 10) for e in range(10)]
    assert all(b - a == pytest.approx(0.08) for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("epoch", "total", "alpha_t"), [(-1, 10, 0.8), (10, 10, 0.8), (0, 0, 0.8), (0, 10, 1.5)]
)
def test_alpha_schedule_bad_input_raises(epoch: int, total: int, alpha_t: float) -> None:
    with pytest.raises(ValueError):
        pskd_alpha(epoch, total, alpha_T=alpha_t)


def test_alpha_zero_is_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    targets = torch.randint(0, 5, (6,))
    prev = torch.softmax(torch.randn(6, 5), dim=1)
    expected = F.cross_entropy(logits, targets).item()
    assert pskd_loss(logits, targets, prev, alpha=0.0).item() == pytest.approx(expected, rel=1e-6)
    # alpha = 1: cross-entropy against the previous predictions alone
    soft_ce = F.cross_entropy(logits, prev).item()
    assert pskd_loss(logits, targets, prev, alpha=1.0).item() == pytest.approx(soft_ce, rel=1e-6)


def test_one_hot_memory_at_first_epoch_gives_plain_ce_for_any_alpha() -> None:
    # The official code writes the labels into the memory at epoch 0 (see the module docstring).
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    one_hot = F.one_hot(targets, 3).float()
    expected = F.cross_entropy(logits, targets).item()
    for alpha in (pskd_alpha(0, 300), 0.5):
        value = pskd_loss(logits, targets, one_hot, alpha=alpha).item()
        assert value == pytest.approx(expected, rel=1e-6)


def test_gradient_reaches_logits_only() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 3, requires_grad=True)
    prev = torch.softmax(torch.randn(4, 3), dim=1).requires_grad_(True)
    targets = torch.tensor([0, 1, 2, 0])
    pskd_loss(logits, targets, prev, alpha=0.3).backward()
    assert prev.grad is None
    assert logits.grad is not None
    soft = 0.7 * F.one_hot(targets, 3).float() + 0.3 * prev.detach()
    expected = (torch.softmax(logits.detach(), dim=1) - soft) / 4
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_loss_bad_input_raises() -> None:
    logits, prev = torch.zeros(2, 3), torch.full((2, 3), 1 / 3)
    targets = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="alpha"):
        pskd_loss(logits, targets, prev, alpha=1.2)
    with pytest.raises(ValueError, match="shape"):
        pskd_loss(logits, targets, torch.zeros(2, 4), alpha=0.5)
    with pytest.raises(ValueError, match="targets"):
        pskd_loss(logits, torch.tensor([0, 1, 2]), prev, alpha=0.5)
    with pytest.raises(ValueError, match="integer"):
        pskd_loss(logits, torch.tensor([0.0, 1.0]), prev, alpha=0.5)
    with pytest.raises(ValueError, match="lie in"):
        pskd_loss(logits, torch.tensor([0, 3]), prev, alpha=0.5)
    with pytest.raises(ValueError, match="2-D"):
        pskd_loss(torch.zeros(3), torch.tensor([0, 1, 2]), torch.zeros(3), alpha=0.5)


def test_memory_round_trip_in_ram() -> None:
    memory = PredictionMemory(num_samples=5, num_classes=4)
    assert len(memory) == 5
    torch.testing.assert_close(memory.get([0, 4]), torch.full((2, 4), 0.25))
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], requires_grad=True)
    memory.update(torch.tensor([3, 1]), probs)
    got = memory.get(torch.tensor([1, 3, 2]))
    assert got.dtype == torch.float32 and got.shape == (3, 4) and not got.requires_grad
    torch.testing.assert_close(got[0], probs.detach()[1], rtol=0, atol=0)
    torch.testing.assert_close(got[1], probs.detach()[0], rtol=0, atol=0)
    torch.testing.assert_close(got[2], torch.full((4,), 0.25))
    got[0].fill_(9.0)  # get returns a copy
    assert memory.get([1])[0, 0].item() == pytest.approx(0.7)


def test_memory_on_disk_is_float16_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pskd_memory.npy"
    memory = PredictionMemory(num_samples=6, num_classes=3, path=path)
    assert path.exists()
    torch.testing.assert_close(memory.get([0, 5]), torch.full((2, 3), 1 / 3), atol=1e-3, rtol=0)
    probs = torch.tensor([[0.1, 0.3, 0.6], [0.25, 0.5, 0.25]])
    memory.update([2, 4], probs)
    got = memory.get([2, 4])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, probs, atol=1e-3, rtol=0)
    memory.flush()
    del memory
    on_disk = np.load(path)
    assert on_disk.dtype == np.float16 and on_disk.shape == (6, 3)
    reopened = PredictionMemory(num_samples=6, num_classes=3, path=path)  # contents kept
    torch.testing.assert_close(reopened.get([2, 4]), probs, atol=1e-3, rtol=0)
    torch.testing.assert_close(reopened.get([0]), torch.full((1, 3), 1 / 3), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        PredictionMemory(num_samples=3, num_classes=6, path=path)


def test_memory_bad_input_raises() -> None:
    with pytest.raises(ValueError):
        PredictionMemory(num_samples=0, num_classes=3)
    with pytest.raises(ValueError):
        PredictionMemory(num_samples=3, num_classes=0)
    memory = PredictionMemory(num_samples=4, num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        memory.update([0, 1], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        memory.update([0, 1], torch.zeros(3, 3))
    with pytest.raises(ValueError, match="lie in"):
        memory.get([0, 4])
    with pytest.raises(ValueError, match="lie in"):
        memory.update([-1], torch.zeros(1, 3))
    with pytest.raises(ValueError, match="1-D"):
        memory.get(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        memory.get(torch.tensor([0.0, 1.0]))


def test_term_matches_the_official_loop_over_a_full_run() -> None:
    """PSKDTerm against the official training loop (lgcnsai/PS-KD-Pytorch main.py), written
    out: memory = one-hot at epoch 0, α_t = α_T·(e + 1)/E, target (1 − α_t)·onehot + α_t·memory,
    memory <- softmax of the training forward after the loss."""
    from edgedistill.distill.pskd import PSKDConfig, PSKDTerm
    from edgedistill.distill.terms import TermBatch, TermContext

    epochs, n, k = 4, 6, 3
    torch.manual_seed(2)
    targets = torch.randint(0, k, (n,))
    logits_per_epoch = [torch.randn(n, k) for _ in range(epochs)]
    term = PSKDTerm(PSKDConfig(name="pskd", weight=1.0), TermContext(n, k))
    official = torch.zeros(n, k)
    for epoch, logits in enumerate(logits_per_epoch):
        alpha_t = 0.8 * (epoch + 1) / epochs
        if epoch == 0:
            official = F.one_hot(targets, k).float()
        soft = (1 - alpha_t) * F.one_hot(targets, k).float() + alpha_t * official
        official = F.softmax(logits, dim=1)
        for half in (slice(0, 3), slice(3, 6)):  # two batches, same per-sample result
            batch = TermBatch(targets[half], torch.arange(n)[half], {}, logits=logits[half])
            got = term.loss(batch, epoch, epochs)
            want = -(soft[half] * F.log_softmax(logits[half], dim=1)).sum(1).mean()
            assert float(got) == pytest.approx(float(want), rel=1e-6), epoch
    assert pskd_alpha(epochs - 1, epochs) == pytest.approx(0.8)  # reaches α_T at the end
