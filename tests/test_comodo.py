"""COMODO: hand-computed values, the entropy minimum, gradients, temperatures, queue, checks."""

from __future__ import annotations

import functools
import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from edgedistill.distill.comodo import ComodoLoss, comodo_loss
from edgedistill.distill.infonce import info_nce_loss


def _softmax(values: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in values]
    return [v / sum(e) for v in e]


def _cross_entropy(p: list[float], q: list[float]) -> float:
    """H(p, q) = −Σ p log q in nats, with plain math."""
    return -sum(pi * math.log(qi) for pi, qi in zip(p, q, strict=True))


# Unit vectors given at other scales to check the L2 normalisation.
# queue: q1 = (1, 0), q2 = (0, 1), q3 = (-0.6, 0.8)
QUEUE = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-3.0, 4.0]], dtype=torch.float64)
# teacher: t1 = (0.6, 0.8), t2 = (1, 0); student: s1 = (0, 1), s2 = (0.8, 0.6)
TEACHER = torch.tensor([[3.0, 4.0], [0.5, 0.0]], dtype=torch.float64)
STUDENT = torch.tensor([[0.0, 2.0], [4.0, 3.0]], dtype=torch.float64)
# cosines with the entries [q1, q2, q3, t1, t2]
COS_T = [[0.6, 0.8, 0.28, 1.0, 0.6], [1.0, 0.0, -0.6, 0.6, 1.0]]
COS_S = [[0.0, 1.0, 0.8, 0.8, 0.0], [0.8, 0.6, 0.0, 0.96, 0.8]]


def _hand_loss(tau_t: float, tau_s: float, n_entries: int) -> float:
    rows = [
        _cross_entropy(_softmax(ct[:n_entries], tau_t), _softmax(cs[:n_entries], tau_s))
        for ct, cs in zip(COS_T, COS_S, strict=True)
    ]
    return sum(rows) / len(rows)


@pytest.mark.parametrize(("tau_t", "tau_s"), [(0.1, 0.05), (0.05, 0.1), (0.5, 0.5)])
def test_hand_computed_queue_of_3_plus_batch(tau_t: float, tau_s: float) -> None:
    # row 1, queue only, at τ_t = τ_s = 1: p_t ∝ (e^.6, e^.8, e^.28), p_s ∝ (1, e, e^.8)
    z_t, z_s = math.exp(0.6) + math.exp(0.8) + math.exp(0.28), 1 + math.e + math.exp(0.8)
    by_hand = -sum(
        math.exp(a) / z_t * math.log(math.exp(b) / z_s)
        for a, b in [(0.6, 0.0), (0.8, 1.0), (0.28, 0.8)]
    )
    assert _cross_entropy(_softmax(COS_T[0][:3], 1.0), _softmax(COS_S[0][:3], 1.0)) == (
        pytest.approx(by_hand, rel=1e-12)
    )
    loss = comodo_loss(
        STUDENT, TEACHER, QUEUE, teacher_temperature=tau_t, student_temperature=tau_s
    )
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_hand_loss(tau_t, tau_s, 5), abs=1e-6)
    queue_only = comodo_loss(
        STUDENT,
        TEACHER,
        QUEUE,
        teacher_temperature=tau_t,
        student_temperature=tau_s,
        include_batch=False,
    )
    assert queue_only.item() == pytest.approx(_hand_loss(tau_t, tau_s, 3), abs=1e-6)
    # float32 inputs give the same value
    loss32 = comodo_loss(
        STUDENT.float(),
        TEACHER.float(),
        QUEUE.float(),
        teacher_temperature=tau_t,
        student_temperature=tau_s,
    )
    assert loss32.item() == pytest.approx(loss.item(), rel=1e-5)


