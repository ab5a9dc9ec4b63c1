"""Reproducibility of the cross-modal chain: the same inputs and seed give bit-identical results,
whatever ran earlier in the process and whatever the temporary file names were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgedistill.crossmodal_chain import build_imu_student, finetune_classifier, pretrain_student
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student

CONFIG = {"in_channels": 6, "num_classes": 3, "widths": [8, 16], "kernel_size": 3}


def _windows(n: int = 24, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, 6, steps)).astype(np.float32))
    return x, torch.arange(n) % 3


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different}"


def _finetune(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    x, y = _windows()
    finetune_classifier(model, x, y, 3, epochs=1, seed=0, batch_size=8)
    return _state(model)


def test_finetune_head_does_not_depend_on_the_global_rng() -> None:
    first = _finetune(build_imu_student(CONFIG, seed=0))
    model = build_imu_student(CONFIG, seed=0)
    torch.rand(1000)  # whatever ran before (e.g. pre-training) consumed the global RNG
    _assert_identical(first, _finetune(model))


def test_reloaded_pretraining_finetunes_like_a_fresh_run() -> None:
    """A re-run reloads the pre-trained weights instead of training: same fine-tuned model."""
    x, _ = _windows()
    targets = np.random.default_rng(1).standard_normal((len(x), 8)).astype(np.float32)
    term = LossTermSpec("comodo", 1.0, temperature=0.2, student_temperature=0.2, queue_size=16)
    fresh = build_imu_student(CONFIG, seed=0)
    pretrain_student(fresh, x, targets, term, epochs=1, seed=0, batch_size=8)
    pretrained = _state(fresh)
    fresh_finetuned = _finetune(fresh)

    rerun = build_imu_student(CONFIG, seed=0)
    rerun.load_state_dict(pretrained)
    _assert_identical(fresh_finetuned, _finetune(rerun))


def test_equal_checkpoints_are_equal_bytes(tmp_path: Path) -> None:
    """The checkpoint is written to a randomly named temporary file first; bytes must not
    depend on that name."""
    x, y = _windows()
    settings = TrainSettings(epochs=1, batch_size=8, seed=0, schedule="constant")
    paths = [tmp_path / run / "checkpoint.pt" for run in ("a", "b")]
    for path in paths:
        train_student(build_imu_student(CONFIG, seed=0), x, y, settings, checkpoint_path=path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
