"""Give a frozen teacher without a head for the user's classes one: a linear probe or LP-FT.

A pretrained backbone (e.g. ImageNet MobileNetV2) knows nothing of the user's K classes.
:func:`adapt_teacher` fits a linear head on its frozen features (linear probe, the standard
linear-evaluation protocol: Chen et al., "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, arXiv:2002.05709) and, for ``method="finetune"``, then
trains the head together with the last few blocks at a small learning rate (LP-FT: Kumar et
al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR
2022, arXiv:2202.10054: probing first keeps fine-tuning from distorting the features).

The result is an :class:`AdaptedTeacher`, frozen like every teacher, whose ``weights_sha256``
hashes the base teacher's hash together with the trained weights, so downstream caches key
on the adapted model. The expensive parts are cached in ``cache_dir``: the training set's
frozen features (memory-mapped ``.npy`` via :func:`cached_teacher_logits`) and the trained
weights (safetensors keyed by every hyperparameter), so a second call trains nothing.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from edgedistill.artifacts import atomic_save, sha256_json
from edgedistill.errors import DataError, RecipeError
from edgedistill.metrics import topk_accuracy
from edgedistill.progress import Advance
from edgedistill.teachers.base import FrozenTeacher
from edgedistill.teachers.cache import cached_teacher_logits, teacher_cache_key

Transform = Callable[[np.ndarray], torch.Tensor]  # raw rows -> input batch
Loss = Callable[[np.ndarray], torch.Tensor]  # row indices -> that batch's loss


def module_sha256(module: nn.Module) -> str:
    """Hex sha256 of a module's state dict (names, dtypes, shapes and bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class _HeadOnFeatures(nn.Module):
    """``head(features_fn(x))``; the base teacher is registered so it moves and freezes along
    (as is ``features_fn`` when it is a module)."""

    def __init__(
        self, features_fn: Callable[[torch.Tensor], torch.Tensor], head: nn.Linear, base: nn.Module
    ) -> None:
        super().__init__()
        self.base, self.features_fn, self.head = base, features_fn, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features_fn(x))
        return out

    @property
    def exportable(self) -> bool:
        """False when the base network cannot become one ONNX graph."""
        return bool(getattr(self._network, "exportable", True))

    @property
    def _network(self) -> nn.Module:
        """The base network (unwrapped from its :class:`FrozenTeacher`)."""
        return self.base.model if isinstance(self.base, FrozenTeacher) else self.base

    @property
    def parameter_count(self) -> int | None:
        """The base's own count (ONNX-backed bases have no torch parameters) plus the head's;
        None when the base is a plain torch module (then every parameter is counted)."""
        own = getattr(self._network, "parameter_count", None)
        return None if own is None else int(own) + sum(p.numel() for p in self.head.parameters())

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """The base's MACs (its own count when it has one) plus the head's."""
        from edgedistill.metrics import count_macs

        network = self._network
        return count_macs(network, input_shape, dtype=self.input_dtype) + self.head.weight.numel()

    @property
    def input_dtype(self) -> torch.dtype:
        return getattr(self._network, "input_dtype", torch.float32)


class AdaptedTeacher(FrozenTeacher):
    """A frozen teacher: the base teacher's features followed by a trained linear head.

    Shapes:
        forward: teacher input [B, ...] -> logits [B, num_classes].

    Attributes:
        weights_sha256: sha256 of the base hash and the trained tensors (cache key part).
        base_sha256: The base teacher's hash.
        head_top1: Top-1 accuracy (percent) on the held-out split, None without one.
        method: "linear_probe" or "finetune".
    """

    base_sha256: str = ""
    method: str = "linear_probe"
    head_top1: float | None = None

    @property
    def head(self) -> nn.Linear:
        """The trained classifier [D -> num_classes] on the teacher's raw features."""
        head: nn.Linear = self.model.head  # type: ignore[assignment]
        return head


