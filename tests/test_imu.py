"""IMU data (seglearn smartwatch set, BasicMotions) and the IMU student families."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import io
import os
import pickle
import socket
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgedistill.compress.prune import prune_channels
from edgedistill.data.imu import (
    DEFAULT_WATCH_TEST_SUBJECTS,
    ImuDataset,
    ImuNormalization,
    leave_subjects_out,
    load_basic_motions,
    load_watch_dataset,
    load_watch_recordings,
    watch_dataset_path,
)
from edgedistill.data.packaged import NumpyOnlyUnpickler, load_packaged_object_npy, package_file
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import DataError, MissingDependencyError, UnsafeFileError
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import count_macs, predict_logits, topk_accuracy
from edgedistill.runtime import OnnxRuntimeRunner
from edgedistill.students import STUDENTS, Student, build_model
from edgedistill.students.imu import TINY_CONFIGS, ImuCNN, ImuTCN

needs_seglearn = pytest.mark.skipif(
    importlib.util.find_spec("seglearn") is None, reason="seglearn is not installed"
)
SHAPE = (6, 100)
VARIANTS = {
    "cnn": ("imu_cnn", {}),
    "tcn": ("imu_tcn", {}),
    "tcn_causal": ("imu_tcn", {"causal": True}),
}


@pytest.fixture(scope="module")
def watch() -> ImuDataset:
    if importlib.util.find_spec("seglearn") is None:
        pytest.skip("seglearn is not installed")
    return load_watch_dataset(window_s=2.0, stride_s=1.0)


def small_dataset(**changes: Any) -> ImuDataset:
    rng = np.random.default_rng(0)
    fields: dict[str, Any] = {
        "name": "toy",
        "x_train": rng.normal(size=(4, 2, 5)).astype(np.float32),
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": rng.normal(size=(2, 2, 5)).astype(np.float32),
        "y_test": np.array([1, 0]),
        "labels": ("a", "b"),
        "channels": ("ax", "ay"),
        "units": ("g", "g"),
        "sample_rate_hz": 5.0,
        "window_s": 1.0,
        "stride_s": 1.0,
        "subjects_train": np.array([1, 1, 2, 2]),
        "subjects_test": np.array([3, 3]),
    }
    return ImuDataset(**{**fields, **changes})


# ---- the smartwatch set --------------------------------------------------------------------


@needs_seglearn
def test_watch_recordings_facts() -> None:
    rec = load_watch_recordings()
    assert len(rec.signals) == 140 and rec.sample_rate_hz == 50.0
    assert rec.channels == ("ax", "ay", "az", "wx", "wy", "wz")
    assert rec.labels == ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
    assert rec.units[:3] == ("g", "g", "g") and all("seglearn" in u for u in rec.units[3:])
    assert sorted(set(rec.subjects.tolist())) == list(range(1, 11))
    assert np.bincount(rec.subjects)[1:].tolist() == [14] * 10
    assert np.bincount(rec.targets).tolist() == [20] * 7
    lengths = [len(s) for s in rec.signals]
    assert min(lengths) == 947 and max(lengths) == 2618
    spec = importlib.util.find_spec("seglearn")
    assert spec is not None and spec.origin is not None
    assert watch_dataset_path().is_relative_to(Path(spec.origin).resolve().parent)
    # no way to hand the loaders a path: only the packaged pickle is ever read
    assert not inspect.signature(load_watch_recordings).parameters
    assert "path" not in inspect.signature(load_watch_dataset).parameters


def test_unpickler_refuses_anything_but_numpy() -> None:
    class Sneaky:
        def __reduce__(self) -> tuple[Any, tuple[()]]:
            return (os.getcwd, ())

    with pytest.raises(UnsafeFileError, match="getcwd"):
        NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Sneaky()))).load()
    arrays: dict[str, Any] = {"X": [np.arange(6.0).reshape(3, 2)], "y": np.array([1])}
    loaded = NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(np.array(arrays), protocol=3))).load()
    np.testing.assert_array_equal(loaded.item()["X"][0], arrays["X"][0])


def test_package_file_stays_inside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fakepkg_imu"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    np.save(package / "data" / "ok.npy", np.array({"X": [np.ones((2, 2))]}), allow_pickle=True)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.array({"X": []}), allow_pickle=True)
    (package / "data" / "link.npy").symlink_to(outside)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    kw = {"extra": "imu", "purpose": "a test"}
    path, data = load_packaged_object_npy("fakepkg_imu", "missing.npy", "data/ok.npy", **kw)
    assert path.name == "ok.npy" and data["X"][0].shape == (2, 2)
    with pytest.raises(UnsafeFileError, match="outside"):
        package_file("fakepkg_imu", "data/link.npy", **kw)
    with pytest.raises(DataError, match="has none of"):
        package_file("fakepkg_imu", "data/nothing.npy", **kw)
    with pytest.raises(MissingDependencyError, match="no_such_package_imu"):
        package_file("no_such_package_imu", "x.npy", **kw)


@needs_seglearn
@pytest.mark.parametrize(("window_s", "stride_s"), [(2.0, 1.0), (3.0, 0.5)])
def test_windows_match_hand_computation(window_s: float, stride_s: float) -> None:
    rec = load_watch_recordings()
    ds = load_watch_dataset(window_s=window_s, stride_s=stride_s)
    size, stride = int(window_s * 50), int(stride_s * 50)
    assert ds.input_shape == (6, size) and ds.x_train.dtype == np.float32
    assert (ds.sample_rate_hz, ds.window_s, ds.stride_s) == (50.0, window_s, stride_s)
    is_test = np.isin(rec.subjects, DEFAULT_WATCH_TEST_SUBJECTS)
    counts = np.array([(len(s) - size) // stride + 1 for s in rec.signals])
    assert len(ds.x_train) == counts[~is_test].sum() and len(ds.x_test) == counts[is_test].sum()
    # the first held-out recording, by hand: windows at 0, S, 2S, ... transposed to [C, T]
    first = int(np.flatnonzero(is_test)[0])
    signal = rec.signals[first]
    n = (len(signal) - size) // stride + 1
    expected = np.stack([signal[k * stride : k * stride + size].T for k in range(n)])
    np.testing.assert_array_equal(ds.x_test[:n], expected.astype(np.float32))
    assert (ds.y_test[:n] == rec.targets[first]).all()
    assert ds.subjects_test is not None and (ds.subjects_test[:n] == rec.subjects[first]).all()
    assert n * stride + size > len(signal)  # the dropped tail is shorter than a stride


def test_split_subjects_disjoint_and_labels_in_range(watch: ImuDataset) -> None:
    assert watch.subjects_train is not None and watch.subjects_test is not None
    train, test = set(watch.subjects_train.tolist()), set(watch.subjects_test.tolist())
    assert test == set(DEFAULT_WATCH_TEST_SUBJECTS) and not train & test
    assert train | test == set(range(1, 11))
    for y in (watch.y_train, watch.y_test):
        assert y.dtype == np.int64 and y.min() == 0 and y.max() == len(watch.labels) - 1
    assert (len(watch.x_train), len(watch.x_test)) == (3675, 1002)


def test_leave_subjects_out_resplits(watch: ImuDataset) -> None:
    other = leave_subjects_out(watch, test_subjects=[1, 2, 3])
    assert other.subjects_train is not None and other.subjects_test is not None
    assert set(other.subjects_test.tolist()) == {1, 2, 3}
    assert not set(other.subjects_train.tolist()) & {1, 2, 3}
    assert len(other.x_train) + len(other.x_test) == len(watch.x_train) + len(watch.x_test)
    assert other.normalization != watch.normalization
    same = leave_subjects_out(watch, test_subjects=DEFAULT_WATCH_TEST_SUBJECTS)
    assert same.fingerprint() == watch.fingerprint()


@needs_seglearn
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_s": 0.0}, "positive"),
        ({"window_s": -1.0}, "positive"),
        ({"window_s": 0.01}, "whole number"),
        ({"stride_s": 0.03}, "whole number"),
        ({"window_s": 20.0}, "shortest recording"),
        ({"test_subjects": [42]}, "unknown test subjects"),
        ({"test_subjects": []}, "empty"),
        ({"test_subjects": list(range(1, 11))}, "training split empty"),
    ],
)
def test_watch_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_watch_dataset(**kwargs)


def test_dataset_validation_errors() -> None:
    with pytest.raises(DataError, match="test split is empty"):
        small_dataset(x_test=np.zeros((0, 2, 5), np.float32), y_test=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="label outside"):
        small_dataset(y_train=np.array([0, 1, 2, 1]))
    with pytest.raises(DataError, match="float32"):
        small_dataset(x_train=np.zeros((4, 2, 5)))
    with pytest.raises(DataError, match="no subject ids"):
        leave_subjects_out(small_dataset(subjects_train=None, subjects_test=None), [1])


def test_normalization_on_known_array() -> None:
    x = np.zeros((2, 2, 3), dtype=np.float32)
    x[:, 0] = np.arange(1, 7).reshape(2, 3)  # channel 0: 1..6; channel 1: constant 5
    x[:, 1] = 5.0
    norm = ImuNormalization.from_windows(x)
    assert norm.mean == pytest.approx((3.5, 5.0))
    assert norm.std == pytest.approx((np.sqrt(35 / 12), 1e-6))
    out = norm.apply(x)
    assert out.dtype == torch.float32 and out.shape == (2, 2, 3)
    assert float(out[:, 0].mean()) == pytest.approx(0, abs=1e-6)
    assert float(out[:, 0].std(unbiased=False)) == pytest.approx(1, abs=1e-5)
    assert torch.equal(out[:, 1], torch.zeros(2, 3))
    with pytest.raises(DataError):
        norm.apply(np.zeros((1, 3, 3), np.float32))
    assert small_dataset(x_train=x, y_train=np.array([0, 1]), subjects_train=np.array([1, 2]),
                         x_test=x[:1], y_test=np.array([0]), subjects_test=np.array([3]),
                         window_s=0.6).normalization == norm  # fmt: skip


def test_fingerprint_changes_with_data() -> None:
    base = small_dataset()
    assert base.fingerprint() == small_dataset().fingerprint()
    x = base.x_train.copy()
    x[0, 0, 0] += 1e-3
    changed = [
        small_dataset(x_train=x),
        small_dataset(y_test=np.array([0, 0])),
        small_dataset(subjects_train=np.array([1, 2, 2, 2])),
        small_dataset(stride_s=0.4),
        small_dataset(channels=("ay", "ax")),
    ]
    prints = {base.fingerprint(), *(d.fingerprint() for d in changed)}
    assert len(prints) == len(changed) + 1


def test_basic_motions_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sktime")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the BasicMotions loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ds = load_basic_motions()
    assert ds.x_train.shape == ds.x_test.shape == (40, 6, 100)
    assert ds.labels == ("standing", "running", "walking", "badminton")
    assert np.bincount(ds.y_train).tolist() == np.bincount(ds.y_test).tolist() == [10] * 4
    assert (ds.sample_rate_hz, ds.window_s, ds.stride_s) == (10.0, 10.0, 10.0)
    assert ds.subjects_train is None and len(ds.channels) == 6
    assert np.isfinite(ds.x_train).all()


# ---- students ------------------------------------------------------------------------------


def make_student(variant: str, seed: int = 0) -> ImuCNN | ImuTCN:
    """A tiny student with non-trivial batch-norm statistics and affine parameters."""
    arch, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    config = {**TINY_CONFIGS[arch], **extra, "in_channels": 6, "num_classes": 7}
    model = cast("ImuCNN | ImuTCN", build_model(arch, config))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *SHAPE) * 2 + 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.mul_(torch.linspace(0.5, 1.5, module.num_features))
                module.bias.add_(torch.linspace(-0.2, 0.2, module.num_features))
    return model.eval()


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_registry_and_contract() -> None:
    assert {"imu_cnn", "imu_tcn"} <= set(STUDENTS.names())
    for variant in VARIANTS:
        assert isinstance(make_student(variant), Student)
    assert ImuCNN(widths=(32, 64), width_mult=0.5).current_config()["widths"] == [16, 32]
    with pytest.raises(ValueError):
        ImuCNN(widths=(16, 32), strides=(1,))
    with pytest.raises(ValueError):
        ImuTCN(widths=(16, 32), projections=(True, False))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_and_intermediates(variant: str) -> None:
    model = make_student(variant)
    for t in (100, 37):
        x = torch.randn(3, 6, t)
        logits, feats = model.forward_intermediates(x)
        assert logits.shape == (3, 7)
        torch.testing.assert_close(logits, model(x))
        widths = cast("list[int]", model.current_config()["widths"])
        if variant == "cnn":
            lengths = [t, (t + 1) // 2, ((t + 1) // 2 + 1) // 2]
        else:
            lengths = [t] * len(widths)
        assert [tuple(f.shape) for f in feats] == [
            (3, w, n) for w, n in zip(widths, lengths, strict=True)
        ]


def test_causal_tcn_ignores_the_future() -> None:
    model = make_student("tcn_causal")
    x = torch.randn(2, *SHAPE)
    later = x.clone()
    later[:, :, 60:] = torch.randn(2, 6, 40)
    with torch.no_grad():
        _, a = model.forward_intermediates(x)
        _, b = model.forward_intermediates(later)
    torch.testing.assert_close(a[-1][:, :, :60], b[-1][:, :, :60])
    assert not torch.allclose(a[-1][:, :, 60:], b[-1][:, :, 60:])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_to_deploy_parity(variant: str) -> None:
    model = make_student(variant)
    deploy = model.to_deploy()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in deploy.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert not deploy.training
    x = np.random.default_rng(1).normal(size=(5, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(logits_of(deploy, x), logits_of(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnx_export_parity_dynamic_batch(variant: str, tmp_path: Path) -> None:
    model = make_student(variant)
    path = export_onnx(model.to_deploy(), SHAPE, tmp_path / "imu.onnx")
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(SHAPE)
    x = np.random.default_rng(2).normal(size=(3, *SHAPE)).astype(np.float32)
    reference = logits_of(model, x)
    with OnnxRuntimeRunner(path, variant) as runner:
        for batch in (1, 3):
            out = runner.infer(x[:batch])
            assert out.shape == (batch, 7)
            np.testing.assert_allclose(out, reference[:batch], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_current_config_round_trip(variant: str) -> None:
    model = make_student(variant)
    arch = VARIANTS[variant][0]
    rebuilt = build_model(arch, copy.deepcopy(model.current_config()))
    rebuilt.load_state_dict(model.state_dict())  # strict: identical names and shapes
    x = np.random.default_rng(3).normal(size=(2, *SHAPE)).astype(np.float32)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(model, x))


@pytest.mark.parametrize("variant", ["cnn", "tcn"])
def test_prune_rebuild_and_export(variant: str, tmp_path: Path) -> None:
    model = make_student(variant)
    arch = VARIANTS[variant][0]
    result = prune_channels(model, SHAPE, target_macs_ratio=0.7)
    pruned = cast("ImuCNN | ImuTCN", result.model)
    assert result.macs_ratio <= 0.7 and count_macs(pruned, SHAPE) <= 0.7 * count_macs(model, SHAPE)
    config = pruned.current_config()
    widths = cast("list[int]", config["widths"]) + cast(
        "list[int]", config.get("hidden_widths", [])
    )
    assert all(w % 8 == 0 and w > 0 for w in widths)
    assert config != model.current_config()
    for m in pruned.modules():
        if isinstance(m, nn.Conv1d) and m.kernel_size[0] > 1 and m.in_channels != 6:
            assert m.in_channels % 8 == 0
    rebuilt = build_model(arch, config)
    rebuilt.load_state_dict(pruned.state_dict())
    x = np.random.default_rng(4).normal(size=(3, *SHAPE)).astype(np.float32)
    reference = logits_of(pruned, x)
    np.testing.assert_array_equal(logits_of(rebuilt, x), reference)
    deploy = pruned.to_deploy()
    np.testing.assert_allclose(logits_of(deploy, x), reference, atol=1e-5, rtol=0)
    path = export_onnx(deploy, SHAPE, tmp_path / "pruned.onnx")
    with OnnxRuntimeRunner(path, "pruned") as runner:
        for batch in (1, 3):
            np.testing.assert_allclose(
                runner.infer(x[:batch]), reference[:batch], atol=1e-4, rtol=0
            )


def test_imu_cnn_learns_watch_exercises_across_subjects(watch: ImuDataset) -> None:
    norm = watch.normalization
    x_train, y_train = norm.apply(watch.x_train), torch.from_numpy(watch.y_train)
    torch.manual_seed(0)
    model = build_model("imu_cnn", {**TINY_CONFIGS["imu_cnn"], "in_channels": 6, "num_classes": 7})
    train_student(model, x_train, y_train, TrainSettings(epochs=3, batch_size=64))  # ~2 s
    accuracy = topk_accuracy(predict_logits(model, norm.apply(watch.x_test)), watch.y_test)
    chance = 100 / len(watch.labels)
    assert accuracy > 3 * chance, f"held-out subjects: {accuracy:.1f}% (chance {chance:.1f}%)"
