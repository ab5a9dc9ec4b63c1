"""IDX reading/writing, dataset loading, fingerprints, subsets and input normalisation."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedistill.data import ImageDataset, Normalization, load_idx_dataset, read_idx, write_idx
from edgedistill.data.image import IDX_FILES
from edgedistill.errors import DataError

LABELS = ("a", "b", "c")


def _array(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _write_folder(folder: Path, n_train: int = 20, n_test: int = 10, classes: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    write_idx(folder / "train-images-idx3-ubyte.gz", _array((n_train, 4, 5), seed=1))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, classes, n_train))
    write_idx(folder / "t10k-images-idx3-ubyte", _array((n_test, 4, 5), seed=2))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, classes, n_test))
    return folder


def _dataset(n_train: int = 50) -> ImageDataset:
    return ImageDataset(
        name="d",
        x_train=_array((n_train, 1, 4, 4), seed=3),
        y_train=np.arange(n_train, dtype=np.int64) % 3,
        x_test=_array((6, 1, 4, 4), seed=4),
        y_test=np.arange(6, dtype=np.int64) % 3,
        labels=LABELS,
    )


# ---- IDX files --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 3, 4, 5)])
def test_write_read_round_trip(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    array = _array(shape)
    path = tmp_path / name
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_gz_suffix_is_really_gzipped_and_plain_is_not(tmp_path: Path) -> None:
    array = _array((3, 4))
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array)
    plain = (tmp_path / "a").read_bytes()
    assert plain[:4] == bytes([0, 0, 0x08, 2])
    assert plain[4:12] == (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    assert plain[12:] == array.tobytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == plain


def test_bad_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    write_idx(path, _array((3, 4)))
    raw = bytearray(path.read_bytes())
    raw[0] = 0x1F
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(path)


def test_too_short_for_a_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("cut", [1, 50])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "trunc"
    write_idx(path, _array((10, 10)))
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    with pytest.raises(DataError, match=r"header says \(10, 10\) \(100 bytes\)"):
        read_idx(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "trunc-header"
    write_idx(path, _array((10, 10)))
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(DataError):
        read_idx(path)


def test_trailing_bytes_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long"
    write_idx(path, _array((10, 10)))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="file has 101"):
        read_idx(path)


@pytest.mark.parametrize("type_byte", [0x09, 0x0B, 0x0D, 0x0E])
def test_non_uint8_type_byte(tmp_path: Path, type_byte: int) -> None:
    path = tmp_path / "typed"
    write_idx(path, _array((2, 2)))
    raw = bytearray(path.read_bytes())
    raw[2] = type_byte
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"type 0x{type_byte:02x}"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope")


def test_not_gzip_despite_suffix(tmp_path: Path) -> None:
    path = tmp_path / "fake.gz"
    write_idx(tmp_path / "fake", _array((2, 2)))
    path.write_bytes((tmp_path / "fake").read_bytes())
    with pytest.raises(DataError):
        read_idx(path)


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_gzip_raises_data_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, _array((10, 20)))
    raw = path.read_bytes()
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:  # a valid 10-byte gzip header followed by an invalid deflate stream
        raw = gzip.compress(b"", mtime=0)[:10] + b"\xff" * 32
    path.write_bytes(raw)
    with pytest.raises(DataError):
        read_idx(path)


# ---- load_idx_dataset -------------------------------------------------------------------


def test_load_idx_dataset_shapes_and_types(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "d")
    ds = load_idx_dataset(folder, LABELS, name="toy")
    assert ds.name == "toy" and ds.labels == LABELS
    assert ds.x_train.shape == (20, 1, 4, 5) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10, 1, 4, 5)
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.input_shape == (1, 4, 5)
    np.testing.assert_array_equal(ds.x_train[:, 0], _array((20, 4, 5), seed=1))
    np.testing.assert_array_equal(ds.x_test[:, 0], _array((10, 4, 5), seed=2))
    assert ds.x_train.flags.writeable  # a copy, not a view of the read-only file buffer


@pytest.mark.parametrize("stem", list(IDX_FILES.values()))
def test_missing_file_in_folder_is_named(tmp_path: Path, stem: str) -> None:
    folder = _write_folder(tmp_path / "d")
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        candidate.unlink(missing_ok=True)
    with pytest.raises(DataError, match=stem):
        load_idx_dataset(folder, LABELS)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_idx_dataset(tmp_path / "nothing", LABELS)


def test_label_out_of_range(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "d", classes=3)
    labels = np.zeros(10, dtype=np.uint8)
    labels[4] = 3
    write_idx(folder / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="label 3 but the recipe names 3 classes"):
        load_idx_dataset(folder, LABELS)
    # the same files are fine with four class names
    assert load_idx_dataset(folder, (*LABELS, "d")).y_test[4] == 3


def test_images_and_labels_count_mismatch(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="do not match"):
        load_idx_dataset(folder, LABELS)


def test_tiny_fixture_folder_loads(tiny_idx_dir: Path, tmp_path: Path) -> None:
    ds = load_idx_dataset(tiny_idx_dir, LABELS)
    assert ds.x_train.shape == (384, 1, 16, 16) and ds.x_test.shape == (192, 1, 16, 16)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_idx_dir, copy)
    assert load_idx_dataset(copy, LABELS).fingerprint() == ds.fingerprint()


# ---- ImageDataset -----------------------------------------------------------------------


def test_fingerprint_is_stable_and_changes_with_one_pixel() -> None:
    ds = _dataset()
    assert ds.fingerprint() == _dataset().fingerprint()
    assert len(ds.fingerprint()) == 64

    x_train = ds.x_train.copy()
    x_train[17, 0, 2, 3] ^= 1
    changed = ImageDataset(ds.name, x_train, ds.y_train, ds.x_test, ds.y_test, ds.labels)
    assert changed.fingerprint() != ds.fingerprint()

    x_test = ds.x_test.copy()
    x_test[0, 0, 0, 0] ^= 1
    changed = ImageDataset(ds.name, ds.x_train, ds.y_train, x_test, ds.y_test, ds.labels)
    assert changed.fingerprint() != ds.fingerprint()


def test_fingerprint_changes_with_labels_and_names() -> None:
    ds = _dataset()
    y = ds.y_train.copy()
    y[0] = (y[0] + 1) % 3
    assert (
        ImageDataset(ds.name, ds.x_train, y, ds.x_test, ds.y_test, ds.labels).fingerprint()
        != ds.fingerprint()
    )
    renamed = ImageDataset(ds.name, ds.x_train, ds.y_train, ds.x_test, ds.y_test, ("a", "b", "z"))
    assert renamed.fingerprint() != ds.fingerprint()


def test_fingerprint_changes_with_shape_of_same_bytes() -> None:
    ds = _dataset()
    reshaped = ds.x_train.reshape(len(ds.y_train), 1, 2, 8)
    other = ImageDataset(ds.name, reshaped, ds.y_train, ds.x_test, ds.y_test, ds.labels)
    assert other.fingerprint() != ds.fingerprint()


def test_subset_train_is_deterministic_and_sized() -> None:
    ds = _dataset(50)
    a = ds.subset_train(20, seed=3)
    b = ds.subset_train(20, seed=3)
    assert len(a.y_train) == 20 and a.x_train.shape == (20, 1, 4, 4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert a.fingerprint() == b.fingerprint()
    # the test split is untouched
    assert a.x_test is ds.x_test and a.y_test is ds.y_test and a.labels == ds.labels
    # a different seed picks a different subset
    c = ds.subset_train(20, seed=4)
    assert c.fingerprint() != a.fingerprint()


def test_subset_train_keeps_image_label_pairs() -> None:
    ds = _dataset(50)
    sub = ds.subset_train(10, seed=0)
    # every picked (image, label) pair exists in the original, distinct, in original order
    rows = [int(np.flatnonzero((ds.x_train == img).all(axis=(1, 2, 3)))[0]) for img in sub.x_train]
    assert rows == sorted(set(rows))
    np.testing.assert_array_equal(ds.y_train[rows], sub.y_train)


@pytest.mark.parametrize("limit", [None, 50, 60])
def test_subset_train_without_effective_limit_is_everything(limit: int | None) -> None:
    ds = _dataset(50)
    assert ds.subset_train(limit, seed=1) is ds


# ---- Normalization ----------------------------------------------------------------------


def test_normalization_from_images_hand_computed() -> None:
    # [N=2, C=2, H=1, W=2]
    images = np.array(
        [
            [[[0, 255]], [[51, 102]]],
            [[[255, 255]], [[51, 102]]],
        ],
        dtype=np.uint8,
    )
    norm = Normalization.from_images(images)
    # channel 0: values 0, 1, 1, 1 -> mean 0.75, population std sqrt(0.75 * 0.25)
    # channel 1: values 0.2, 0.4, 0.2, 0.4 -> mean 0.3, std 0.1
    assert norm.mean == pytest.approx((0.75, 0.3), abs=1e-6)
    assert norm.std == pytest.approx((np.sqrt(0.1875), 0.1), abs=1e-6)
    assert all(isinstance(v, float) for v in (*norm.mean, *norm.std))


def test_normalization_apply_formula() -> None:
    norm = Normalization(mean=(0.5, 0.25), std=(0.5, 0.125))
    images = _array((3, 2, 4, 5), seed=9)
    out = norm.apply(images)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (3, 2, 4, 5)
    x = images.astype(np.float64) / 255.0
    expected = np.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.125], axis=1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    # a tensor input gives the same result and is not modified
    tensor = torch.from_numpy(images.copy())
    np.testing.assert_allclose(norm.apply(tensor).numpy(), out.numpy())
    np.testing.assert_array_equal(tensor.numpy(), images)


def test_normalization_from_images_then_apply_standardises() -> None:
    images = _array((40, 1, 8, 8), seed=5)
    out = Normalization.from_images(images).apply(images)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(out.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_normalization_as_dict() -> None:
    norm = Normalization(mean=(0.5,), std=(0.25,))
    assert norm.as_dict() == {"scale": "pixel / 255", "mean": [0.5], "std": [0.25]}


def test_empty_split_raises_data_error(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "d")
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((0, 4, 5), dtype=np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(0, dtype=np.uint8))
    with pytest.raises(DataError):
        load_idx_dataset(folder, LABELS)
