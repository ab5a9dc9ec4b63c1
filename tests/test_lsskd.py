"""LSSKD / HSAKD self-distillation: the loss against hand-computed numbers, the student layout,
the recipe term (training, resumption, the distill stage) and bad inputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from edgedistill.config import load_recipe
from edgedistill.distill.lsskd import LSSKDTerm, lsskd_loss, lsskd_student, soft_cross_entropy
from edgedistill.distill.objective import LossTermSpec
from edgedistill.distill.trainer import TrainSettings, train_student
from edgedistill.errors import RecipeError
from edgedistill.pipeline.run import run_pipeline
from edgedistill.students import build_model
from edgedistill.students.io import load_model
from edgedistill.students.multi_exit import MultiExitStudent

LN5 = math.log(5.0)


def _hand_case() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """B = 1 sample of class 1, K = 2 classes, M = 2 transformations, L = 2 auxiliary heads.

    Joint labels: row 0 (identity) 1·2 + 0 = 2, row 1 (transformed) 1·2 + 1 = 3.
    Shallow head: uniform logits. Deepest head: row 0 = [0, 0, ln 5, 0], row 1 uniform.
    Main head: [0, 0] (uniform over K).
    """
    shallow = torch.zeros(2, 4)
    deep = torch.tensor([[0.0, 0.0, LN5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    return [shallow, deep], torch.zeros(1, 2), torch.tensor([1])


def test_hand_computed_loss_at_temperature_one() -> None:
    aux, main, y = _hand_case()
    loss, parts = lsskd_loss(aux, main, y, num_transforms=2, temperature=1.0)
    ce_main = math.log(2)  # uniform over 2 classes
    ce_shallow = math.log(4)  # uniform over 4 joint classes, both rows
    # deepest row 0: softmax [1/8, 1/8, 5/8, 1/8], label 2 -> -ln(5/8); row 1 uniform -> ln 4
    ce_deep = (-math.log(5 / 8) + math.log(4)) / 2
    # KL(q_deep ‖ uniform) on row 0 = Σ q ln(4q); row 1 = 0; batch mean over 2 rows
    kd_shallow = (3 / 8 * math.log(4 / 8) + 5 / 8 * math.log(20 / 8)) / 2
    # identity slice of the deepest row 0: columns 0 and 2 = [0, ln 5] -> [1/6, 5/6]; main uniform
    kd_main = 1 / 6 * math.log((1 / 6) / (1 / 2)) + 5 / 6 * math.log((5 / 6) / (1 / 2))
    assert parts["ce/main"] == pytest.approx(0.693147, abs=1e-6)
    assert parts["ce/0"] == pytest.approx(ce_shallow)
    assert parts["ce/1"] == pytest.approx(ce_deep)
    assert parts["kd/0"] == pytest.approx(kd_shallow)
    assert parts["kd/0"] == pytest.approx(0.156376, abs=1e-6)
    assert parts["kd/main"] == pytest.approx(kd_main)
    assert parts["kd/main"] == pytest.approx(0.242586, abs=1e-6)
    expected = ce_main + ce_shallow + ce_deep + kd_shallow + kd_main
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    weighted, _ = lsskd_loss(
        aux, main, y, num_transforms=2, temperature=1.0, kd_weight=0.5, main_kd_weight=0.0
    )
    assert float(weighted) == pytest.approx(ce_main + ce_shallow + ce_deep + kd_shallow / 2)


def test_hand_computed_main_kd_at_temperature_two_carries_tau_squared() -> None:
    aux, main, y = _hand_case()
    _, parts = lsskd_loss(aux, main, y, num_transforms=2, temperature=2.0)
    # [0, ln 5] / 2 -> softmax [1, √5] / (1 + √5); main uniform; times τ² = 4
    r5 = math.sqrt(5)
    p = [1 / (1 + r5), r5 / (1 + r5)]
    assert parts["kd/main"] == pytest.approx(4 * sum(q * math.log(2 * q) for q in p))


def test_hand_computed_label_softening() -> None:
    """α = 0.5: ŷ = 0.5·onehot + 0.5·previous prediction, main and auxiliary heads alike."""
    main = torch.tensor([[math.log(3), 0.0]])  # softmax [3/4, 1/4]
    aux = [torch.tensor([[math.log(2), 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])]  # L = 1
    main_prev = torch.tensor([[0.8, 0.2]])
    aux_prev = [torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])]
    _, parts = lsskd_loss(
        aux, main, torch.tensor([1]), num_transforms=2, alpha=0.5,
        aux_prev=aux_prev, main_prev=main_prev, main_kd_weight=0.0,
    )  # fmt: skip
    # main: ŷ = [0.4, 0.6]
    assert parts["ce/main"] == pytest.approx(-(0.4 * math.log(3 / 4) + 0.6 * math.log(1 / 4)))
    # row 0: softmax [2/5, 1/5, 1/5, 1/5], ŷ = 0.5·e2 + 0.5·e0; row 1: uniform pred -> ln 4
    row0 = -(0.5 * math.log(1 / 5) + 0.5 * math.log(2 / 5))
    assert parts["ce/0"] == pytest.approx((row0 + math.log(4)) / 2)
    assert "kd/0" not in parts  # a single head has nobody shallower to teach


def test_unlabelled_rows_skip_ce_and_soft_ce_matches_cross_entropy() -> None:
    z = torch.tensor([[1.0, 2.0, 0.5]])
    assert float(soft_cross_entropy(z, torch.tensor([-1]))) == 0.0
    assert float(soft_cross_entropy(z, torch.tensor([1]))) == pytest.approx(
        float(torch.nn.functional.cross_entropy(z, torch.tensor([1])))
    )
    aux, main, _ = _hand_case()
    _, parts = lsskd_loss(aux, main, torch.tensor([-1]), num_transforms=2, temperature=1.0)
    assert parts["ce/main"] == parts["ce/0"] == 0.0 and parts["kd/0"] > 0


def test_kd_gradient_does_not_reach_the_deepest_head() -> None:
    aux, main, y = _hand_case()
    grads = []
    for kd_weight in (0.0, 3.0):
        deep = aux[1].clone().requires_grad_(True)
        shallow = aux[0].clone().requires_grad_(True)
        loss, _ = lsskd_loss([shallow, deep], main, y, num_transforms=2, kd_weight=kd_weight)
        loss.backward()
        grads.append((deep.grad.clone(), shallow.grad.clone()))  # type: ignore[union-attr]
    torch.testing.assert_close(grads[0][0], grads[1][0])  # deepest: CE only
    assert not torch.allclose(grads[0][1], grads[1][1])  # shallow: pulled by the KD term


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"aux_logits": []}, "at least one"),
        ({"aux_logits": [torch.zeros(2, 5)]}, "K·M"),  # width 5 not K x M = 4
        ({"aux_logits": [torch.zeros(1, 4)]}, "K·M"),  # rows not M·B
        ({"num_transforms": 0}, "M >= 1"),
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 0.5}, "aux_prev"),
        ({"kd_weight": -1.0}, ">= 0"),
        ({"feature_weight": 1.0}, "aux feature"),
        ({"targets": torch.tensor([2])}, r"\[0, 2\)"),
        ({"targets": torch.tensor([0.0])}, "integer"),
    ],
)
def test_loss_rejects_bad_input(kwargs: dict[str, Any], match: str) -> None:
    aux, main, y = _hand_case()
    args: dict[str, Any] = {"aux_logits": aux, "main_logits": main, "targets": y}
    args |= {k: v for k, v in kwargs.items() if k in args}
    options = {"num_transforms": 2} | {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(ValueError, match=match):
        lsskd_loss(args["aux_logits"], args["main_logits"], args["targets"], **options)


# ----------------------------------------------------------------------------- the student


def _student(in_channels: int = 1, k: int = 3) -> MultiExitStudent:
    torch.manual_seed(0)
    base = build_model("convnet", {"in_channels": in_channels, "num_classes": k,
                                   "widths": [4, 8, 8]})  # fmt: skip
    student = lsskd_student(base, "rotate4")
    assert isinstance(student, MultiExitStudent)
    return student


def test_student_layout_heads_after_every_stage_and_a_plain_main_head() -> None:
    student = _student()
    x = torch.randn(5, 1, 8, 8)
    exits = student.forward_exits(x)
    assert [tuple(z.shape) for z in exits] == [(5, 12)] * 3 + [(5, 3)]
    assert student(x).shape == (5, 3)
    torch.testing.assert_close(student(x), exits[-1])
    config = student.current_config()
    assert config["joint_main"] is False and config["last_stage_exit"] is True
    rebuilt = MultiExitStudent.from_config("convnet", config)
    assert [tuple(z.shape) for z in rebuilt.forward_exits(x)] == [(5, 12)] * 3 + [(5, 3)]


def test_deployed_student_is_the_plain_k_class_backbone() -> None:
    student = _student().eval()
    x = torch.randn(4, 1, 8, 8)
    plain = student.plain_student()
    assert not any("heads" in name for name, _ in plain.named_modules())
    assert plain(x).shape == (4, 3)
    torch.testing.assert_close(plain(x), student(x))
    deploy = student.to_deploy()
    torch.testing.assert_close(deploy(x), student(x), rtol=0, atol=1e-5)
    exits = student.to_deploy(keep_exits=True)(x)  # last-stage aux head is training-only
    assert [tuple(z.shape) for z in exits] == [(4, 3)] * 3
    torch.testing.assert_close(exits[-1], student(x), rtol=0, atol=1e-5)


def test_gradients_reach_every_aux_head_the_main_head_and_the_backbone() -> None:
    student = _student()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    term = LSSKDTerm(LSSKDTerm.config(name="lsskd", weight=1.0))
    from edgedistill.distill.ddp import TrainingForward
    from edgedistill.distill.terms import TermBatch

    batch = TermBatch(y, torch.arange(6), {}, net=TrainingForward(student), x=x)
    term.loss(batch, 0, 1).backward()
    assert batch.logits is not None and batch.logits.shape == (6, 3)
    for name, param in student.named_parameters():
        if name.startswith("projections"):
            continue  # feature alignment is off
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_term_on_a_student_without_exits_or_with_a_joint_main_head_fails_clearly() -> None:
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8) % 3
    settings = TrainSettings(epochs=1, batch_size=8, terms=(LossTermSpec("lsskd", 1.0),))
    plain = build_model("convnet", {"in_channels": 1, "num_classes": 3, "widths": [4, 8]})
    with pytest.raises(ValueError, match="forward_exits"):
        train_student(plain, x, y, settings)
    joint = MultiExitStudent(
        build_model("convnet", {"in_channels": 1, "num_classes": 3, "widths": [4, 8]}),
        num_transforms=4,
    )
    with pytest.raises(ValueError, match="lsskd_student"):
        train_student(joint, x, y, settings)
    with pytest.raises(RecipeError, match="transforms"):
        lsskd_student(plain, "flip")
    with pytest.raises(ValueError, match="transforms"):
        LossTermSpec("lsskd", 1.0, transforms="flip")


def test_memory_rows_round_trip() -> None:
    main = torch.randn(3, 2)
    aux = [torch.randn(6, 4), torch.randn(6, 4)]  # B = 3, M = 2, K = 2
    rows = LSSKDTerm._join(main, aux, 2)
    assert rows.shape == (3, 2 + 2 * 2 * 4)
    got_main, got_aux = LSSKDTerm._split(rows, 2, 2, 3)
    torch.testing.assert_close(got_main, main.softmax(1))
    for a, b in zip(got_aux, aux, strict=True):
        torch.testing.assert_close(a, b.softmax(1))


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    x[:, 0, :, 0] += 2.0 * y[:, None]  # a learnable, rotation-sensitive cue
    return torch.from_numpy(x), torch.from_numpy(y)


def test_term_trains_with_softening_and_resumes_bit_identical(tmp_path: Path) -> None:
    x, y = _data()
    term = LossTermSpec("lsskd", 1.0, transforms="rotate4", alpha_T=0.8, feature_weight=0.1)
    settings = TrainSettings(epochs=3, batch_size=16, lr=0.05, terms=(term,))
    whole = _student()
    result = train_student(whole, x, y, settings)
    assert result.history[-1]["lsskd"] < result.history[0]["lsskd"]
    ckpt = tmp_path / "ckpt.pt"
    train_student(_student(), x, y, settings, checkpoint_path=ckpt, stop_after_epoch=1)
    resumed = _student()
    train_student(resumed, x, y, settings, checkpoint_path=ckpt)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_distill_stage_with_lsskd_saves_the_plain_student(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    recipe = dict(tiny_recipe_dict)
    recipe["student"] = {"arch": "convnet", "config": {"widths": [8, 16, 16]}}
    recipe["distill"] = {
        **recipe["distill"],
        "terms": [{"name": "lsskd", "weight": 1.0, "transforms": "rotate4"}],
    }
    path = tmp_path / "lsskd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ctx = run_pipeline(load_recipe(path), tmp_path / "run", until="distill")
    metrics = ctx.manifests["distill"]["metrics"]
    assert len(metrics["exit_top1"]) == 3  # two stage exits + the main head
    assert metrics["exit_top1"][-1] == pytest.approx(metrics["student_top1"], abs=0.01)
    model = load_model(tmp_path / "run" / "distill", "student")
    assert not any("heads" in name for name, _ in model.named_modules())
    k = len(tiny_recipe_dict["data"]["labels"])
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, k)
