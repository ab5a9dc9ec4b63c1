"""Pruning, ONNX export (and its safety check), INT8 quantization and the runtime runners."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgedistill.compress.prune import prune_channels
from edgedistill.compress.quantize import quantize_onnx_static
from edgedistill.errors import StageError, UnsafeFileError
from edgedistill.export.onnx import check_onnx_file, export_onnx
from edgedistill.export.openvino import export_openvino
from edgedistill.metrics import agreement, count_macs, count_params
from edgedistill.runtime import (
    OnnxRuntimeRunner,
    OpenVinoRunner,
    TorchRunner,
    compare_outputs,
    run_batched,
)
from edgedistill.students.vision import ConvNet

SHAPE = (1, 12, 12)


def orientation_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: a horizontal bar, 1: a vertical bar, 2: no bar; on noise."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, n)
    x = rng.normal(0.0, 0.3, (n, *SHAPE)).astype(np.float32)
    for i, kind in enumerate(kinds):
        pos = rng.integers(1, SHAPE[1] - 1)
        if kind == 0:
            x[i, 0, pos, :] += 2.0
        elif kind == 1:
            x[i, 0, :, pos] += 2.0
    return x, kinds


@pytest.fixture(scope="module")
def trained() -> ConvNet:
    """A ConvNet briefly trained on the orientation task (non-trivial BN statistics)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(16, 32))
    x, y = orientation_data(256, seed=0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(3):
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(xt[i : i + 32]), yt[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # make the BN affine parameters clearly non-trivial as well
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.mul_(torch.linspace(0.5, 1.5, module.num_features))
                module.bias.add_(torch.linspace(-0.2, 0.2, module.num_features))
    torch.set_num_threads(old)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_files(trained: ConvNet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = {
        "fp32": export_onnx(trained, SHAPE, folder / "fp32.onnx"),
        "deploy": export_onnx(trained.to_deploy(), SHAPE, folder / "deploy.onnx"),
    }
    torch.set_num_threads(old)
    return paths


def eval_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


# ---- pruning -------------------------------------------------------------------------------


def test_prune_meets_target_with_rounded_channels() -> None:
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(24, 48, 64))
    original = copy.deepcopy(model.state_dict())
    result = prune_channels(model, SHAPE, target_macs_ratio=0.6, round_to=8)
    pruned = result.model
    assert result.macs_before == count_macs(model, SHAPE)
    assert result.macs_after == count_macs(pruned, SHAPE)
    assert result.macs_ratio == pytest.approx(result.macs_after / result.macs_before)
    assert result.macs_ratio <= 0.6
    assert result.steps >= 1
    widths = pruned.current_config()["widths"]
    assert all(w % 8 == 0 and w > 0 for w in widths)
    assert widths != [24, 48, 64]
    for stage in pruned.stages:
        conv, bn = stage.layers[0][0], stage.layers[0][1]
        assert conv.out_channels % 8 == 0 and bn.num_features == conv.out_channels
    assert pruned.classifier.out_features == 3
    assert pruned.classifier.in_features == widths[-1]
    assert result.params_after == count_params(pruned) < result.params_before == count_params(model)
    # the input model is untouched
    assert model.current_config()["widths"] == [24, 48, 64]
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key
    # the pruned model still runs and gives [B, K]
    out = pruned.eval()(torch.randn(5, *SHAPE))
    assert out.shape == (5, 3) and torch.isfinite(out).all()


def test_prune_rounds_odd_widths_down_first() -> None:
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(20, 44))
    result = prune_channels(model, SHAPE, target_macs_ratio=0.95, round_to=8)
    assert result.model.current_config()["widths"] == [16, 40]
    assert result.steps == 0  # rounding alone met the target
    assert result.macs_ratio <= 0.95


def test_looser_target_never_prunes_more() -> None:
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(24, 48, 64))
    results = [prune_channels(model, SHAPE, target_macs_ratio=t) for t in (0.9, 0.75, 0.6, 0.45)]
    for looser, tighter in itertools.pairwise(results):
        assert looser.steps <= tighter.steps
        assert looser.macs_after >= tighter.macs_after
    for result, target in zip(results, (0.9, 0.75, 0.6, 0.45), strict=True):
        assert result.macs_ratio <= target


def test_prune_keeps_ignored_layers() -> None:
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(24, 48, 64))
    first_conv = model.stages[0].layers[0][0]
    result = prune_channels(model, SHAPE, target_macs_ratio=0.7, ignored_layers=[first_conv])
    widths = result.model.current_config()["widths"]
    assert widths[0] == 24
    assert result.macs_ratio <= 0.7


