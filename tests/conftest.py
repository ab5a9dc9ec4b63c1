"""Shared fixtures: a tiny deterministic IDX dataset, a tiny teacher card, a tiny recipe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from edgedistill.artifacts import sha256_file
from edgedistill.data import write_idx
from edgedistill.students.vision import ConvNet

LABELS = ["left", "middle", "right"]
TEACHER_ARCH: dict[str, Any] = {
    "in_channels": 1,
    "num_classes": 3,
    "widths": [16, 32],
    "blocks_per_stage": 2,
    "residual": True,
}


def make_images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class k = a bright vertical bar in the k-th third of the image, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n)
    images = rng.integers(0, 90, (n, size, size)).astype(np.uint8)
    third = size // 3
    for i, k in enumerate(labels):
        col = k * third + rng.integers(0, third)
        images[i, :, col] = rng.integers(170, 255)
    return images, labels.astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("idx")
    x_train, y_train = make_images(384, seed=1)
    x_test, y_test = make_images(192, seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", x_train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte", y_test)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small teacher briefly trained on the tiny data, saved as safetensors with a card."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = ConvNet(**TEACHER_ARCH)
    x, y = make_images(384, seed=1)
    xt = (torch.from_numpy(x).float()[:, None] / 255 - 0.3) / 0.3
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    weights = folder / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    card = {
        "name": "tiny-teacher",
        "arch": "convnet",
        "config": TEACHER_ARCH,
        "weights": "teacher.safetensors",
        "sha256": sha256_file(weights),
        "input": {"shape": [1, 16, 16], "normalization": {"mean": [0.3], "std": [0.3]}},
        "labels": LABELS,
    }
    path = folder / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.fixture
def tiny_recipe_dict(tiny_idx_dir: Path, tiny_teacher_card: Path) -> dict[str, Any]:
    return {
        "name": "tiny",
        "seed": 0,
        "threads": 1,
        "data": {"path": str(tiny_idx_dir), "name": "bars", "labels": LABELS},
        "teacher": {"card": str(tiny_teacher_card)},
        "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
        "distill": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "prune": {"target_macs_ratio": 0.7, "finetune_epochs": 1},
        "quantize": {"calibration_samples": 64},
        "profile": {
            "threads": 1,
            "batch_sizes": [1, 4],
            "warmup": 2,
            "runs": 100,
            "runtimes": ["torch", "onnxruntime"],
        },
        "gates": {"parity_samples": 64, "int8_max_accuracy_drop": 100.0},
    }


@pytest.fixture
def tiny_recipe_file(tmp_path: Path, tiny_recipe_dict: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict))
    return path


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread per test: the models are tiny, and on a busy 2-core machine two
    threads made a forward pass up to ~100x slower. Restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_gpu
    except ImportError:
        has_trt = False
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a GPU"))
