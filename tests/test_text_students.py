"""The byte tokenizer and the text student families (TextCNN, TextGRU)."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgedistill.compress.prune import prune_channels
from edgedistill.students import STUDENTS, Student, build_model
from edgedistill.students.text import TINY_CONFIGS, ByteTokenizer, TextCNN, TextGRU

L, K = 24, 5
ARCHS = ["text_cnn", "text_gru"]


# ---- the tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Hello, world!", "café ☕", ""])
def test_tokenizer_round_trip(text: str) -> None:
    tok = ByteTokenizer(max_len=32)
    ids = tok.encode(text)
    assert len(ids) == 32 and all(0 <= i < 257 for i in ids)
    assert ids[: len(text.encode())] == [b + 1 for b in text.encode("utf-8")]
    assert tok.decode(ids) == text


def test_tokenizer_non_ascii_bytes_and_lowercase() -> None:
    tok = ByteTokenizer(max_len=16, lowercase=True)
    # "é" is C3 A9 and "☕" E2 98 95 in UTF-8; only ASCII letters are lowercased.
    assert tok.encode("CAFÉ ☕", pad=False) == [
        ord("c") + 1,
        ord("a") + 1,
        ord("f") + 1,
        0xC3 + 1,
        0x89 + 1,  # "É" stays upper case: C3 89
        ord(" ") + 1,
        0xE2 + 1,
        0x98 + 1,
        0x95 + 1,
    ]
    assert tok.decode(tok.encode("Café ☕")) == "café ☕"


def test_tokenizer_padding_and_truncation() -> None:
    tok = ByteTokenizer(max_len=4)
    assert tok.encode("ab") == [98, 99, 0, 0]
    assert tok.encode("abcdef") == [98, 99, 100, 101]
    assert tok.encode("abcdef", pad=False) == [98, 99, 100, 101]
    batch = tok.encode_batch(["a", "abcdef", ""])
    assert batch.dtype == np.int64 and batch.shape == (3, 4)
    np.testing.assert_array_equal(batch, [[98, 0, 0, 0], [98, 99, 100, 101], [0, 0, 0, 0]])
    assert tok.encode_batch([]).shape == (0, 4)
    assert ByteTokenizer(max_len=2).decode(ByteTokenizer(max_len=2).encode("é☕")) == "é"
    with pytest.raises(ValueError):
        ByteTokenizer(max_len=0)


def test_tokenizer_spec() -> None:
    spec = ByteTokenizer(max_len=64, lowercase=True).spec()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["vocab_size"] == 257 and spec["pad_id"] == 0
    assert spec["lowercase"] is True and spec["max_len"] == 64
    assert "UTF-8" in spec["rule"] and "+ 1" in spec["rule"]


# ---- the students ----------------------------------------------------------------------------


def make_student(arch: str, seed: int = 0) -> nn.Module:
    """A tiny student with non-trivial batch-norm statistics and affine parameters."""
    torch.manual_seed(seed)
    model = build_model(arch, {**TINY_CONFIGS[arch], "num_classes": K})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(ids(4, seed + 10))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.mul_(torch.linspace(0.5, 1.5, module.num_features))
                module.bias.add_(torch.linspace(-0.2, 0.2, module.num_features))
    return model.eval()


def ids(n: int, seed: int, length: int = L) -> torch.Tensor:
    """Random byte ids [n, length], right-padded to random lengths (row 0 unpadded)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 257, size=(n, length))
    for row, keep in enumerate(rng.integers(1, length + 1, size=n)):
        x[row, (length if row == 0 else keep) :] = 0
    return torch.from_numpy(x.astype(np.int64))


def logits_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_registry_and_contract() -> None:
    assert {"text_cnn", "text_gru"} <= set(STUDENTS.names())
    for arch in ARCHS:
        assert isinstance(make_student(arch), Student)
    with pytest.raises(ValueError):
        TextCNN(widths=(12,))
    with pytest.raises(ValueError):
        TextCNN(kernel_size=4)
    with pytest.raises(ValueError):
        TextCNN(pool="sum")


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_intermediates(arch: str) -> None:
    model = make_student(arch)
    x = ids(3, 1)
    logits, feats = model.forward_intermediates(x)  # type: ignore[operator]
    assert logits.shape == (3, K)
    torch.testing.assert_close(logits, model(x))
    config = model.current_config()  # type: ignore[operator]
    if arch == "text_cnn":
        expected = [(3, w, L) for w in cast("list[int]", config["widths"])]
    else:
        expected = [(3, 2 * cast("int", config["hidden_size"]), L)]
    assert [tuple(f.shape) for f in feats] == expected
    pads = (x == 0).unsqueeze(1).expand_as(feats[-1])
    assert pads.any() and (feats[-1][pads] == 0).all()
    model.reset_classifier(9)  # type: ignore[operator]
    assert model(x).shape == (3, 9) and model.current_config()["num_classes"] == 9  # type: ignore[operator]