def test_prune_removes_dead_channels_first_and_keeps_the_function() -> None:
    # Channels 1, 3, 5, ... of the first conv contribute nothing (zero filter, zero BN affine,
    # zero weights in the next conv): their group importance is 0, so they go first, and
    # removing them leaves the network's function unchanged.
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=(16, 16)).eval()
    keep = torch.arange(0, 16, 2)
    dead = torch.arange(1, 16, 2)
    with torch.no_grad():
        conv1, bn1 = model.stages[0].layers[0][0], model.stages[0].layers[0][1]
        conv1.weight[dead] = 0
        bn1.weight[dead] = 0
        bn1.bias[dead] = 0
        model.stages[1].layers[0][0].weight[:, dead] = 0
    # (8, 16) has ~0.51x the MACs of (16, 16) on 12x12 inputs: one step reaches 0.75
    result = prune_channels(model, SHAPE, target_macs_ratio=0.75, round_to=8)
    assert result.steps == 1
    assert result.model.current_config()["widths"] == [8, 16]
    torch.testing.assert_close(result.model.stages[0].layers[0][0].weight, conv1.weight[keep])
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), model(x), rtol=1e-5, atol=1e-6)


def test_prune_residual_network_prunes_coupled_layers_together() -> None:
    torch.manual_seed(0)
    model = ConvNet(
        in_channels=1, num_classes=3, widths=(16, 32), blocks_per_stage=2, residual=True
    )
    result = prune_channels(model, SHAPE, target_macs_ratio=0.7)
    pruned = result.model
    assert result.macs_ratio <= 0.7
    for stage in pruned.stages:
        widths = {layer[0].out_channels for layer in stage.layers}
        assert len(widths) == 1  # the identity shortcut forces one width per stage
    assert pruned.eval()(torch.randn(2, *SHAPE)).shape == (2, 3)


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.1])
def test_prune_rejects_target_outside_open_interval(target: float) -> None:
    with pytest.raises(ValueError, match="target_macs_ratio"):
        prune_channels(ConvNet(widths=(8, 16)), SHAPE, target_macs_ratio=target)


def test_prune_rejects_bad_importance_and_round_to() -> None:
    with pytest.raises(ValueError, match="importance"):
        prune_channels(ConvNet(widths=(8, 16)), SHAPE, target_macs_ratio=0.5, importance="l3")
    with pytest.raises(ValueError, match="round_to"):
        prune_channels(ConvNet(widths=(8, 16)), SHAPE, target_macs_ratio=0.5, round_to=0)


def test_prune_unreachable_target_raises_stage_error() -> None:
    # round_to=16 keeps at least 16 channels per layer: 0.05x the MACs is out of reach
    model = ConvNet(in_channels=1, num_classes=3, widths=(16, 32))
    with pytest.raises(StageError, match=r"cannot reach 0\.05x"):
        prune_channels(model, SHAPE, target_macs_ratio=0.05, round_to=16)


# ---- ONNX export ---------------------------------------------------------------------------


def test_export_matches_torch_for_dynamic_batches(
    trained: ConvNet, onnx_files: dict[str, Path]
) -> None:
    model = onnx.load(str(onnx_files["fp32"]))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == list(SHAPE)
    rng = np.random.default_rng(0)
    with OnnxRuntimeRunner(onnx_files["fp32"], "fp32") as runner:
        assert runner.input_shape == (None, *SHAPE)
        for batch in (1, 5):
            x = rng.normal(size=(batch, *SHAPE)).astype(np.float32)
            out = runner.infer(x)
            assert out.shape == (batch, 3) and out.dtype == np.float32
            np.testing.assert_allclose(out, eval_logits(trained, x), atol=1e-5, rtol=0)


def test_to_deploy_folds_batch_norm(trained: ConvNet, onnx_files: dict[str, Path]) -> None:
    deploy = trained.to_deploy()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.modules())  # original kept
    assert not deploy.training
    x = np.random.default_rng(1).normal(size=(6, *SHAPE)).astype(np.float32)
    reference = eval_logits(trained, x)
    np.testing.assert_allclose(eval_logits(deploy, x), reference, atol=1e-5, rtol=0)
    graph = onnx.load(str(onnx_files["deploy"])).graph
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
    with OnnxRuntimeRunner(onnx_files["deploy"], "deploy") as runner:
        for batch in (1, 5):
            np.testing.assert_allclose(
                runner.infer(x[:batch]), reference[:batch], atol=1e-5, rtol=0
            )


def test_to_deploy_differs_from_train_mode_output(trained: ConvNet) -> None:
    # guard against a vacuous fold: the BN statistics must matter for this model
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(8, *SHAPE)).astype(np.float32))
    model = copy.deepcopy(trained)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x), trained.eval()(x), atol=1e-3)


