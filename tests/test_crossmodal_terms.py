"""Cross-modal terms in the trainer: projection head + COMODO / InfoNCE / L2, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.distill.crossmodal import CrossModalTerm, ProjectionHead
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.probe import extract_features, linear_probe
from edgedistill.students import build_model


def _paired(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """IMU-like windows whose class shows in frequency; 'teacher' embeddings know the class.

    Returns (windows [n, 6, 40], labels all -1, teacher embeddings [n, 16]); the true classes
    are ``_classes(n, seed)``.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    t = np.linspace(0, 1, 40)
    x = np.stack([np.sin(2 * np.pi * (3 + c) * t + rng.uniform(0, 6)) for c in y])
    windows = x[:, None, :].repeat(6, axis=1) + 1.5 * rng.normal(size=(n, 6, 40))
    centres = rng.normal(size=(3, 16))
    teacher = centres[y] + 0.1 * rng.normal(size=(n, 16))
    return (
        torch.from_numpy(windows.astype(np.float32)),
        torch.full((n,), -1, dtype=torch.int64),  # no labels: pure cross-modal pre-training
        teacher.astype(np.float32),
    )


def _classes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=n)  # the draw _paired makes first


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("imu_cnn", {"in_channels": 6, "num_classes": 3, "widths": [8, 16]})


@pytest.mark.parametrize(
    "term",
    [
        LossTermSpec("comodo", 1.0, temperature=0.05, student_temperature=0.1, queue_size=32),
        LossTermSpec("infonce", 1.0, temperature=0.1, queue_size=0),
        LossTermSpec("l2", 1.0),
    ],
    ids=["comodo", "infonce", "l2"],
)
def test_each_crossmodal_term_trains_without_labels(term: LossTermSpec) -> None:
    x, y, teacher = _paired()
    settings = TrainSettings(epochs=6, batch_size=16, lr=0.05, terms=(term,))
    result = train_student(_student(), x, y, settings, teacher_features={"embedding": teacher})
    assert result.history[-1][term.name] < result.history[0][term.name]


def test_pretrained_features_separate_classes_better_than_random_init() -> None:
    x, y, teacher = _paired(n=120)
    true = _classes(120)
    term = LossTermSpec("comodo", 1.0, temperature=0.05, student_temperature=0.1, queue_size=64)
    model = _student()
    random_features = extract_features(model, x)
    settings = TrainSettings(epochs=8, batch_size=16, lr=0.05, terms=(term,))
    train_student(model, x, y, settings, teacher_features={"embedding": teacher})
    trained = extract_features(model, x)
    train, test = slice(0, 80), slice(80, 120)
    before = linear_probe(random_features[train], true[train], random_features[test], true[test])
    after = linear_probe(trained[train], true[train], trained[test], true[test])
    assert after.accuracy > before.accuracy + 5


def test_crossmodal_run_resumes_bit_identical_with_its_queue(tmp_path: Path) -> None:
    x, y, teacher = _paired()
    term = LossTermSpec("comodo", 1.0, temperature=0.05, student_temperature=0.1, queue_size=40)
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, terms=(term,))
    features = {"embedding": teacher}
    whole = _student()
    train_student(whole, x, y, settings, teacher_features=features)
    ckpt = tmp_path / "ckpt.pt"
    train_student(
        _student(), x, y, settings, teacher_features=features, checkpoint_path=ckpt,
        stop_after_epoch=1,
    )  # fmt: skip
    state = torch.load(ckpt, weights_only=True)
    assert any("queue" in k for k in state["objective"])  # the FIFO queue is checkpointed
    resumed = _student()
    train_student(resumed, x, y, settings, teacher_features=features, checkpoint_path=ckpt)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_crossmodal_needs_teacher_embeddings_and_sane_dims() -> None:
    x, y, _ = _paired()
    settings = TrainSettings(epochs=1, batch_size=16, terms=(LossTermSpec("l2", 1.0),))
    with pytest.raises(ValueError, match="embedding"):
        train_student(_student(), x, y, settings)
    with pytest.raises(ValueError, match="unknown cross-modal"):
        CrossModalTerm("mse", 4, 4, temperature=0.1, student_temperature=0.1, queue_size=0)
    with pytest.raises(ValueError, match="positive"):
        ProjectionHead(0, 4)
    assert ProjectionHead(4, 7)(torch.zeros(3, 4)).shape == (3, 7)


def test_crossmodal_with_fitnets_or_layered_is_refused_up_front() -> None:
    from edgedistill.distill.objective import Objective

    fitnets = LossTermSpec("fitnets", 1.0, teacher_tap="stages.1")
    for other in (fitnets, LossTermSpec("layered", 1.0)):
        with pytest.raises(ValueError, match="cannot be combined"):
            Objective((LossTermSpec("l2", 1.0), other), num_samples=4, num_classes=3)
