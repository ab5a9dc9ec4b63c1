"""timm models as students: contract, local weights, deploy, ONNX export and pruning."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgedistill.compress.prune import prune_channels
from edgedistill.errors import MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.export.onnx import export_onnx
from edgedistill.metrics import count_macs
from edgedistill.runtime import OnnxRuntimeRunner
from edgedistill.students import STUDENTS, Student, build_model
from edgedistill.students.timm_students import TimmStudent

pytest.importorskip("timm")

GRAY = (1, 28, 28)
RGB = (3, 32, 32)


def make(name: str, shape: tuple[int, ...], num_classes: int = 5, seed: int = 0) -> TimmStudent:
    """A student with non-trivial batch-norm statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    config = {"name": name, "num_classes": num_classes, "in_chans": shape[0]}
    model = cast("TimmStudent", build_model("timm_student", config)).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *shape))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.weight is not None:
                module.weight.mul_(torch.linspace(0.5, 1.5, module.num_features))
                module.bias.add_(torch.linspace(-0.2, 0.2, module.num_features))
    return model.eval()


def inputs(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def logits_of(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast("torch.Tensor", model.eval()(torch.from_numpy(x))).numpy()


def test_contract_shapes_and_reset() -> None:
    model = make("mobilenetv3_small_050", GRAY)
    assert "timm_student" in STUDENTS.names() and isinstance(model, Student)
    x = torch.from_numpy(inputs(GRAY, 3, 1))
    with torch.no_grad():
        logits, feats = model.forward_intermediates(x)
        torch.testing.assert_close(logits, model(x))
        # five feature_info stages at strides 2, 4, 8, 16, 32 (ceil for 28 px)
        assert [tuple(f.shape) for f in feats] == [
            (3, 16, 14, 14),
            (3, 8, 7, 7),
            (3, 16, 4, 4),
            (3, 24, 2, 2),
            (3, 288, 1, 1),
        ]
        assert model.forward_features(x).shape == (3, 1024)  # after MobileNetV3's head conv
    model.reset_classifier(9)
    assert model(x).shape == (3, 9) and model.current_config()["num_classes"] == 9
    assert model.current_config()["channels"] == {}
    with pytest.raises(RecipeError):
        model.reset_classifier(0)


def test_hook_fallback_matches_timm_intermediates(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make("resnet10t", GRAY)
    x = torch.from_numpy(inputs(GRAY, 2, 2))
    with torch.no_grad():
        logits, feats = model.forward_intermediates(x)
        monkeypatch.delattr(type(model.model), "forward_intermediates")
        assert not hasattr(model.model, "forward_intermediates")
        hooked_logits, hooked = model.forward_intermediates(x)
    torch.testing.assert_close(hooked_logits, logits)
    assert len(hooked) == len(feats) == 5
    for a, b in zip(hooked, feats, strict=True):
        torch.testing.assert_close(a, b)


def test_current_config_round_trip() -> None:
    model = make("mobilenetv3_small_050", GRAY)
    model.reset_classifier(4)
    rebuilt = build_model("timm_student", model.current_config())
    rebuilt.load_state_dict(model.state_dict())  # strict: identical names and shapes
    x = inputs(GRAY, 2, 3)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(model, x))


def test_local_weights_init(tmp_path: Path) -> None:
    model = make("mobilenetv3_small_050", RGB, num_classes=5)
    x = inputs(RGB, 2, 4)
    # a student's own state dict ("model." keys) as safetensors: exact round trip
    ours = tmp_path / "student.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ours))
    again = TimmStudent("mobilenetv3_small_050", num_classes=5, weights=ours)
    assert again.current_config()["weights"] == str(ours)
    np.testing.assert_array_equal(logits_of(again, x), logits_of(model, x))
    # timm's own keys as a weights-only pickle, for another task: the head is fresh, the
    # backbone is loaded, and a grayscale student gets the RGB stem summed over channels
    timm_keys = tmp_path / "timm.pth"
    torch.save(model.model.state_dict(), timm_keys)
    other = TimmStudent("mobilenetv3_small_050", num_classes=3, in_chans=1, weights=timm_keys)
    ref, got = model.model.state_dict(), other.model.state_dict()
    torch.testing.assert_close(
        got["conv_stem.weight"], ref["conv_stem.weight"].sum(1, keepdim=True)
    )
    assert got["classifier.weight"].shape == (3, 1024)
    for key in set(ref) - {"conv_stem.weight", "classifier.weight", "classifier.bias"}:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0)
    assert other.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    with pytest.raises(RecipeError, match="do not fit"):
        TimmStudent("resnet10t", num_classes=5, weights=ours)
    with pytest.raises(RecipeError, match="does not exist"):
        TimmStudent("resnet10t", weights=tmp_path / "missing.safetensors")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weight": torch.zeros(1), "note": Fraction(1, 2)}, unsafe)
    with pytest.raises(UnsafeFileError):
        TimmStudent("resnet10t", weights=unsafe)


def test_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RecipeError, match="mobilenetv3_small_050") as info:
        build_model("timm_student", {"name": "mobilenetv3_smal_050"})
    assert "\n" not in str(info.value) and "did you mean" in str(info.value)
    with pytest.raises(RecipeError, match="num_classes"):
        TimmStudent("resnet10t", num_classes=0)
    with pytest.raises(RecipeError, match="timm student 'resnet10t'"):
        TimmStudent("resnet10t", model_args={"no_such_argument": 1})
    with pytest.raises(RecipeError, match="cannot resize"):
        TimmStudent("resnet10t", channels={"no.such.layer": [8]})
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install timm"):
        TimmStudent("resnet10t")