def adapt_teacher(
    teacher: FrozenTeacher | nn.Module,
    *,
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    x_train: np.ndarray,
    y_train: np.ndarray,
    num_classes: int,
    cache_dir: Path,
    data_key: str | None = None,
    method: Literal["linear_probe", "finetune"] = "linear_probe",
    transform: Transform | None = None,
    transform_key: dict[str, Any] | None = None,
    features_name: str = "features",
    epochs: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    blocks: Sequence[str] = (),
    unfreeze_blocks: int = 1,
    finetune_epochs: int = 3,
    finetune_lr: float = 1e-4,
    progress: Advance | None = None,
) -> AdaptedTeacher:
    """Train a head for ``num_classes`` on a frozen teacher's features; return it frozen.

    Args:
        teacher: The base teacher; its ``weights_sha256`` (else a hash of its state dict)
            keys the caches. It is frozen (eval, no gradients) and otherwise never modified.
        features_fn: Teacher input batch -> features [B, D] (e.g. pooled penultimate).
            For ``finetune`` it must be an ``nn.Module``: a copy of it is trained.
        x_train: [N, ...] raw training inputs; ``transform`` maps a slice to a batch.
        y_train: [N] integer labels in [0, num_classes).
        num_classes: Outputs K of the head.
        cache_dir: Folder for the feature cache and the trained weights.
        data_key: Identifies ``x_train`` in cache keys; None hashes its bytes.
        method: "linear_probe" (head only) or "finetune" (probe, then head + blocks).
        transform: Raw slice -> input tensor; None: ``torch.from_numpy`` as float32.
        transform_key: JSON description of ``transform`` (required with one).
        features_name: Names ``features_fn`` in cache keys (another layer, another name).
        epochs, lr, weight_decay: AdamW on standardised features for the probe (from zero
            weights, so the seed only orders the batches).
        batch_size: Rows per step (probe, fine-tuning and feature extraction).
        seed: Seeds the batch order; training is deterministic on CPU.
        x_val, y_val: Optional held-out split for ``head_top1``.
        blocks: Names of ``features_fn`` submodules in forward order (``finetune``);
            the last ``unfreeze_blocks`` of them are trained, in eval mode (batch-norm
            statistics and dropout stay fixed).
        finetune_epochs, finetune_lr: The fine-tuning phase (AdamW, same weight decay).
        progress: Advanced per feature batch and per epoch (``(n, description)``).

    Returns:
        The frozen :class:`AdaptedTeacher`: teacher input [B, ...] -> logits [B, K].

    Raises:
        RecipeError: a bad method, hyperparameter, block name or transform without a key.
        DataError: labels that do not match the inputs or the classes, or features not 2-D.
    """
    if method not in ("linear_probe", "finetune"):
        raise RecipeError(f"unknown adaptation method '{method}'; use linear_probe or finetune")
    if epochs < 1 or lr <= 0 or batch_size < 1 or num_classes < 2:
        raise RecipeError("adapt_teacher: need epochs >= 1, lr > 0, batch_size >= 1, classes >= 2")
    if transform is not None and transform_key is None:
        raise RecipeError("adapt_teacher: give transform_key (describes transform in cache keys)")
    labels = _labels(y_train, len(x_train), num_classes, "y_train")
    base_sha = getattr(teacher, "weights_sha256", None) or module_sha256(teacher)
    tkey = {"transform": "float32"} if transform_key is None else transform_key

    def key_of(data_sha: str) -> str:  # (teacher, data, transform, features_fn) -> cache key
        return teacher_cache_key(
            teacher_sha256=base_sha, data_sha256=data_sha, transform=tkey, taps=[features_name]
        )

    extract = _checked(features_fn, _device(teacher))
    transform = transform or _as_tensor
    run = _Run(extract, transform, Path(cache_dir), batch_size, seed, weight_decay, progress)
    run.cache_dir.mkdir(parents=True, exist_ok=True)
    features_key = key_of(data_key or _sha(np.ascontiguousarray(x_train)))
    hyper = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    probe = {"features": features_key, "labels": _sha(labels), "classes": num_classes, **hyper}
    probe_path = run.cache_dir / f"teacher-head-{sha256_json(probe)[:32]}.safetensors"
    if not probe_path.is_file():
        features = run.features(x_train, features_key, "train features")
        head = _train_linear_head(run, features, labels, num_classes, epochs, lr)
        run.save(probe_path, {f"head.{k}": v for k, v in head.state_dict().items()})
    trained = load_file(str(probe_path))
    head = nn.Linear(trained["head.weight"].shape[1], num_classes).to(_device(teacher))
    if method == "finetune":
        if not isinstance(features_fn, nn.Module):
            raise RecipeError("finetune needs features_fn to be an nn.Module (a copy is trained)")
        features_fn = copy.deepcopy(features_fn)
        trainable = _blocks(features_fn, blocks, unfreeze_blocks)
        names = [name for name, _ in trainable]
        tune = {"probe": probe, "blocks": names, "epochs": finetune_epochs, "lr": finetune_lr}
        tune_path = run.cache_dir / f"teacher-finetune-{sha256_json(tune)[:32]}.safetensors"
        if not tune_path.is_file():
            _load(head, trained, "head.")
            _finetune(
                run, features_fn, head, trainable, x_train, labels, finetune_epochs, finetune_lr
            )
            state = {f"head.{k}": v for k, v in head.state_dict().items()}
            for name, block in trainable:
                state.update({f"blocks.{name}.{k}": v for k, v in block.state_dict().items()})
            run.save(tune_path, state)
        trained = load_file(str(tune_path))
        for name, block in trainable:
            _load(block, trained, f"blocks.{name}.")
    _load(head, trained, "head.")
    digest = hashlib.sha256(base_sha.encode())
    for key in sorted(trained):
        digest.update(key.encode() + trained[key].contiguous().numpy().tobytes())
    name = f"{getattr(teacher, 'name', type(teacher).__name__)}+{method}"
    adapted = AdaptedTeacher(_HeadOnFeatures(features_fn, head, teacher), name, digest.hexdigest())
    adapted.base_sha256, adapted.method = base_sha, method
    if x_val is not None and y_val is not None:
        val_labels = _labels(y_val, len(x_val), num_classes, "y_val")
        if method == "linear_probe":  # the split's frozen features are cached too
            val = run.features(x_val, key_of(_sha(np.ascontiguousarray(x_val))), "val features")
            with torch.inference_mode():
                weight, bias = head.weight.cpu(), head.bias.cpu()
                logits = F.linear(torch.from_numpy(np.array(val)), weight, bias).numpy()
        else:
            logits = run.predict(adapted, x_val)
        adapted.head_top1 = topk_accuracy(logits, val_labels)
    return adapted


