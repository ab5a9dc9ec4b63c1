"""Layered self-distillation: label/transform layout, the BYOT/LSSKD loss, multi-exit students."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.distill.layered import (
    NUM_IMAGE_TRANSFORMS,
    NUM_IMU_TRANSFORMS,
    LayeredSDLoss,
    augmented_labels,
    class_logits,
    image_transforms,
    imu_axis_permutation,
    imu_transforms,
    layered_sd_loss,
)
from edgedistill.errors import RecipeError
from edgedistill.students.imu import ImuCNN, ImuTCN
from edgedistill.students.multi_exit import (
    MultiExitDeploy,
    MultiExitStudent,
    exit_output_names,
    export_multi_exit_onnx,
)
from edgedistill.students.vision import ConvNet

# (family, constructor, input shape without batch, transforms)
FAMILIES = {
    "convnet": (lambda k: ConvNet(num_classes=k, widths=(8, 16, 16)), (1, 12, 12), 4),
    "imu_cnn": (lambda k: ImuCNN(num_classes=k, widths=(16, 32, 32)), (6, 32), 3),
}


# --------------------------------------------------------------------- labels and transforms


def test_augmented_labels_are_transform_major() -> None:
    labels = torch.tensor([2, 0, 1])
    out = augmented_labels(labels, 4)
    # row m·B + b holds y_b·M + m
    assert out.tolist() == [8, 0, 4, 9, 1, 5, 10, 2, 6, 11, 3, 7]
    assert augmented_labels(labels, 1).tolist() == [2, 0, 1]
    assert augmented_labels(torch.tensor([1, -1]), 2).tolist() == [2, -1, 3, -1]


@pytest.mark.parametrize(
    "labels, m",
    [
        (torch.tensor([0, 1]), 0),
        (torch.tensor([[0]]), 2),
        (torch.tensor([0.0]), 2),
        (torch.tensor([-2]), 2),
    ],
)
def test_augmented_labels_rejects_bad_input(labels: torch.Tensor, m: int) -> None:
    with pytest.raises(ValueError):
        augmented_labels(labels, m)


def test_image_rotations_of_a_known_2x2_image() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = image_transforms(x)
    assert out.shape == (NUM_IMAGE_TRANSFORMS, 1, 2, 2)
    assert out[0, 0].tolist() == [[1, 2], [3, 4]]
    assert out[1, 0].tolist() == [[2, 4], [1, 3]]  # 90° counter-clockwise
    assert out[2, 0].tolist() == [[4, 3], [2, 1]]
    assert out[3, 0].tolist() == [[3, 1], [4, 2]]
    with pytest.raises(ValueError, match="square"):
        image_transforms(torch.zeros(1, 1, 2, 3))


def test_image_transform_rows_match_augmented_labels() -> None:
    x = torch.arange(3 * 9, dtype=torch.float32).reshape(3, 1, 3, 3)
    labels = torch.tensor([1, 0, 2])
    out, joint = image_transforms(x), augmented_labels(labels, NUM_IMAGE_TRANSFORMS)
    for m in range(NUM_IMAGE_TRANSFORMS):
        for b in range(3):
            row = m * 3 + b
            torch.testing.assert_close(out[row], torch.rot90(x[b], m, dims=(1, 2)))
            assert divmod(int(joint[row]), NUM_IMAGE_TRANSFORMS) == (int(labels[b]), m)


def test_imu_time_reversal_of_a_ramp_and_grouped_permutation() -> None:
    t = torch.arange(5, dtype=torch.float32)
    x = torch.stack([t + 10 * c for c in range(6)])[None].repeat(2, 1, 1)  # [2, 6, 5]
    x[1] += 100
    out = imu_transforms(x)
    assert out.shape == (2 * NUM_IMU_TRANSFORMS, 6, 5)
    torch.testing.assert_close(out[:2], x)
    assert out[2, 0].tolist() == [4, 3, 2, 1, 0]  # block 1: the ramp runs backwards
    assert out[3, 5].tolist() == [154, 153, 152, 151, 150]
    perm = imu_axis_permutation(6)
    assert perm == [1, 2, 0, 4, 5, 3]
    assert set(perm[:3]) == {0, 1, 2} and set(perm[3:]) == {3, 4, 5}  # accel/gyro stay grouped
    assert [p - 3 for p in perm[3:]] == perm[:3]  # same axis map in both groups
    torch.testing.assert_close(out[4:], x[:, perm])
    assert imu_transforms(torch.zeros(1, 9, 4)).shape == (3, 9, 4)
    for shape in [(1, 4, 5), (1, 6)]:
        with pytest.raises(ValueError):
            imu_transforms(torch.zeros(shape))


def test_class_logits_is_the_identity_slice() -> None:
    joint = torch.arange(12.0).reshape(1, 12)  # K = 3, M = 4
    assert class_logits(joint, 4).tolist() == [[0.0, 4.0, 8.0]]
    with pytest.raises(ValueError):
        class_logits(joint, 5)


# --------------------------------------------------------------------------------------- loss


def test_deepest_only_equals_cross_entropy() -> None:
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    loss, parts = layered_sd_loss([z], y, temperature=4.0, kd_weight=1.0, ce_weight=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)
    assert parts == {"ce/0": pytest.approx(loss.item())}


def test_identical_exits_have_zero_kd() -> None:
    torch.manual_seed(1)
    z, y = torch.randn(4, 6), torch.randint(0, 6, (4,))
    loss, parts = layered_sd_loss(
        [z, z.clone(), z.clone()], y, temperature=3.0, kd_weight=2.0, ce_weight=0.5
    )
    assert parts["kd/0"] == pytest.approx(0.0, abs=1e-6)
    assert parts["kd/1"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(2.0 * F.cross_entropy(z, y).item(), rel=1e-5)


def test_hand_computed_two_exit_case() -> None:
    shallow = torch.tensor([[0.0, 0.0]])
    deep = torch.tensor([[math.log(3.0), 0.0]])
    s3 = math.sqrt(3.0)
    p_t = [s3 / (s3 + 1), 1 / (s3 + 1)]  # softmax(deep / 2)
    kd = 4.0 * sum(p * math.log(p / 0.5) for p in p_t)  # T² · KL(p_t ‖ (½, ½))
    ce_deep, ce_shallow = -math.log(0.75), math.log(2.0)
    loss, parts = layered_sd_loss(
        [shallow, deep], torch.tensor([0]), temperature=2.0, kd_weight=0.7, ce_weight=0.5
    )
    assert parts["kd/0"] == pytest.approx(kd, rel=1e-5)
    assert parts["ce/0"] == pytest.approx(ce_shallow, rel=1e-6)
    assert parts["ce/1"] == pytest.approx(ce_deep, rel=1e-6)
    assert loss.item() == pytest.approx(ce_deep + 0.5 * ce_shallow + 0.7 * kd, rel=1e-5)


def test_kd_gradient_does_not_reach_the_deepest_exit() -> None:
    torch.manual_seed(2)
    shallow = torch.randn(5, 4, requires_grad=True)
    deep = torch.randn(5, 4, requires_grad=True)
    y = torch.randint(0, 4, (5,))
    loss, _ = layered_sd_loss([shallow, deep], y, temperature=2.0, kd_weight=3.0, ce_weight=0.0)
    loss.backward()
    # only the deepest CE reaches `deep`: d CE / dz = (softmax(z) − onehot) / B
    expected = (torch.softmax(deep.detach(), -1) - F.one_hot(y, 4)) / 5
    torch.testing.assert_close(deep.grad, expected, rtol=1e-5, atol=1e-6)
    assert shallow.grad is not None and shallow.grad.abs().sum() > 0


def test_feature_hint_zero_when_equal_and_one_sided() -> None:
    torch.manual_seed(3)
    z, y = torch.randn(3, 4), torch.randint(0, 4, (3,))
    f = torch.randn(3, 8)
    _, parts = layered_sd_loss([z, z], y, exit_features=[f, f.clone()], feature_weight=1.0)
    assert parts["hint/0"] == pytest.approx(0.0, abs=1e-7)
    f_shallow = torch.randn(3, 8, requires_grad=True)
    f_deep = torch.randn(3, 8, requires_grad=True)
    loss, parts = layered_sd_loss(
        [z, z],
        y,
        kd_weight=0.0,
        ce_weight=0.0,
        exit_features=[f_shallow, f_deep],
        feature_weight=2.0,
    )
    hint = ((f_shallow - f_deep) ** 2).mean().item()
    assert parts["hint/0"] == pytest.approx(hint, rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(z, y).item() + 2.0 * hint, rel=1e-6)
    loss.backward()
    assert f_deep.grad is None and f_shallow.grad is not None


def test_unlabelled_rows_skip_ce_but_are_distilled() -> None:
    torch.manual_seed(4)
    shallow, deep = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, -1, 2, -1])
    _, parts = layered_sd_loss([shallow, deep], y, temperature=1.0)
    keep = y >= 0
    assert parts["ce/1"] == pytest.approx(F.cross_entropy(deep[keep], y[keep]).item(), rel=1e-6)
    loss, parts = layered_sd_loss([shallow, deep], torch.full((4,), -1), temperature=1.0)
    assert parts["ce/0"] == parts["ce/1"] == 0.0
    assert loss.item() == pytest.approx(parts["kd/0"], rel=1e-6) and parts["kd/0"] > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exit_logits": [], "targets": torch.tensor([0])},
        {"exit_logits": [torch.zeros(2, 3), torch.zeros(2, 4)], "targets": torch.tensor([0, 1])},
        {"exit_logits": [torch.zeros(2, 3)], "targets": torch.tensor([0, 3])},
        {"exit_logits": [torch.zeros(2, 3)], "targets": torch.tensor([0.0, 1.0])},
        {"exit_logits": [torch.zeros(2, 3)], "targets": torch.tensor([0, 1]), "temperature": 0.0},
        {"exit_logits": [torch.zeros(2, 3)], "targets": torch.tensor([0, 1]), "kd_weight": -1.0},
        {
            "exit_logits": [torch.zeros(2, 3)],
            "targets": torch.tensor([0, 1]),
            "feature_weight": 1.0,
        },
        {
            "exit_logits": [torch.zeros(2, 3)] * 2,
            "targets": torch.tensor([0, 1]),
            "exit_features": [torch.zeros(2, 1)],
        },
    ],
)
def test_loss_rejects_bad_input(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        layered_sd_loss(**kwargs)


def test_module_form_matches_function() -> None:
    torch.manual_seed(5)
    z = [torch.randn(4, 3) for _ in range(3)]
    y = torch.randint(0, 3, (4,))
    value = LayeredSDLoss(temperature=2.0, kd_weight=0.3, ce_weight=0.6)(z, y)[0]
    expected = layered_sd_loss(z, y, temperature=2.0, kd_weight=0.3, ce_weight=0.6)[0]
    assert value.item() == pytest.approx(expected.item(), rel=1e-7)


# ------------------------------------------------------------------------- multi-exit student


def _student(family: str, k: int = 3) -> tuple[MultiExitStudent, tuple[int, ...], int]:
    make, shape, m = FAMILIES[family]
    torch.manual_seed(0)
    student = MultiExitStudent(make(k), num_transforms=m)
    student.train()
    with torch.no_grad():  # move the BN running statistics away from their defaults
        for _ in range(3):
            student.forward_exits(torch.randn(8, *shape) * 2 + 0.5)
    return student.eval(), shape, m


@pytest.mark.parametrize("family", list(FAMILIES))
def test_student_shapes_and_identity_slice(family: str) -> None:
    student, shape, m = _student(family)
    x = torch.randn(5, *shape)
    exits = student.forward_exits(x)
    feats = student.forward_exit_features(x)
    assert student.num_exits == len(exits) == len(feats) == 3
    assert all(z.shape == (5, 3 * m) for z in exits)
    dim = student.backbone.classifier.in_features
    assert all(f.shape == (5, dim) for f in feats)
    logits = student(x)
    assert logits.shape == (5, 3)
    torch.testing.assert_close(logits, exits[-1][:, ::m])
    inter_logits, maps = student.forward_intermediates(x)
    torch.testing.assert_close(inter_logits, logits)
    assert len(maps) == 3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_deploy_without_exits_is_the_plain_backbone(family: str) -> None:
    student, shape, _ = _student(family)
    deploy = student.to_deploy()
    assert type(deploy) is type(student.backbone) and not deploy.training
    names = [n for n, _ in deploy.named_parameters()]
    assert not any(n.startswith(("heads", "projections")) for n in names)
    assert deploy.classifier.out_features == 3
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), student(x), rtol=0, atol=1e-5)


def test_tcn_backbone_and_single_transform() -> None:
    torch.manual_seed(0)
    student = MultiExitStudent(ImuTCN(num_classes=4, widths=(16, 16, 32), kernel_size=3))
    exits = student.forward_exits(torch.randn(2, 6, 16))
    assert [z.shape for z in exits] == [(2, 4)] * 3
    assert isinstance(student.projections[0], nn.Linear)  # 16 -> 32 for hints


def test_construction_errors_raise_recipe_error() -> None:
    with pytest.raises(RecipeError):
        MultiExitStudent(nn.Linear(2, 2))
    with pytest.raises(RecipeError):
        MultiExitStudent(ConvNet(widths=(8, 8)), num_transforms=0)
    with pytest.raises(RecipeError, match="stages"):
        MultiExitStudent(ConvNet(widths=(8,)))


def test_config_round_trip_and_reset_classifier() -> None:
    student = MultiExitStudent(
        ConvNet(num_classes=3, widths=(8, 16)), num_transforms=4, head_width=12
    )
    config = student.current_config()
    assert (
        config["num_classes"] == 3 and config["num_transforms"] == 4 and config["head_width"] == 12
    )
    rebuilt = MultiExitStudent.from_config("convnet", config)
    rebuilt.load_state_dict(student.state_dict())  # strict: same parameters
    with pytest.raises(RecipeError):
        MultiExitStudent.from_config("convnet", {**config, "bogus": 1})
    student.reset_classifier(5)
    assert [z.shape[1] for z in student.forward_exits(torch.randn(2, 1, 8, 8))] == [20, 20]
    assert student.current_config()["num_classes"] == 5


@pytest.mark.parametrize("family", list(FAMILIES))
def test_deploy_with_exits_matches_the_student_exits(family: str) -> None:
    student, shape, m = _student(family)
    deploy = student.to_deploy(keep_exits=True)
    assert isinstance(deploy, MultiExitDeploy) and not deploy.training
    assert deploy.output_names == exit_output_names(3) == ["exit0", "exit1", "exit2"]
    assert not any(n.startswith("projections") for n, _ in deploy.named_parameters())
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = [z[:, ::m] for z in student.forward_exits(x)]
        outs = deploy(x)
    assert len(outs) == 3
    for got, want in zip(outs, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# one export takes several seconds on a shared CPU: the IMU family runs with --runslow
@pytest.mark.parametrize("family", ["convnet", pytest.param("imu_cnn", marks=pytest.mark.slow)])
def test_deploy_with_exits_exports_one_onnx_output_per_exit(family: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    student, shape, _ = _student(family)
    deploy = student.to_deploy(keep_exits=True)
    path = export_multi_exit_onnx(deploy, shape, tmp_path / "exits.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == exit_output_names(3)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        want = deploy(x)
    for batch in (1, 3):
        got = session.run(None, {"input": x[:batch].numpy()})
        assert len(got) == 3
        for o, w in zip(got, want, strict=True):
            np.testing.assert_allclose(o, w[:batch].numpy(), rtol=0, atol=1e-4)


def test_toy_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread avoids spinning on shared CPUs
    try:
        student = MultiExitStudent(ConvNet(num_classes=3, widths=(8, 16, 16)), num_transforms=4)
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
        xs, ys = image_transforms(x), augmented_labels(y, 4)
        opt = torch.optim.Adam(student.parameters(), lr=0.01)
        epoch_losses = []
        for _ in range(2):
            total = 0.0
            for idx in torch.randperm(len(ys)).split(32):
                exits, feats = student.forward_exits_and_features(xs[idx])
                loss, _ = layered_sd_loss(exits, ys[idx], exit_features=feats, feature_weight=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            epoch_losses.append(total)
    finally:
        torch.set_num_threads(threads)
    assert epoch_losses[1] < epoch_losses[0]
