"""DINO pre-training: augmentations, the EMA teacher, collapse, resume, and a linear probe."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.distill.dino_pretrain import (
    DinoNet,
    DinoResult,
    DinoSettings,
    augment_image,
    augment_imu,
    pretrain_dino,
    random_rotations,
)
from edgedistill.probe import extract_features, linear_probe
from edgedistill.students.imu import imu_cnn
from edgedistill.students.vision import convnet

TINY: dict[str, Any] = {"out_dim": 64, "hidden": 64, "bottleneck": 32, "batch_size": 32}
# Measured on this data: τ_s = 0.2 with a constant τ_t = 0.04 learns far better than τ_s = 0.1.
TUNED: dict[str, Any] = {**TINY, "student_temp": 0.2, "teacher_temp": 0.04, "lr": 0.01}


def make_imu(n: int, seed: int, t: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: a sine of ~1.5·(k+1) cycles per window along a random direction of each triple
    (accelerometer, gyroscope), random phase and amplitude, plus noise. [n, 6, t], [n]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    freq = 1.5 * (y + 1).float() + 0.3 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    wave = torch.sin(2 * math.pi * freq[:, None] * torch.arange(t)[None] / t + phase)
    dirs = nn.functional.normalize(torch.randn(n, 2, 3, generator=g), dim=-1)
    amp = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    x = (amp * dirs[..., None] * wave[:, None, None, :]).reshape(n, 6, t)
    return x + 0.3 * torch.randn(n, 6, t, generator=g), y


def tiny_imu(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return imu_cnn(in_channels=6, num_classes=3, widths=[8, 16])


def states_equal(a: Any, b: Any) -> bool:
    """Nested dicts/lists of tensors and plain values, compared with torch.equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"batch_size": 1},
        {"lr": 0.0},
        {"weight_decay": -1.0},
        {"out_dim": 0},
        {"student_temp": 0.0},
        {"teacher_temp_warmup": -0.1},
        {"warmup_epochs": 5},
        {"center_momentum": 1.0},
        {"ema_momentum": 1.5},
        {"grad_clip": 0.0},
    ],
)
def test_bad_settings_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="bad DINO settings"):
        DinoSettings(**{"epochs": 4, **bad})


def test_schedules() -> None:
    s = DinoSettings(epochs=5, warmup_epochs=3, teacher_temp_warmup=0.04, teacher_temp=0.07)
    temps = [s.teacher_temp_at(e) for e in range(5)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07])
    assert s.ema_momentum_at(0, 10) == pytest.approx(0.996)
    assert s.ema_momentum_at(5, 10) == pytest.approx(0.998)
    assert s.ema_momentum_at(10, 10) == pytest.approx(1.0)
    assert s.lr_at(0, 10) == pytest.approx(s.lr) and s.lr_at(10, 10) == pytest.approx(0.0)


def test_augment_imu_is_seeded_and_changes_the_input() -> None:
    x, _ = make_imu(8, seed=3)
    a = augment_imu(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, augment_imu(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment_imu(x, torch.Generator().manual_seed(2)))
    assert (a - x).abs().mean() > 0.1


def test_augment_imu_rotates_triples_alike_and_keeps_norms_up_to_scale() -> None:
    x, _ = make_imu(8, seed=4)
    x[:, 3:] = x[:, :3]  # gyroscope triple = accelerometer triple
    out = augment_imu(x, torch.Generator().manual_seed(5), jitter=0.0, max_shift=0.0)
    assert torch.allclose(out[:, 3:], out[:, :3])  # the same rotation for both triples
    ratio = out[:, :3].norm(dim=1) / x[:, :3].norm(dim=1)  # [B, T]
    per_sample = ratio[:, :1]
    assert torch.allclose(ratio, per_sample.expand_as(ratio), atol=1e-5)
    assert bool(((per_sample >= 0.8 - 1e-6) & (per_sample <= 1.2 + 1e-6)).all())
    assert not torch.allclose(out, x * per_sample[:, :, None], atol=1e-3)  # it did rotate
    rot = random_rotations(16, torch.Generator().manual_seed(0))
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)