@dataclass(frozen=True)
class _Run:
    """What every step of one adaptation shares."""

    extract: Callable[[torch.Tensor], torch.Tensor]
    transform: Transform
    cache_dir: Path
    batch_size: int
    seed: int
    weight_decay: float
    progress: Advance | None

    def features(self, x: np.ndarray, key: str, what: str) -> np.ndarray:
        """Frozen features [N, D] of ``x``, memory-mapped from the cache (computed once)."""
        progress = self.progress
        on_batch = None if progress is None else (lambda n: progress(n, what))
        features, _ = cached_teacher_logits(
            self.extract,
            x,
            self.transform,
            key=key,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            on_batch=on_batch,
            prefix="teacher-features",
        )
        return features

    def fit(
        self, params: Sequence[torch.Tensor], n: int, epochs: int, lr: float, loss: Loss, what: str
    ) -> None:
        """AdamW on ``params`` over ``epochs`` seeded shuffles of ``n`` rows in batches (each
        sorted: fast memory-mapped reads); ``loss(rows)`` is one batch's loss."""
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.enable_grad():
            for epoch in range(epochs):
                order = torch.randperm(n, generator=generator).numpy()
                for start in range(0, n, self.batch_size):
                    value = loss(np.sort(order[start : start + self.batch_size]))
                    optimizer.zero_grad(set_to_none=True)
                    value.backward()
                    optimizer.step()
                if self.progress is not None:
                    self.progress(1, f"{what} epoch {epoch + 1}/{epochs}")

    def save(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        atomic_save(path, lambda tmp: save_file(state, str(tmp)))

    def predict(self, model: nn.Module, x: np.ndarray) -> np.ndarray:
        """Logits [N, K] of ``model`` over ``x`` in batches."""
        device, step = _device(model), self.batch_size
        with torch.inference_mode():
            return np.concatenate(
                [
                    model(self.transform(x[i : i + step]).to(device)).float().cpu().numpy()
                    for i in range(0, len(x), step)
                ]
            )


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


def _load(module: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def _as_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(batch, dtype=np.float32))


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def _labels(y: Any, n: int, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what} must be {n} integer labels, got {labels.dtype} {labels.shape}")
    if n == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{what} must be non-empty labels in [0, {num_classes})")
    return labels.astype(np.int64)


def _checked(
    features_fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``features_fn`` on ``device``, refusing outputs that are not [B, D]."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out = features_fn(x.to(device))
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise DataError(f"features_fn must return [B, D] features, got {tuple(out.shape)}")
        return out.float()

    return run


def _train_linear_head(
    run: _Run, features: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, lr: float
) -> nn.Linear:
    """Multinomial logistic regression on standardised features [N, D] (AdamW from zero
    weights), folded back into one linear layer on the raw features: W' = W / s, b' = b - W' m.
    """
    n, dim = features.shape
    mean, sq = np.zeros(dim), np.zeros(dim)
    for start in range(0, n, 4096):
        chunk = np.asarray(features[start : start + 4096], dtype=np.float64)
        mean += chunk.sum(0)
        sq += (chunk**2).sum(0)
    mean /= n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    std[std < 1e-6] = 1.0  # constant features: leave unscaled
    m, s = torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    weight = torch.zeros(num_classes, dim, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    targets = torch.from_numpy(labels)

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        x = (torch.from_numpy(np.asarray(features[rows], dtype=np.float32)) - m) / s
        return F.cross_entropy(F.linear(x, weight, bias), targets[rows])

    run.fit([weight, bias], n, epochs, lr, loss_of, "head")
    head = nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(weight / s)
        head.bias.copy_(bias - head.weight @ m)
    return head


def _blocks(module: nn.Module, names: Sequence[str], count: int) -> list[tuple[str, nn.Module]]:
    """The last ``count`` of the named submodules (the ones fine-tuning trains)."""
    modules = dict(module.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown or not names or not 1 <= count <= len(names):
        raise RecipeError(
            f"finetune needs 1..{len(names)} of the named blocks of features_fn"
            f"{f'; unknown: {unknown[:3]}' if unknown else ''} (unfreeze_blocks={count})"
        )
    return [(name, modules[name]) for name in names[-count:]]


def _finetune(
    run: _Run,
    features_fn: nn.Module,
    head: nn.Linear,
    trainable: list[tuple[str, nn.Module]],
    x: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    lr: float,
) -> None:
    """Train ``head`` and the ``trainable`` blocks in place on raw inputs (eval-mode layers)."""
    features_fn.eval().requires_grad_(False)
    params = list(head.requires_grad_(True).parameters())
    for _, block in trainable:
        params += list(block.requires_grad_(True).parameters())
    device = _device(head)
    targets = torch.from_numpy(labels).to(device)

    def loss_of(rows: np.ndarray) -> torch.Tensor:
        features = features_fn(run.transform(x[rows]).to(device))
        if not features.requires_grad:
            raise RecipeError("finetune: features_fn output has no gradient")
        return F.cross_entropy(head(features.float()), targets[rows])

    run.fit(params, len(x), epochs, lr, loss_of, "finetune")
    features_fn.requires_grad_(False)
    head.requires_grad_(False)
