"""The student trainer: bit-identical resume (also after SIGKILL), stale checkpoints, KD, logs."""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.distill.trainer import TrainResult, TrainSettings, train_student
from edgedistill.metrics import agreement, predict_logits
from edgedistill.students.vision import ConvNet

N, SIZE, CLASSES = 128, 8, 3
SETTINGS = TrainSettings(epochs=3, batch_size=32, lr=0.05, seed=7)


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return x, y


def make_model(seed: int = 0, dropout: float = 0.0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(widths=(4, 8), in_channels=1, num_classes=CLASSES, dropout=dropout)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def train(
    model: torch.nn.Module, settings: TrainSettings = SETTINGS, **kwargs: object
) -> TrainResult:
    x, y = make_data()
    return train_student(model, x, y, settings, **kwargs)  # type: ignore[arg-type]


def test_training_changes_weights_and_reports_history() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model)
    assert not model.training  # left in eval mode
    assert result.resumed_from_epoch == 0
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for row in result.history:
        assert row["kd"] == 0.0  # kd_weight = 0
        assert row["loss"] == pytest.approx(row["ce"])  # ce_weight = 1


def test_same_seed_is_deterministic() -> None:
    a, b = make_model(), make_model()
    train(a)
    train(b)
    assert_same_state(a, b)


def test_kill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = make_model()
    ref_result = train(reference)

    ckpt = tmp_path / "ckpt.pt"
    crashed = make_model()
    first = train(crashed, checkpoint_path=ckpt, fingerprint="run-a", stop_after_epoch=1)
    assert len(first.history) == 1
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["fingerprint"] == "run-a"
    # the crashed model is not the finished one
    assert any(
        not torch.equal(v, reference.state_dict()[k]) for k, v in crashed.state_dict().items()
    )

    resumed = make_model()  # a new process would rebuild the model the same way
    result = train(resumed, checkpoint_path=ckpt, fingerprint="run-a")
    assert result.resumed_from_epoch == 1
    assert_same_state(resumed, reference)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    for got, want in zip(result.history, ref_result.history, strict=True):
        assert got == pytest.approx(want)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 3


def test_resume_restores_torch_rng_for_dropout(tmp_path: Path) -> None:
    # With dropout the global torch RNG drives training; a bit-identical resume needs it restored.
    reference = make_model(dropout=0.5)
    train(reference)
    ckpt = tmp_path / "ckpt.pt"
    train(make_model(dropout=0.5), checkpoint_path=ckpt, stop_after_epoch=2)
    torch.manual_seed(12345)  # whatever the caller did to the RNG in between
    resumed = make_model(dropout=0.5)
    torch.rand(100)
    result = train(resumed, checkpoint_path=ckpt)
    assert result.resumed_from_epoch == 2
    assert_same_state(resumed, reference)


