"""Frozen teachers, teacher cards and the teacher-output cache."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from edgedistill.errors import RecipeError, UnsafeFileError
from edgedistill.students.vision import ConvNet
from edgedistill.teachers import (
    FrozenTeacher,
    TeacherCard,
    cached_teacher_logits,
    load_teacher,
    teacher_cache_key,
)


def _card_copy(tmp_path: Path, card: Path, **changes: Any) -> Path:
    """Copy the teacher folder to ``tmp_path/teacher`` and apply ``changes`` to its card."""
    folder = tmp_path / "teacher"
    shutil.copytree(card.parent, folder)
    raw = yaml.safe_load(card.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = folder / card.name
    path.write_text(yaml.safe_dump(raw))
    return path


def _inputs(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


# ---- load_teacher / FrozenTeacher -------------------------------------------------------


def test_load_teacher_returns_a_frozen_teacher(tiny_teacher_card: Path) -> None:
    teacher, card = load_teacher(tiny_teacher_card)
    assert isinstance(teacher, FrozenTeacher) and isinstance(card, TeacherCard)
    assert teacher.name == "tiny-teacher" == card.name
    assert card.arch == "convnet" and card.labels == ("left", "middle", "right")
    assert card.weights == (tiny_teacher_card.parent / "teacher.safetensors").resolve()
    assert teacher.weights_sha256 == card.sha256
    params = list(teacher.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert not teacher.model.training
    assert all(not m.training for m in teacher.model.modules())


def test_freshly_loaded_teacher_reports_eval_mode(tiny_teacher_card: Path) -> None:
    teacher, _ = load_teacher(tiny_teacher_card)
    assert not teacher.training


def test_frozen_teacher_stays_in_eval_mode(tiny_teacher_card: Path) -> None:
    teacher, _ = load_teacher(tiny_teacher_card)
    returned = teacher.train()
    assert returned is teacher
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    teacher.train(True)
    assert all(not m.training for m in teacher.modules())
    # eval mode shows in the outputs: BN uses running statistics, so a sample's logits do
    # not depend on the rest of the batch
    x = _inputs(8)
    np.testing.assert_allclose(teacher(x)[:1].numpy(), teacher(x[:1]).numpy(), rtol=1e-4, atol=1e-4)


def test_frozen_teacher_output_has_no_grad(tiny_teacher_card: Path) -> None:
    teacher, _ = load_teacher(tiny_teacher_card)
    x = _inputs(4).requires_grad_(True)
    out = teacher(x)
    assert out.shape == (4, 3)
    assert out.grad_fn is None and not out.requires_grad
    assert all(p.grad is None for p in teacher.parameters())


def test_loaded_weights_are_the_saved_weights(tiny_teacher_card: Path) -> None:
    from safetensors.torch import load_file

    teacher, card = load_teacher(tiny_teacher_card)
    saved = load_file(str(card.weights))
    state = teacher.model.state_dict()
    assert set(saved) == set(state)
    for name, tensor in saved.items():
        torch.testing.assert_close(state[name], tensor)


def test_sha256_mismatch_refused(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, sha256="0" * 64)
    with pytest.raises(UnsafeFileError, match="does not match"):
        load_teacher(card)


def test_tampered_weights_refused(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card)
    weights = card.parent / "teacher.safetensors"
    torch.manual_seed(123)
    model = ConvNet(
        in_channels=1, num_classes=3, widths=[16, 32], blocks_per_stage=2, residual=True
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    with pytest.raises(UnsafeFileError, match="sha256"):
        load_teacher(card)


def test_weights_path_escaping_card_folder_refused(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, weights="../x.safetensors")
    # even when the escaping file exists
    shutil.copy(card.parent / "teacher.safetensors", tmp_path / "x.safetensors")
    with pytest.raises(UnsafeFileError, match="escapes"):
        TeacherCard.load(card)
    with pytest.raises(UnsafeFileError, match="escapes"):
        load_teacher(card)


def test_absolute_weights_path_outside_folder_refused(
    tmp_path: Path, tiny_teacher_card: Path
) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(tiny_teacher_card.parent / "teacher.safetensors", outside)
    card = _card_copy(tmp_path, tiny_teacher_card, weights=str(outside))
    with pytest.raises(UnsafeFileError, match="escapes"):
        load_teacher(card)


@pytest.mark.parametrize("name", ["teacher.pt", "teacher.pth", "teacher.bin", "teacher.ckpt"])
def test_pickled_weights_refused(tmp_path: Path, tiny_teacher_card: Path, name: str) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, weights=name)
    teacher, _ = load_teacher(tiny_teacher_card)
    torch.save(teacher.model.state_dict(), card.parent / name)  # the file exists
    with pytest.raises(UnsafeFileError, match="safetensors"):
        load_teacher(card)


def test_card_missing_weights_file_is_recipe_error(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, weights="gone.safetensors")
    with pytest.raises(RecipeError, match="does not exist"):
        load_teacher(card)


def test_card_missing_required_keys(tmp_path: Path, tiny_teacher_card: Path) -> None:
    card = _card_copy(tmp_path, tiny_teacher_card, arch=None, name=None)
    with pytest.raises(RecipeError, match="missing name, arch"):
        load_teacher(card)


def test_weights_not_fitting_arch_is_recipe_error(tmp_path: Path, tiny_teacher_card: Path) -> None:
    raw = yaml.safe_load(tiny_teacher_card.read_text())
    card = _card_copy(tmp_path, tiny_teacher_card, config={**raw["config"], "widths": [8, 16]})
    with pytest.raises(RecipeError, match="do not fit"):
        load_teacher(card)


# ---- teacher output cache ---------------------------------------------------------------


class CountingTeacher:
    """Wraps a teacher and counts calls and images seen."""

    def __init__(self, teacher: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.teacher = teacher
        self.calls = 0
        self.images = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(x)
        return self.teacher(x)


def _transform(batch: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(np.asarray(batch)).float() / 255 - 0.3) / 0.3


def _key(**changes: Any) -> str:
    parts: dict[str, Any] = {
        "teacher_sha256": "t" * 64,
        "data_sha256": "d" * 64,
        "transform": {"normalization": {"mean": [0.3], "std": [0.3]}},
        "taps": ["logits"],
    }
    parts.update(changes)
    return teacher_cache_key(**parts)


def test_cached_teacher_logits_computes_once_then_hits(
    tmp_path: Path, tiny_teacher_card: Path
) -> None:
    teacher, _ = load_teacher(tiny_teacher_card)
    counting = CountingTeacher(teacher)
    images = np.random.default_rng(0).integers(0, 256, (50, 1, 16, 16)).astype(np.uint8)
    seen: list[int] = []

    first, hit = cached_teacher_logits(
        counting,
        images,
        _transform,
        key=_key(),
        cache_dir=tmp_path,
        batch_size=16,
        on_batch=seen.append,
    )
    assert hit is False
    assert counting.calls == 4 and counting.images == 50  # ceil(50 / 16) batches
    assert seen == [16, 16, 16, 2]
    assert first.shape == (50, 3) and first.dtype == np.float32
    np.testing.assert_allclose(first, teacher(_transform(images)).numpy(), rtol=1e-4, atol=1e-4)
    assert len(list(tmp_path.glob("teacher-logits-*.npy"))) == 1

    again, hit = cached_teacher_logits(
        counting,
        images,
        _transform,
        key=_key(),
        cache_dir=tmp_path,
        batch_size=16,
        on_batch=seen.append,
    )
    assert hit is True
    assert counting.calls == 4  # the teacher did not run again
    assert seen == [16, 16, 16, 2]
    assert isinstance(again, np.memmap) and not again.flags.writeable
    assert isinstance(first, np.memmap) and not first.flags.writeable
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    with pytest.raises(ValueError):
        again[0, 0] = 1.0


def test_cache_miss_for_another_key(tmp_path: Path) -> None:
    calls = CountingTeacher(lambda x: x.mean(dim=(2, 3)))
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    cached_teacher_logits(calls, images, _transform, key=_key(), cache_dir=tmp_path)
    _, hit = cached_teacher_logits(
        calls, images, _transform, key=_key(taps=["logits", "f"]), cache_dir=tmp_path
    )
    assert hit is False and calls.calls == 2
    assert len(list(tmp_path.glob("teacher-logits-*.npy"))) == 2


def test_cache_entry_with_wrong_length_is_recomputed(tmp_path: Path) -> None:
    calls = CountingTeacher(lambda x: x.mean(dim=(2, 3)))
    images = np.arange(5 * 2 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2, 2)
    cached_teacher_logits(calls, images[:3], _transform, key=_key(), cache_dir=tmp_path)
    out, hit = cached_teacher_logits(calls, images, _transform, key=_key(), cache_dir=tmp_path)
    assert hit is False and calls.calls == 2 and out.shape == (5, 2)
    np.testing.assert_allclose(out, _transform(images).mean(dim=(2, 3)).numpy(), rtol=1e-6)


def test_cache_creates_missing_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "b"
    images = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    out, hit = cached_teacher_logits(
        lambda x: x.flatten(1), images, _transform, key=_key(), cache_dir=cache
    )
    assert not hit and out.shape == (2, 4) and any(cache.glob("*.npy"))
    assert not list(cache.glob(".*"))  # no temporary file left behind


def test_teacher_cache_key_is_deterministic() -> None:
    assert _key() == _key()
    assert len(_key()) == 64 and int(_key(), 16) >= 0
    # dict key order does not matter (canonical JSON)
    reordered = {"normalization": {"std": [0.3], "mean": [0.3]}}
    assert _key(transform=reordered) == _key()


@pytest.mark.parametrize(
    "changes",
    [
        {"teacher_sha256": "u" * 64},
        {"data_sha256": "e" * 64},
        {"transform": {"normalization": {"mean": [0.3], "std": [0.31]}}},
        {"transform": {"normalization": {"mean": [0.3], "std": [0.3]}, "resize": 32}},
        {"taps": ["logits", "features"]},
        {"taps": []},
    ],
)
def test_changing_any_key_part_changes_the_key(changes: dict[str, Any]) -> None:
    assert _key(**changes) != _key()


def test_key_parts_are_not_interchangeable() -> None:
    a = teacher_cache_key(teacher_sha256="x", data_sha256="y", transform={}, taps=[])
    b = teacher_cache_key(teacher_sha256="y", data_sha256="x", transform={}, taps=[])
    assert a != b