@pytest.mark.parametrize("arch", [*ARCHS, "text_cnn_mean"])
def test_padding_invariance(arch: str) -> None:
    if arch == "text_cnn_mean":
        torch.manual_seed(0)
        model: nn.Module = TextCNN(num_classes=K, pool="mean", **TINY_CONFIGS["text_cnn"]).eval()  # type: ignore[arg-type]
    else:
        model = make_student(arch)
    x = ids(4, 2)
    longer = torch.cat([x, torch.zeros(4, 9, dtype=torch.int64)], dim=1)
    np.testing.assert_allclose(logits_of(model, longer), logits_of(model, x), atol=1e-5, rtol=0)
    # a padded row scores the same alone as in a batch, and as its unpadded prefix
    n = int((x[1] != 0).sum())
    np.testing.assert_allclose(
        logits_of(model, x[1:2, :n]), logits_of(model, x)[1:2], atol=1e-5, rtol=0
    )


def test_gru_matches_torch_gru_without_padding() -> None:
    model = cast("TextGRU", make_student("text_gru"))
    x = ids(3, 3)
    x[x == 0] = 7
    with torch.no_grad():
        ref, _ = model.gru(model.embedding(x))
        ours = model.forward_intermediates(x)[1][0].transpose(1, 2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_to_deploy_parity_and_config_round_trip(arch: str) -> None:
    model = make_student(arch)
    deploy = model.to_deploy()  # type: ignore[operator]
    assert not deploy.training and deploy is not model
    assert not any(isinstance(m, nn.BatchNorm1d) for m in deploy.modules())
    x = ids(4, 4)
    np.testing.assert_allclose(logits_of(deploy, x), logits_of(model, x), atol=1e-5, rtol=0)
    rebuilt = build_model(arch, copy.deepcopy(model.current_config()))  # type: ignore[operator]
    rebuilt.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(model, x))


class _Named(nn.Module):
    """Names the exported input argument ``x`` (as export/onnx.py's ``_Named``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def export_int_onnx(model: nn.Module, length: int, path: Path) -> Path:
    """Export with an int64 example [2, length]; batch dynamic, input ``input``."""
    example = torch.ones(2, length, dtype=torch.int64)
    program = torch.onnx.export(
        _Named(model).eval(),
        (example,),
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        external_data=False,
        verbose=False,
    )
    assert program is not None
    program.save(str(path))
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_parity(arch: str, tmp_path: Path) -> None:
    model = make_student(arch)
    path = export_int_onnx(model.to_deploy(), L, tmp_path / f"{arch}.onnx")  # type: ignore[operator]
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == L
    x = ids(3, 5)
    reference = logits_of(model, x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        (out,) = session.run(["logits"], {"input": x[:batch].numpy()})
        np.testing.assert_allclose(out, reference[:batch], atol=1e-4, rtol=0)


def test_prune_rebuild_and_export_text_cnn(tmp_path: Path) -> None:
    model = make_student("text_cnn")
    if "input_dtype" not in inspect.signature(prune_channels).parameters:
        # prune_channels / count_macs build a float example; nn.Embedding rejects it.
        with pytest.raises(RuntimeError, match="indices"):
            prune_channels(model, (L,), target_macs_ratio=0.7)
        pytest.xfail("prune_channels has no input_dtype for int64 token ids")
    result = prune_channels(model, (L,), target_macs_ratio=0.7, input_dtype=torch.int64)
    pruned = cast("TextCNN", result.model)
    assert result.macs_ratio <= 0.7
    config = pruned.current_config()
    assert config != model.current_config()  # type: ignore[operator]
    assert all(w % 8 == 0 and w > 0 for w in cast("list[int]", config["widths"]))
    rebuilt = build_model("text_cnn", config)
    rebuilt.load_state_dict(pruned.state_dict())
    x = ids(3, 6)
    np.testing.assert_array_equal(logits_of(rebuilt, x), logits_of(pruned, x))
    path = export_int_onnx(pruned.to_deploy(), L, tmp_path / "pruned.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"input": x.numpy()})
    np.testing.assert_allclose(out, logits_of(pruned, x), atol=1e-4, rtol=0)
