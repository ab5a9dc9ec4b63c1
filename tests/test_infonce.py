"""InfoNCE: hand-computed values, queue negatives, symmetry, the FIFO queue, gradients, checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from edgedistill.distill.infonce import EmbeddingQueue, InfoNCELoss, info_nce_loss


def _ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], computed with plain math."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


# Unit directions: s1 = (1, 0), s2 = (0, 1); t1 = (0.6, 0.8), t2 = (0, 1).
# Given at other scales to check the L2 normalisation: |(3, 0)| = 3, |(3, 4)| = 5.
STUDENT = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
TEACHER = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
# cosines s_i · t_j: [[0.6, 0.0], [0.8, 1.0]]


def test_hand_computed_case_b2_d2() -> None:
    tau = 0.5
    row0 = _ce([0.6 / tau, 0.0 / tau], 0)
    row1 = _ce([0.8 / tau, 1.0 / tau], 1)
    # row 0 by hand: -log(e^1.2 / (e^1.2 + 1))
    assert row0 == pytest.approx(-math.log(math.exp(1.2) / (math.exp(1.2) + 1.0)), rel=1e-12)
    expected = (row0 + row1) / 2
    loss = info_nce_loss(STUDENT, TEACHER, temperature=tau)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_symmetric() -> None:
    tau = 0.5
    s_to_t = (_ce([1.2, 0.0], 0) + _ce([1.6, 2.0], 1)) / 2
    # teacher -> student: columns of the cosine matrix, t1: (0.6, 0.8), t2: (0.0, 1.0)
    t_to_s = (_ce([1.2, 1.6], 0) + _ce([0.0, 2.0], 1)) / 2
    loss = info_nce_loss(STUDENT, TEACHER, temperature=tau, symmetric=True)
    assert loss.item() == pytest.approx((s_to_t + t_to_s) / 2, rel=1e-6)
    assert t_to_s != pytest.approx(s_to_t, rel=1e-2)  # the two directions really differ


def test_hand_computed_with_queue_negatives() -> None:
    tau = 0.5
    negatives = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])  # unit (1, 0) and (-1, 0)
    # extra logits s_i · n_q: s1 -> (1, -1), s2 -> (0, 0)
    expected = (_ce([1.2, 0.0, 2.0, -2.0], 0) + _ce([1.6, 2.0, 0.0, 0.0], 1)) / 2
    loss = info_nce_loss(STUDENT, TEACHER, temperature=tau, negatives=negatives)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # symmetric adds the in-batch teacher->student direction only
    t_to_s = (_ce([1.2, 1.6], 0) + _ce([0.0, 2.0], 1)) / 2
    sym = info_nce_loss(STUDENT, TEACHER, temperature=tau, negatives=negatives, symmetric=True)
    assert sym.item() == pytest.approx((expected + t_to_s) / 2, rel=1e-6)


def test_loss_decreases_as_positives_align() -> None:
    # teacher t_i = e_i; student s_i = cos(θ)·e_i + sin(θ)·e_{3+i} (orthogonal to every t_j, j≠i)
    # so s_i · t_j = cos(θ)·δ_ij and the loss is log(1 + 2·exp(−cos(θ)/τ)), falling as θ -> 0.
    eye = torch.eye(6, dtype=torch.float64)
    teacher = eye[:3]
    tau = 0.1
    values = []
    for theta in (1.5, 1.0, 0.6, 0.3, 0.1, 0.0):
        student = math.cos(theta) * eye[:3] + math.sin(theta) * eye[3:]
        value = info_nce_loss(student, teacher, temperature=tau).item()
        assert value == pytest.approx(
            math.log(1.0 + 2.0 * math.exp(-math.cos(theta) / tau)), rel=1e-4
        )
        values.append(value)
    assert all(a > b for a, b in itertools.pairwise(values))
    # and on random data, pulling the student towards its teacher lowers the loss
    torch.manual_seed(0)
    t, noise = torch.randn(6, 8), torch.randn(6, 8)
    noisy = [info_nce_loss(t + k * noise, t, temperature=0.1).item() for k in (4.0, 2.0, 1.0, 0.5)]
    assert all(a > b for a, b in itertools.pairwise(noisy))


def test_lower_temperature_sharpens_when_aligned() -> None:
    eye = torch.eye(2)
    for tau in (0.2, 0.5, 2.0):
        assert info_nce_loss(eye, eye, temperature=tau).item() == pytest.approx(
            math.log(1.0 + math.exp(-1.0 / tau)), rel=1e-5
        )
    losses = [info_nce_loss(eye, eye, temperature=tau).item() for tau in (2.0, 0.5, 0.2)]
    assert losses[0] > losses[1] > losses[2]


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(1)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    negatives = torch.randn(5, 3, requires_grad=True)
    loss = info_nce_loss(student, teacher, negatives=negatives, symmetric=True)
    loss.backward()
    assert teacher.grad is None
    assert negatives.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("shapes", [((2, 3), (2, 4)), ((2, 3), (3, 3)), ((6,), (6,))])
def test_mismatched_shapes_raise(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    with pytest.raises(ValueError):
        info_nce_loss(torch.randn(shapes[0]), torch.randn(shapes[1]))


def test_bad_negatives_and_temperature_raise() -> None:
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="dimension"):
        info_nce_loss(z, z, negatives=torch.randn(4, 2))
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=-1.0)
    with pytest.raises(ValueError, match="queue_size"):
        InfoNCELoss(queue_size=-1)


def _rows(start: int, stop: int) -> torch.Tensor:
    """Rows e_start .. e_{stop-1} of the 12x12 identity, scaled by 3 (the queue normalises)."""
    return 3.0 * torch.eye(12)[start:stop]


def _ids(queue: EmbeddingQueue) -> list[int]:
    return queue.tensor().argmax(dim=1).tolist()


def test_queue_fifo_order_3_4_5_into_8() -> None:
    queue = EmbeddingQueue(dim=12, size=8)
    assert len(queue) == 0 and not queue.is_full
    assert queue.tensor().shape == (0, 12)
    queue.push(_rows(0, 3))
    assert _ids(queue) == [0, 1, 2] and len(queue) == 3
    queue.push(_rows(3, 7))
    assert _ids(queue) == [0, 1, 2, 3, 4, 5, 6] and not queue.is_full
    queue.push(_rows(7, 12))  # 5 rows, 1 free slot: 0..3 are overwritten, wrapping around
    assert _ids(queue) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert queue.is_full and len(queue) == 8
    torch.testing.assert_close(queue.tensor(), torch.eye(12)[4:12])  # stored L2-normalised
    queue.push(_rows(0, 2))
    assert _ids(queue) == [6, 7, 8, 9, 10, 11, 0, 1]


def test_queue_push_larger_than_queue_keeps_newest() -> None:
    queue = EmbeddingQueue(dim=12, size=8)
    queue.push(_rows(0, 2))
    queue.push(_rows(1, 11))  # 10 rows > size
    assert _ids(queue) == [3, 4, 5, 6, 7, 8, 9, 10]
    queue.push(_rows(0, 1))
    assert _ids(queue) == [4, 5, 6, 7, 8, 9, 10, 0]


def test_queue_detaches_checks_and_round_trips_state_dict() -> None:
    queue = EmbeddingQueue(dim=12, size=8)
    emb = _rows(0, 5).requires_grad_(True)
    queue.push(emb)
    assert not queue.tensor().requires_grad
    with pytest.raises(ValueError, match="dimension"):
        queue.push(torch.randn(2, 3))
    with pytest.raises(ValueError, match="size"):
        EmbeddingQueue(dim=4, size=0)
    restored = EmbeddingQueue(dim=12, size=8)
    restored.load_state_dict(queue.state_dict())
    assert _ids(restored) == [0, 1, 2, 3, 4] and len(restored) == 5
    restored.push(_rows(5, 9))
    assert _ids(restored) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_module_without_queue_matches_function() -> None:
    module = InfoNCELoss(temperature=0.5)
    assert module.queue is None
    expected = info_nce_loss(STUDENT, TEACHER, temperature=0.5).item()
    assert module(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-7)
    assert InfoNCELoss()(STUDENT, TEACHER).item() == pytest.approx(
        info_nce_loss(STUDENT, TEACHER).item(), rel=1e-7
    )


def test_module_queue_is_updated_after_the_loss() -> None:
    torch.manual_seed(2)
    s1, t1, s2, t2 = (torch.randn(3, 4) for _ in range(4))
    module = InfoNCELoss(temperature=0.2, queue_size=5)
    first = module(s1, t1)  # empty queue: in-batch only
    assert first.item() == pytest.approx(info_nce_loss(s1, t1, temperature=0.2).item(), rel=1e-6)
    assert module.queue is not None and len(module.queue) == 3
    second = module(s2, t2)  # the first teacher batch is now the negatives
    expected = info_nce_loss(s2, t2, temperature=0.2, negatives=t1).item()
    assert second.item() == pytest.approx(expected, rel=1e-6)
    assert len(module.queue) == 5 and module.queue.is_full
    # checkpoint into a fresh module (queue created from the state_dict)
    fresh = InfoNCELoss(temperature=0.2, queue_size=5)
    fresh.load_state_dict(module.state_dict())
    assert fresh.queue is not None
    torch.testing.assert_close(fresh.queue.tensor(), module.queue.tensor())
    eager = InfoNCELoss(temperature=0.2, queue_size=5, dim=4)
    assert eager.queue is not None and set(eager.state_dict()) == set(module.state_dict())