def test_finished_checkpoint_returns_final_weights_without_training(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    reference = make_model()
    train(reference, checkpoint_path=ckpt)
    calls: list[int] = []
    again = make_model()
    result = train(
        again, checkpoint_path=ckpt, progress=lambda step, total, text: calls.append(step)
    )
    assert result.resumed_from_epoch == 3
    assert calls == []
    assert_same_state(again, reference)


SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np
    import torch
    from edgedistill.distill.trainer import TrainSettings, train_student
    from edgedistill.students.vision import ConvNet

    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(cfg["threads"])
    data = torch.load(cfg["data"], weights_only=True)
    teacher = np.load(cfg["teacher"])
    torch.manual_seed(cfg["model_seed"])
    model = ConvNet(widths=(4, 8), in_channels=1, num_classes=3, dropout=cfg["dropout"])
    settings = TrainSettings(**cfg["settings"])

    def progress(step, total, text):
        if step == cfg["kill_at_step"]:
            os.kill(os.getpid(), signal.SIGKILL)

    train_student(model, data["x"], data["y"], settings, teacher_logits=teacher,
                  checkpoint_path=Path(cfg["ckpt"]), fingerprint="fp", progress=progress)
    print("NOT KILLED")
    """
)


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path) -> None:
    x, y = make_data()
    teacher = np.random.default_rng(3).normal(size=(N, CLASSES)).astype(np.float32) * 3
    settings = dataclasses.replace(SETTINGS, kd_weight=0.7, ce_weight=0.3, temperature=2.0)
    steps_per_epoch = N // settings.batch_size  # 4
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    np.save(tmp_path / "teacher.npy", teacher)
    ckpt = tmp_path / "ckpt.pt"
    cfg = {
        "threads": torch.get_num_threads(),
        "data": str(tmp_path / "data.pt"),
        "teacher": str(tmp_path / "teacher.npy"),
        "model_seed": 0,
        "dropout": 0.25,
        "settings": dataclasses.asdict(settings),
        "ckpt": str(ckpt),
        "kill_at_step": steps_per_epoch + 2,  # the middle of epoch 2
    }
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],  # import the package from this checkout
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "NOT KILLED" not in proc.stdout
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1  # the last finished epoch; epoch 2 died half-way
    assert not list(tmp_path.glob(".ckpt.*"))  # no stray temporary checkpoint

    reference = make_model(dropout=0.25)
    train_student(reference, x, y, settings, teacher_logits=teacher)

    resumed = make_model(dropout=0.25)
    result = train_student(
        resumed, x, y, settings, teacher_logits=teacher, checkpoint_path=ckpt, fingerprint="fp"
    )
    assert result.resumed_from_epoch == 1
    assert_same_state(resumed, reference)


def test_checkpoint_with_other_fingerprint_is_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    train(make_model(seed=1), checkpoint_path=ckpt, fingerprint="old", stop_after_epoch=2)

    fresh = make_model()
    result = train(fresh, checkpoint_path=ckpt, fingerprint="new")
    assert result.resumed_from_epoch == 0
    reference = make_model()
    train(reference)
    assert_same_state(fresh, reference)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["fingerprint"] == "new"


def test_checkpoint_with_other_settings_is_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    other = dataclasses.replace(SETTINGS, lr=0.01)
    train(make_model(), other, checkpoint_path=ckpt, fingerprint="same", stop_after_epoch=1)
    fresh = make_model()
    result = train(fresh, checkpoint_path=ckpt, fingerprint="same")
    assert result.resumed_from_epoch == 0
    reference = make_model()
    train(reference)
    assert_same_state(fresh, reference)


def test_kd_weight_without_teacher_logits_raises() -> None:
    with pytest.raises(ValueError, match="teacher_logits"):
        train(make_model(), dataclasses.replace(SETTINGS, kd_weight=0.5))


def test_teacher_logits_of_wrong_length_raise() -> None:
    wrong = np.zeros((N - 1, CLASSES), dtype=np.float32)
    with pytest.raises(ValueError, match="127"):
        train(make_model(), dataclasses.replace(SETTINGS, kd_weight=0.5), teacher_logits=wrong)


def _orientation_data(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Class 0: a horizontal bar, 1: a vertical bar, 2: no bar; on noise (position invariant)."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, n)
    x = rng.normal(0.0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    for i, kind in enumerate(kinds):
        pos = rng.integers(1, SIZE - 1)
        if kind == 0:
            x[i, 0, pos, :] += 2.0
        elif kind == 1:
            x[i, 0, :, pos] += 2.0
    return torch.from_numpy(x), kinds


def test_kd_moves_student_towards_teacher() -> None:
    x, kinds = _orientation_data(N, seed=0)
    # The "teacher" knows the orientation; the hard labels are noise that disagrees with it.
    teacher = (np.eye(3, dtype=np.float32)[kinds] * 4.0).astype(np.float32)
    noise_labels = torch.from_numpy(np.random.default_rng(1).integers(0, 3, N))
    base = TrainSettings(epochs=12, batch_size=32, lr=0.05, seed=0)

    kd_student = make_model()
    before = agreement(predict_logits(kd_student, x), teacher)
    kd_result = train_student(
        kd_student,
        x,
        noise_labels,
        dataclasses.replace(base, ce_weight=0.0, kd_weight=1.0, temperature=2.0),
        teacher_logits=teacher,
    )
    ce_student = make_model()
    train_student(ce_student, x, noise_labels, base)

    x_held, kinds_held = _orientation_data(256, seed=5)
    teacher_held = np.eye(3, dtype=np.float32)[kinds_held]
    kd_agree = agreement(predict_logits(kd_student, x_held), teacher_held)
    ce_agree = agreement(predict_logits(ce_student, x_held), teacher_held)
    assert kd_agree >= 80.0
    assert kd_agree > before + 30.0
    assert kd_agree > ce_agree + 30.0
    kd_losses = [row["kd"] for row in kd_result.history]
    assert kd_losses[-1] < 0.5 * kd_losses[0]
    assert all(row["ce"] > 0 for row in kd_result.history)  # CE is still logged at weight 0
    assert all(row["loss"] == pytest.approx(row["kd"]) for row in kd_result.history)


def test_log_csv_has_one_row_per_epoch(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    scores = iter([10.0, 20.0, 30.0])
    result = train(make_model(), log_csv=log, evaluate=lambda m: next(scores))
    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert list(rows[0]) == ["epoch", "loss", "ce", "kd", "lr", "val_top1"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["val_top1"]) for r in rows] == [10.0, 20.0, 30.0]
    for row, hist in zip(rows, result.history, strict=True):
        for key in ("loss", "ce", "kd", "lr"):
            assert float(row[key]) == pytest.approx(hist[key], rel=1e-9)
    # lr is logged at the start of each epoch: OneCycle warms up from lr/25 (epoch 1 starts
    # there), never exceeds the peak, and is annealing by the last epoch
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(SETTINGS.lr / 25)
    assert all(0 < lr <= SETTINGS.lr for lr in lrs)
    assert lrs[-1] < max(lrs)


def test_log_csv_after_resume_keeps_earlier_epochs(tmp_path: Path) -> None:
    log, ckpt = tmp_path / "log.csv", tmp_path / "ckpt.pt"
    train(make_model(), log_csv=log, checkpoint_path=ckpt, stop_after_epoch=1)
    with open(log, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 1
    train(make_model(), log_csv=log, checkpoint_path=ckpt)
    with open(log, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "loss", "ce", "kd", "lr"}


def test_progress_reports_global_steps() -> None:
    seen: list[tuple[int, int]] = []
    train(make_model(), progress=lambda step, total, text: seen.append((step, total)))
    assert seen == [(s, 12) for s in range(1, 13)]


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    model = make_model()
    train(model, checkpoint_path=ckpt, fingerprint="abc")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert {
        "fingerprint",
        "settings",
        "epoch",
        "model",
        "optimizer",
        "scheduler",
        "generator",
        "torch_rng",
        "history",
    } <= set(state)
    assert state["settings"] == dataclasses.asdict(SETTINGS)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