def test_static_batch_export(trained: ConvNet, tmp_path: Path) -> None:
    path = export_onnx(trained.to_deploy(), SHAPE, tmp_path / "static.onnx", dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, *SHAPE]
    x = np.random.default_rng(3).normal(size=(5, *SHAPE)).astype(np.float32)
    with OnnxRuntimeRunner(path, "static") as runner:
        np.testing.assert_allclose(
            runner.infer(x[:1]), eval_logits(trained, x[:1]), atol=1e-5, rtol=0
        )
        with pytest.raises(StageError, match="shape"):
            runner.infer(x)
    assert not list(tmp_path.glob(".static.*"))  # the temporary file was moved into place


def _model_with_initializer(tmp: Path, name: str, location: str | None) -> Path:
    weight = numpy_helper.from_array(np.ones((2, 2), dtype=np.float32), "W")
    if location is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "16")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path = tmp / name
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../evil.bin", "sub/../../evil.bin", "/etc/passwd"])
def test_check_onnx_file_refuses_escaping_external_data(tmp_path: Path, location: str) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "evil.bin").write_bytes(np.ones(4, dtype=np.float32).tobytes())
    path = _model_with_initializer(folder, "evil.onnx", location)
    with pytest.raises(UnsafeFileError, match="outside the model folder"):
        check_onnx_file(path)
    # the runners check before any runtime touches the file
    with pytest.raises(UnsafeFileError):
        OnnxRuntimeRunner(path, "evil").load()
    with pytest.raises(UnsafeFileError):
        OpenVinoRunner(path, "evil").load()


def test_check_onnx_file_refuses_symlink_leaving_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.ones(4, dtype=np.float32).tobytes())
    (folder / "w.bin").symlink_to(outside)
    with pytest.raises(UnsafeFileError):
        check_onnx_file(_model_with_initializer(folder, "m.onnx", "w.bin"))


def test_check_onnx_file_accepts_normal_and_local_external_data(
    tmp_path: Path, onnx_files: dict[str, Path]
) -> None:
    check_onnx_file(onnx_files["fp32"])
    check_onnx_file(_model_with_initializer(tmp_path, "inline.onnx", None))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w.bin").write_bytes(np.full(4, 2.0, dtype=np.float32).tobytes())
    local = _model_with_initializer(tmp_path, "local.onnx", "data/w.bin")
    check_onnx_file(local)
    # and such a file really runs, reading the weights beside it
    with OnnxRuntimeRunner(local, "local") as runner:
        np.testing.assert_allclose(runner.infer(np.ones((1, 2), dtype=np.float32)), [[4.0, 4.0]])


def test_check_onnx_file_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(StageError, match="not a readable ONNX model"):
        check_onnx_file(path)


