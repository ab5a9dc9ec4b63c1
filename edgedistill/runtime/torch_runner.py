"""Torch eager runner."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgedistill.runtime.base import Runner


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode`` (eager, FP32)."""

    runtime = "torch"

    def __init__(
        self,
        model: nn.Module,
        name: str,
        threads: int = 1,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(name, threads)
        self.model = model
        if input_shape is not None:
            self.input_shape = (None, *input_shape)

    def _load(self) -> None:
        self.model.eval()
        torch.set_num_threads(self.threads)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()
