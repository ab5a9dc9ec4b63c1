"""Worker of tests/test_ddp.py: trains a tiny model with the real trainer, under torchrun or not.

torchrun --nproc_per_node 2 tests/_ddp_worker.py OUT.safetensors
python tests/_ddp_worker.py OUT.safetensors          # the one-process reference
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from edgedistill.distill.ddp import init_from_environment
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student


class TinyNet(nn.Module):
    """No batch norm: per-process BN statistics are the one legitimate DDP difference."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def main() -> None:
    out = Path(sys.argv[1])
    ctx = init_from_environment()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(96, 3, 4)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=96))
    teacher = rng.normal(size=(96, 3)).astype(np.float32)
    torch.manual_seed(0)
    model = TinyNet()
    settings = TrainSettings(
        epochs=3,
        batch_size=16,
        lr=0.1,
        seed=0,
        terms=(LossTermSpec("ce", 0.5), LossTermSpec("kd", 0.5, temperature=2.0)),
    )
    result = train_student(
        model, x, y, settings, teacher_logits=teacher, checkpoint_path=out.with_suffix(".ckpt")
    )
    if ctx.is_main:
        save_file(dict(model.state_dict()), str(out))
        out.with_suffix(".loss").write_text(repr(result.history[-1]["loss"]))


if __name__ == "__main__":
    main()