def test_check_onnx_file_refuses_escaping_external_data_in_subgraph(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    weight = numpy_helper.from_array(np.ones((1, 2), dtype=np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../evil.bin"), ("offset", "0"), ("length", "8")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    branch = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])],
        initializer=[weight],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out2"])],
        "other",
        [],
        [helper.make_tensor_value_info("out2", TensorProto.FLOAT, [1, 2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
        "g",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    path = folder / "sub.onnx"
    path.write_bytes(helper.make_model(graph, ir_version=10).SerializeToString())
    with pytest.raises(UnsafeFileError):
        check_onnx_file(path)


# ---- INT8 quantization ---------------------------------------------------------------------


def test_export_carries_no_machine_paths(tmp_path: Path) -> None:
    """The exporter's stack traces name absolute source paths; the same model exported from
    two checkouts must be the same bytes, so they are stripped."""
    torch.manual_seed(0)
    model = ConvNet(in_channels=1, num_classes=3, widths=[4, 8])
    path = export_onnx(model, SHAPE, tmp_path / "m.onnx")
    package = str(Path(__file__).resolve().parents[1])
    assert package.encode() not in path.read_bytes()
    keys = {p.key for n in onnx.load(str(path)).graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys


def test_quantize_static_int8(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    calibration, _ = orientation_data(64, seed=10)
    int8 = tmp_path / "int8.onnx"
    quantize_onnx_static(onnx_files["deploy"], int8, calibration)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.stat().st_size < onnx_files["deploy"].stat().st_size
    assert not list(tmp_path.glob(".int8.*"))
    x, labels = orientation_data(200, seed=11)
    with OnnxRuntimeRunner(onnx_files["deploy"], "fp32") as fp32_runner:
        fp32 = run_batched(fp32_runner, x, batch_size=64)
    with OnnxRuntimeRunner(int8, "int8") as int8_runner:
        quant = run_batched(int8_runner, x, batch_size=64)
    assert (fp32.argmax(1) == labels).mean() > 0.9  # the FP32 model learned the task
    assert agreement(fp32, quant) >= 90.0
    # INT8 is an approximation, not a copy
    assert 0 < np.abs(fp32 - quant).max() < 0.5 * np.abs(fp32).max()


def test_quantize_reduce_range_keeps_weights_to_7_bits(
    onnx_files: dict[str, Path], tmp_path: Path
) -> None:
    calibration, _ = orientation_data(64, seed=10)
    ranges = {}
    for reduce in (False, True):
        path = tmp_path / f"int8-{reduce}.onnx"
        quantize_onnx_static(onnx_files["deploy"], path, calibration, reduce_range=reduce)
        weights = [
            numpy_helper.to_array(t)
            for t in onnx.load(str(path)).graph.initializer
            if t.data_type == TensorProto.INT8 and t.dims and len(t.dims) > 1
        ]
        ranges[reduce] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert ranges[False] == 127  # symmetric per-channel: the largest weight maps to 127
    assert ranges[True] <= 64  # 7-bit weights: pairwise u8 x s8 sums cannot saturate int16


def test_quantize_rejects_empty_calibration(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx_static(
            onnx_files["deploy"], tmp_path / "x.onnx", np.zeros((0, *SHAPE), dtype=np.float32)
        )
    assert not (tmp_path / "x.onnx").exists()


# ---- runtimes ------------------------------------------------------------------------------


def test_onnxruntime_runner_checks_dtype_and_shape(onnx_files: dict[str, Path]) -> None:
    runner = OnnxRuntimeRunner(onnx_files["fp32"], "student", threads=1)
    with pytest.raises(StageError, match="float64"):
        runner.infer(np.zeros((1, *SHAPE), dtype=np.float64))
    with pytest.raises(
        StageError, match=r"input shape \[1, 1, 10, 12\], expected \['N', 1, 12, 12\]"
    ):
        runner.infer(np.zeros((1, 1, 10, 12), dtype=np.float32))
    with pytest.raises(StageError, match="shape"):
        runner.infer(np.zeros(SHAPE, dtype=np.float32))  # missing batch axis
    with pytest.raises(StageError, match=r"^student \(onnxruntime\)"):
        runner.infer(np.zeros(3))
    runner.close()
    assert runner.session is None


def test_torch_and_onnxruntime_runners_agree(trained: ConvNet, onnx_files: dict[str, Path]) -> None:
    x, _ = orientation_data(40, seed=12)
    with TorchRunner(trained, "student", input_shape=SHAPE) as ref:
        expected = run_batched(ref, x, batch_size=16)
        with pytest.raises(StageError):
            ref.infer(np.zeros((1, 1, 8, 8), dtype=np.float32))
    with OnnxRuntimeRunner(onnx_files["fp32"], "student") as runner:
        got = run_batched(runner, x, batch_size=16)
    cmp = compare_outputs(expected, got)
    assert cmp.samples == 40
    assert cmp.max_abs_diff < 1e-5
    assert cmp.top1_agreement == 100.0


def test_openvino_runner_f32_matches_torch(
    trained: ConvNet, onnx_files: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("openvino")
    x, _ = orientation_data(10, seed=13)
    expected = eval_logits(trained, x)
    with OpenVinoRunner(onnx_files["fp32"], "student", precision="f32") as runner:
        np.testing.assert_allclose(runner.infer(x), expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(runner.infer(x[:1]), expected[:1], atol=1e-4, rtol=0)
    xml = export_openvino(onnx_files["fp32"], tmp_path / "student.xml")
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    with OpenVinoRunner(xml, "student-ir", precision="f32") as runner:
        np.testing.assert_allclose(runner.infer(x), expected, atol=1e-4, rtol=0)
        with pytest.raises(StageError):
            runner.infer(x.astype(np.float64))


def test_compare_outputs_hand_case() -> None:
    reference = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, 0.2], [0.0, 0.0, 1.0]], dtype=np.float32)
    candidate = np.array([[1.0, 2.1, 3.0], [0.5, 0.9, 0.2], [0.0, 0.0, 1.05]], dtype=np.float32)
    cmp = compare_outputs(reference, candidate)
    assert cmp.max_abs_diff == pytest.approx(0.8, abs=1e-6)
    assert cmp.worst_index == (1, 1)
    assert cmp.reference_value == pytest.approx(0.1)
    assert cmp.candidate_value == pytest.approx(0.9)
    # argmax: reference 2, 0, 2; candidate 2, 1, 2
    assert cmp.top1_agreement == pytest.approx(200 / 3)
    assert cmp.samples == 3


def test_run_batched_concatenates_in_order(trained: ConvNet) -> None:
    x = np.random.default_rng(4).normal(size=(7, *SHAPE)).astype(np.float32)
    runner = TorchRunner(trained, "student")
    np.testing.assert_allclose(
        run_batched(runner, x, batch_size=3), eval_logits(trained, x), atol=1e-5, rtol=0
    )