def _teacher_entropy(teacher: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    """mean_b H(p_t), with p_t over [queue, batch] computed independently of the loss."""
    t = F.normalize(teacher, dim=-1)
    entries = torch.cat([F.normalize(queue, dim=-1), t])
    log_p = torch.log_softmax(t @ entries.T / tau, dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def test_equal_embeddings_and_temperatures_give_the_teacher_entropy_minimum() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(6, 8, dtype=torch.float64)
    queue = torch.randn(10, 8, dtype=torch.float64)
    for tau in (0.05, 0.1, 1.0):
        entropy = _teacher_entropy(teacher, queue, tau)
        loss = functools.partial(comodo_loss, teacher_temperature=tau, student_temperature=tau)
        # the student at another scale has the same direction: KL = 0, loss = H(p_t)
        at_min = loss(3.0 * teacher, teacher, queue).item()
        assert at_min == pytest.approx(entropy, rel=1e-9)
        for _ in range(5):  # any other student costs more: the KL part is > 0
            other = teacher + 0.3 * torch.randn_like(teacher)
            assert loss(other, teacher, queue).item() > at_min
    # with different temperatures the same student is no longer optimal: H(p_t) + KL > H(p_t)
    mismatched = comodo_loss(
        teacher, teacher, queue, teacher_temperature=0.05, student_temperature=0.1
    )
    assert mismatched.item() > _teacher_entropy(teacher, queue, 0.05) + 1e-3


def test_sharper_teacher_has_lower_entropy() -> None:
    torch.manual_seed(1)
    teacher, queue = torch.randn(5, 6), torch.randn(12, 6)
    # with the student equal to the teacher and τ_s = τ_t the loss IS the teacher entropy
    entropies = [
        comodo_loss(teacher, teacher, queue, teacher_temperature=tau, student_temperature=tau)
        for tau in (1.0, 0.1, 0.05, 0.01)
    ]
    assert all(a > b for a, b in itertools.pairwise(e.item() for e in entropies))
    # our feasibility setting (τ_t = 0.05) vs the paper's (τ_t = 0.1): a sharper target
    assert _teacher_entropy(teacher, queue, 0.05) < _teacher_entropy(teacher, queue, 0.1)


def test_cold_teacher_reduces_to_info_nce_with_queue_negatives() -> None:
    # τ_t -> 0 makes p_t one-hot on the sample's own teacher entry (cosine 1): InfoNCE
    torch.manual_seed(2)
    student, teacher, queue = torch.randn(4, 8), torch.randn(4, 8), torch.randn(6, 8)
    cold = comodo_loss(student, teacher, queue, teacher_temperature=1e-3, student_temperature=0.2)
    expected = info_nce_loss(student, teacher, temperature=0.2, negatives=queue)
    assert cold.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_reaches_student_only() -> None:
    torch.manual_seed(3)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    queue = torch.randn(5, 3, requires_grad=True)
    comodo_loss(
        student, teacher, queue, teacher_temperature=0.1, student_temperature=0.05
    ).backward()
    assert teacher.grad is None and queue.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # the module: the pushed teacher batch is a detached constant in the queue
    module = ComodoLoss(dim=3, queue_size=8)
    module(student, teacher).backward()
    module(student, teacher).backward()
    assert teacher.grad is None
    assert not module.queue.embeddings.requires_grad
    assert list(module.parameters()) == []


def _rows(start: int, stop: int) -> torch.Tensor:
    """Rows e_start .. e_{stop-1} of the 12x12 identity, scaled by 2 (the queue normalises)."""
    return 2.0 * torch.eye(12)[start:stop]


def test_module_matches_function_and_updates_queue_after_the_loss() -> None:
    torch.manual_seed(4)
    s1, t1, s2, t2 = (torch.randn(3, 4) for _ in range(4))
    loss = functools.partial(comodo_loss, teacher_temperature=0.05, student_temperature=0.1)
    make = functools.partial(ComodoLoss, 4, 5, teacher_temperature=0.05, student_temperature=0.1)
    module = make()
    empty = torch.zeros(0, 4)
    first = module(s1, t1)  # empty queue: the in-batch teacher embeddings only
    assert first.item() == pytest.approx(loss(s1, t1, empty).item(), rel=1e-6)
    assert len(module.queue) == 3
    second = module(s2, t2)  # queue = t1, entries = [t1, t2]
    assert second.item() == pytest.approx(loss(s2, t2, t1).item(), rel=1e-6)
    assert len(module.queue) == 5 and module.queue.is_full
    # queue-only entries: the first call still falls back to the batch, later ones do not
    no_batch = make(include_batch=False)
    assert no_batch(s1, t1).item() == pytest.approx(first.item(), rel=1e-6)
    expected = loss(s2, t2, t1, include_batch=False).item()
    assert no_batch(s2, t2).item() == pytest.approx(expected, rel=1e-6)


def test_fifo_keeps_exactly_the_newest_entries_in_order() -> None:
    module = ComodoLoss(dim=12, queue_size=5)
    student = torch.randn(12, 12)
    for start, stop in [(0, 3), (3, 6), (6, 8)]:  # 8 pushed into 5 slots
        module(student[start:stop], _rows(start, stop))
    assert module.queue.tensor().argmax(1).tolist() == [3, 4, 5, 6, 7]
    torch.testing.assert_close(module.queue.tensor(), torch.eye(12)[3:8])
    module(student[:7], _rows(1, 8))  # a batch larger than the queue
    assert module.queue.tensor().argmax(1).tolist() == [3, 4, 5, 6, 7]
    module(student[:1], _rows(11, 12))
    assert module.queue.tensor().argmax(1).tolist() == [4, 5, 6, 7, 11]


def test_state_dict_round_trip_resumes_the_queue() -> None:
    torch.manual_seed(5)
    module = ComodoLoss(dim=4, queue_size=6, teacher_temperature=0.05, student_temperature=0.1)
    for _ in range(3):
        module(torch.randn(4, 4), torch.randn(4, 4))
    state = module.state_dict()
    assert set(state) == {"queue.embeddings", "queue.ptr", "queue.count"}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = ComodoLoss(dim=4, queue_size=6, teacher_temperature=0.05, student_temperature=0.1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(resumed.queue.tensor(), module.queue.tensor())
    assert len(resumed.queue) == 6 and int(resumed.queue.ptr) == int(module.queue.ptr)
    s, t = torch.randn(4, 4), torch.randn(4, 4)
    assert resumed(s, t).item() == module(s, t).item()
    torch.testing.assert_close(resumed.queue.tensor(), module.queue.tensor())


@pytest.mark.parametrize(
    ("student", "teacher", "queue", "match"),
    [
        ((2, 3), (2, 4), (5, 4), "differ in shape"),
        ((2, 3), (3, 3), (5, 3), "differ in shape"),
        ((6,), (6,), (5, 6), "2-D"),
        ((2, 3), (2, 3), (5, 4), "dimension"),
        ((2, 3), (2, 3), (5,), "2-D"),
        ((0, 3), (0, 3), (5, 3), "non-empty"),
    ],
)
def test_bad_shapes_raise(
    student: tuple[int, ...], teacher: tuple[int, ...], queue: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        comodo_loss(
            torch.randn(student),
            torch.randn(teacher),
            torch.randn(queue),
            teacher_temperature=0.1,
            student_temperature=0.05,
        )


def test_bad_temperatures_and_module_inputs_raise() -> None:
    z, queue = torch.randn(2, 3), torch.randn(4, 3)
    for tau_t, tau_s in [(0.0, 0.1), (0.1, 0.0), (-1.0, 0.1), (0.1, -0.5)]:
        with pytest.raises(ValueError, match="temperature"):
            comodo_loss(z, z, queue, teacher_temperature=tau_t, student_temperature=tau_s)
        with pytest.raises(ValueError, match="temperature"):
            ComodoLoss(3, 4, teacher_temperature=tau_t, student_temperature=tau_s)
    with pytest.raises(ValueError, match="queue entry"):
        comodo_loss(
            z,
            z,
            torch.zeros(0, 3),
            teacher_temperature=0.1,
            student_temperature=0.1,
            include_batch=False,
        )
    with pytest.raises(ValueError, match="size"):
        ComodoLoss(3, 0)
    module = ComodoLoss(3, 4)
    with pytest.raises(ValueError, match="dimension"):
        module(torch.randn(2, 5), torch.randn(2, 5))
    assert len(module.queue) == 0  # a rejected batch is not pushed