def test_augment_image_is_seeded_and_changes_the_input() -> None:
    x = torch.randn(6, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    a = augment_image(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, augment_image(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment_image(x, torch.Generator().manual_seed(2)))
    assert (a - x).abs().mean() > 0.1


def test_bad_augment_input_raises() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="windows"):
        augment_imu(torch.zeros(2, 6), g)
    with pytest.raises(ValueError, match="multiple of 3"):
        augment_imu(torch.zeros(2, 4, 10), g)
    with pytest.raises(ValueError, match="options"):
        augment_imu(torch.zeros(2, 6, 10), g, scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="images"):
        augment_image(torch.zeros(2, 8, 8), g)


def test_bad_pretrain_input_raises() -> None:
    x, _ = make_imu(8, seed=0)
    settings = DinoSettings(epochs=1, **{**TINY, "batch_size": 4})
    with pytest.raises(ValueError, match="forward_features"):
        pretrain_dino(nn.Linear(40, 3), x, settings, augment=augment_imu)
    with pytest.raises(ValueError, match="N >= batch_size"):
        pretrain_dino(tiny_imu(), x[:3], settings, augment=augment_imu)
    with pytest.raises(ValueError, match="shape"):
        pretrain_dino(tiny_imu(), x, settings, augment=lambda v, g: v[:, :, :-1])


def test_teacher_is_the_ema_of_the_student(tmp_path: Path) -> None:
    x, _ = make_imu(16, seed=0)
    model = tiny_imu()
    before = copy.deepcopy(model)
    settings = DinoSettings(epochs=1, **{**TINY, "batch_size": 16, "ema_momentum": 0.9})
    pretrain_dino(model, x, settings, augment=augment_imu, checkpoint_path=tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.manual_seed(settings.seed)  # rebuild the initial head as pretrain_dino does
    initial = DinoNet(before, 16, settings).state_dict()
    student, teacher = state["student"], state["teacher"]
    m = settings.ema_momentum_at(0, 1)  # one step: momentum λ₀
    names = dict(DinoNet(tiny_imu(), 16, settings).named_parameters())
    assert any(not torch.equal(student[k], initial[k]) for k in names)  # the student moved
    for name in names:  # parameters: θ_t = m·θ_t(before) + (1 − m)·θ_s(after)
        expected = initial[name].clone().mul_(m).add_(student[name], alpha=1 - m)
        assert torch.allclose(teacher[name], expected, rtol=0, atol=1e-7), name
    for name in teacher.keys() - names:  # buffers (BatchNorm statistics) are copied
        assert torch.equal(teacher[name], student[name]), name
    backbone = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    assert states_equal(backbone, {k: student[k] for k in backbone})  # model = student backbone


@pytest.fixture(scope="module")
def long_run() -> Iterator[dict[str, Any]]:
    """120 epochs (360 steps, a few seconds) of DINO on 96 unlabelled windows.

    Module-scoped fixtures run before conftest's per-test ``one_thread``: set it here too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x_train, y_train = make_imu(96, seed=0)
    x_test, y_test = make_imu(96, seed=1)
    model = tiny_imu()
    random_init = copy.deepcopy(model)
    result = pretrain_dino(model, x_train, DinoSettings(epochs=120, **TUNED), augment=augment_imu)

    def probe(net: nn.Module) -> float:
        train_f, test_f = extract_features(net, x_train), extract_features(net, x_test)
        accs = [
            linear_probe(train_f, y_train, test_f, y_test, labels_per_class=5, seed=s).accuracy
            for s in range(5)
        ]
        return float(np.mean(accs))

    yield {"result": result, "random": probe(random_init), "dino": probe(model)}
    torch.set_num_threads(threads)


def test_loss_decreases_without_collapse(long_run: dict[str, Any]) -> None:
    history = long_run["result"].history
    assert len(history) == 120 and all(math.isfinite(r["loss"]) for r in history)
    first = history[0]["loss"]
    assert np.mean([r["loss"] for r in history[-10:]]) < first - 0.8
    last = history[-1]
    assert last["teacher_std"] > 0.05  # collapsed outputs would be ~identical across the batch
    assert last["teacher_kl_uniform"] < 0.6 * math.log(TINY["out_dim"])  # not one dimension
    assert 0.1 < last["teacher_entropy"] < 0.9 * math.log(TINY["out_dim"])  # nor uniform


def test_dino_features_probe_better_than_random_init(long_run: dict[str, Any]) -> None:
    print(f"5-shot probe: random init {long_run['random']:.1f}%, DINO {long_run['dino']:.1f}%")
    assert long_run["dino"] > long_run["random"] + 5.0


def test_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    x, _ = make_imu(64, seed=0)
    settings = DinoSettings(epochs=4, warmup_epochs=2, **TUNED)
    full, crashed = tiny_imu(), tiny_imu()
    pretrain_dino(full, x, settings, augment=augment_imu, checkpoint_path=tmp_path / "a.pt")
    first = pretrain_dino(
        crashed,
        x,
        settings,
        augment=augment_imu,
        checkpoint_path=tmp_path / "b.pt",
        stop_after_epoch=2,
    )
    assert len(first.history) == 2
    resumed_model = tiny_imu(seed=7)  # a fresh process: weights come from the checkpoint
    resumed = pretrain_dino(
        resumed_model, x, settings, augment=augment_imu, checkpoint_path=tmp_path / "b.pt"
    )
    assert resumed.resumed_from_epoch == 2 and len(resumed.history) == 4
    assert states_equal(full.state_dict(), resumed_model.state_dict())
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert states_equal(a, b)  # student, head, teacher, centre, optimiser, RNGs, history
    other = DinoSettings(epochs=4, warmup_epochs=2, **{**TUNED, "lr": 0.02})
    stale = pretrain_dino(
        tiny_imu(), x, other, augment=augment_imu, checkpoint_path=tmp_path / "b.pt"
    )
    assert stale.resumed_from_epoch == 0  # other settings: the checkpoint is not resumed


def test_images_and_progress() -> None:
    x = torch.randn(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = convnet(in_channels=1, num_classes=3, widths=[8])
    calls: list[tuple[int, int]] = []
    settings = DinoSettings(epochs=2, **{**TINY, "batch_size": 8})
    result = pretrain_dino(
        model, x, settings, augment=augment_image, progress=lambda s, t, d: calls.append((s, t))
    )
    assert isinstance(result, DinoResult) and len(result.history) == 2
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert not model.training