def test_to_deploy_reparameterizes() -> None:
    model = make("repghostnet_050", RGB)
    deploy = model.to_deploy()
    assert not deploy.training and model.current_config()["name"] == "repghostnet_050"

    def batch_norms(m: nn.Module) -> int:
        return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())

    assert batch_norms(deploy) < batch_norms(model)  # RepGhost's branches were fused
    x = inputs(RGB, 3, 5)
    np.testing.assert_allclose(logits_of(deploy, x), logits_of(model, x), atol=1e-5, rtol=0)


def check_onnx(model: nn.Module, reference: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Export ``model``; onnxruntime matches ``reference`` at batch 1 and 3 (dynamic batch)."""
    export_onnx(model, shape, path)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(shape)
    x = inputs(shape, 3, 6)
    expected = logits_of(reference, x)
    with OnnxRuntimeRunner(path, "image") as runner:
        for batch in (1, 3):
            out = runner.infer(x[:batch])
            assert out.shape == (batch, expected.shape[1])
            np.testing.assert_allclose(out, expected[:batch], atol=1e-4, rtol=0)


def test_onnx_export_parity(tmp_path: Path) -> None:
    model = make("resnet10t", RGB)
    check_onnx(model.to_deploy(), model, RGB, tmp_path / "resnet10t.onnx")


def test_prune_rebuild_and_export(tmp_path: Path) -> None:
    model = make("resnet10t", GRAY)
    # lookahead 1 / beam 1 / round_to 16 keep the search to a few seconds on a CPU
    result = prune_channels(model, GRAY, target_macs_ratio=0.7, round_to=16, lookahead=1, beam=1)
    pruned = cast("TimmStudent", result.model)
    assert result.macs_ratio <= 0.7 and count_macs(pruned, GRAY) <= 0.7 * count_macs(model, GRAY)
    config = pruned.current_config()
    assert config["channels"] and all(
        w[0] % 8 == 0 for w in config["channels"].values() if len(w) == 1
    )
    assert pruned.classifier.out_features == 5  # type: ignore[union-attr]
    rebuilt = build_model("timm_student", config)  # through JSON-able arguments only
    rebuilt.load_state_dict(pruned.state_dict())
    x = inputs(GRAY, 3, 7)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(pruned, x))
    check_onnx(pruned.to_deploy(), pruned, GRAY, tmp_path / "pruned.onnx")
    pruned.reset_classifier(2)  # the pruned input width is kept, and still round-trips
    assert pruned(torch.from_numpy(x)).shape == (3, 2)
    rebuilt = build_model("timm_student", pruned.current_config())
    rebuilt.load_state_dict(pruned.state_dict())
