"""The ``image_folder`` data source: layouts, resizing, stratified split, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgedistill.errors import DataError, RecipeError
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.tasks.task import Task


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _gray(seed: int, h: int = 8, w: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _dataset(root: Path, per_class: int = 5, classes: tuple[str, ...] = ("dog", "cat", "owl")):
    """``per_class`` 8x6 grayscale PNGs per class; returns {class: [pixels in file order]}."""
    written: dict[str, list[np.ndarray]] = {}
    for k, name in enumerate(classes):
        written[name] = []
        for i in range(per_class):
            pixels = _gray(100 * k + i)
            _png(root / name / f"img_{i:02d}.png", pixels)
            written[name].append(pixels)
    return written


def _load(tmp_path: Path, seed: int = 0, **data: Any) -> Task:
    raw = {"source": "image_folder", **data}
    cfg = parse_data_section(raw, base_dir=tmp_path, source="recipe.yaml")
    return build_task(cfg, cache_dir=tmp_path / "cache", seed=seed)


def test_folder_per_class_split_and_pixels(tmp_path: Path) -> None:
    written = _dataset(tmp_path / "pics")
    task = _load(tmp_path, path="pics")
    assert task.name == "pics" and task.modality == "image"
    assert task.labels == ("cat", "dog", "owl")  # sorted folder names
    assert task.x_train.dtype == np.uint8 and task.x_train.shape == (12, 1, 8, 6)
    assert task.x_test.shape == (3, 1, 8, 6) and task.y_test.dtype == np.int64
    # Stratified: 20 % of 5 = 1 image of every class held out.
    assert np.bincount(task.y_train).tolist() == [4, 4, 4]
    assert np.bincount(task.y_test).tolist() == [1, 1, 1]
    # Every stored image is exactly one of the files of its class, none in both splits.
    seen = []
    for x, y in [
        *zip(task.x_train, task.y_train, strict=True),
        *zip(task.x_test, task.y_test, strict=True),
    ]:
        matches = [i for i, p in enumerate(written[task.labels[y]]) if np.array_equal(p, x[0])]
        assert len(matches) == 1
        seen.append((int(y), matches[0]))
    assert len(set(seen)) == 15
    assert task.input.shape == (1, 8, 6) and task.input.divisor == 255.0
    assert task.input.mean is not None
    assert task.input.mean[0] == pytest.approx(task.x_train.mean() / 255, abs=1e-5)


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    _dataset(tmp_path / "pics")
    a, b = _load(tmp_path, path="pics"), _load(tmp_path, path="pics")
    assert a.fingerprint == b.fingerprint
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    other = _load(tmp_path, seed=5, path="pics")
    assert np.bincount(other.y_test).tolist() == [1, 1, 1]


def test_resize_rgb_and_label_order(tmp_path: Path) -> None:
    _dataset(tmp_path / "pics")
    task = _load(tmp_path, path="pics", size=[4, 3], color="rgb", labels=["owl", "cat", "dog"])
    assert task.labels == ("owl", "cat", "dog")
    assert task.x_train.shape == (12, 3, 4, 3) and task.input.raw["color"] == "rgb"
    # Grayscale files in RGB: three equal channels, bilinear as Pillow does it.
    first_owl = np.flatnonzero(np.concatenate([task.y_train, task.y_test]) == 0)[0]
    x = np.concatenate([task.x_train, task.x_test])[first_owl]
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])
    owls = [Image.open(f).convert("RGB") for f in sorted((tmp_path / "pics/owl").iterdir())]
    expected = [np.asarray(o.resize((3, 4), Image.Resampling.BILINEAR))[..., 0] for o in owls]
    assert any(np.array_equal(x[0], e) for e in expected)
    square = _load(tmp_path, path="pics", size=5)
    assert square.x_train.shape[1:] == (1, 5, 5)


def test_train_test_folders(tmp_path: Path) -> None:
    _dataset(tmp_path / "split/train", per_class=3, classes=("a", "b"))
    _dataset(tmp_path / "split/test", per_class=2, classes=("a", "b"))
    task = _load(tmp_path, path="split")
    assert task.labels == ("a", "b")
    assert task.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert task.y_test.tolist() == [0, 0, 1, 1]
    # train/ alone is split like a plain folder; test/ alone is refused.
    _dataset(tmp_path / "only_train/train", per_class=5, classes=("a", "b"))
    alone = _load(tmp_path, path="only_train")
    assert len(alone.y_train) == 8 and alone.y_test.tolist() == [0, 1]
    _dataset(tmp_path / "only_test/test", per_class=2, classes=("a", "b"))
    with pytest.raises(DataError, match=r"only_test: has test/ but no train/"):
        _load(tmp_path, path="only_test")


def test_single_class_is_refused(tmp_path: Path) -> None:
    _dataset(tmp_path / "pics", classes=("only",))
    with pytest.raises(DataError, match=r"pics: needs at least 2 class sub-folders"):
        _load(tmp_path, path="pics")


def test_empty_folder_and_empty_class(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"none: no class sub-folders"):
        _load(tmp_path, path="none")
    _dataset(tmp_path / "pics", classes=("a", "b"))
    (tmp_path / "pics/c").mkdir()
    (tmp_path / "pics/c/notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"pics/c: class folder has no images"):
        _load(tmp_path, path="pics")


def test_corrupt_png_is_named(tmp_path: Path) -> None:
    _dataset(tmp_path / "pics", classes=("a", "b"))
    (tmp_path / "pics/b/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DataError, match=r"pics/b/broken\.png: cannot read the image"):
        _load(tmp_path, path="pics")


def test_mixed_sizes_need_size(tmp_path: Path) -> None:
    _dataset(tmp_path / "pics", classes=("a", "b"))
    _png(tmp_path / "pics/b/wide.png", _gray(7, 8, 9))
    with pytest.raises(
        DataError, match=r"b/wide\.png: is 8x9.*a/img_00\.png is 8x6.*set data\.size"
    ):
        _load(tmp_path, path="pics")
    assert _load(tmp_path, path="pics", size=[8, 6]).x_train.shape[1:] == (1, 8, 6)


def test_labels_entry_without_folder(tmp_path: Path) -> None:
    _dataset(tmp_path / "pics", classes=("a", "b"))
    with pytest.raises(
        DataError, match=r"pics: data\.labels names \['zebra'\] with no class folder"
    ):
        _load(tmp_path, path="pics", labels=["a", "b", "zebra"])
    _png(tmp_path / "pics/c/one.png", _gray(3))
    with pytest.raises(DataError, match=r"pics: folders \['c'\] are not in data\.labels"):
        _load(tmp_path, path="pics", labels=["a", "b"])


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"recipe\.yaml: data\.path = .*does not exist"):
        _load(tmp_path, path="missing")
    (tmp_path / "pics").mkdir()
    with pytest.raises(RecipeError, match=r"recipe\.yaml: data\.color = 'cmyk'"):
        _load(tmp_path, path="pics", color="cmyk")
    with pytest.raises(RecipeError, match=r"unknown key 'data\.colour'"):
        _load(tmp_path, path="pics", colour="rgb")
