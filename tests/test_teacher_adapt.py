"""Teacher adaptation: a linear probe (and LP-FT) head on a frozen teacher, cached on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import edgedistill.teachers.adapt as adapt
from edgedistill.errors import DataError, MissingDependencyError, RecipeError
from edgedistill.teachers.adapt import AdaptedTeacher, adapt_teacher, module_sha256
from edgedistill.teachers.base import FrozenTeacher

CENTRES = [(2.0, 2.0), (2.0, 9.0), (9.0, 5.5)]  # (row, col) of each class's blob, 12 x 12


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 1, 12, 12] float32 images: a Gaussian blob at the class's centre (jittered) on
    noise; labels [n] in {0, 1, 2}."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    rows, cols = np.mgrid[0:12, 0:12]
    images = rng.normal(scale=0.3, size=(n, 1, 12, 12))
    for i, k in enumerate(labels):
        r, c = np.array(CENTRES[k]) + rng.normal(scale=0.7, size=2)
        images[i, 0] += 2.0 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.5**2))
    return images.astype(np.float32), labels


class TinyTeacher(nn.Module):
    """A random conv net with a 10-way head for some other task; penultimate features [B, 32]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def features(self) -> nn.Module:
        return nn.Sequential(self.blocks, self.pool, nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(x)), 1))


class Counted(nn.Module):
    """Counts the rows it has computed features for."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        out: torch.Tensor = self.inner(x)
        return out


def make_teacher() -> FrozenTeacher:
    return FrozenTeacher(TinyTeacher(), "tiny", "a" * 64)


def run(teacher: nn.Module, features_fn: Any, cache: Path, **kwargs: Any) -> AdaptedTeacher:
    x, y = blobs(150, seed=1)
    xv, yv = blobs(60, seed=2)
    args: dict[str, Any] = {"epochs": 60, "lr": 0.05, "seed": 0, **kwargs}
    return adapt_teacher(
        teacher,
        features_fn=features_fn,
        x_train=x,
        y_train=y,
        num_classes=3,
        cache_dir=cache,
        data_key="blobs-150",
        x_val=xv,
        y_val=yv,
        **args,
    )


def test_linear_probe_is_accurate_frozen_and_deterministic(tmp_path: Path) -> None:
    teacher = make_teacher()
    inner: TinyTeacher = teacher.model  # type: ignore[assignment]
    adapted = run(teacher, inner.features(), tmp_path / "a")
    assert adapted.head_top1 is not None and adapted.head_top1 > 90
    assert adapted.method == "linear_probe" and adapted.base_sha256 == "a" * 64
    assert adapted.weights_sha256 not in ("a" * 64, "") and len(adapted.weights_sha256) == 64
    assert not any(p.requires_grad for p in adapted.parameters())
    assert not adapted.train().training and not adapted.model.training
    x, y = blobs(60, seed=3)
    logits = adapted(torch.from_numpy(x))
    assert logits.shape == (60, 3) and not logits.requires_grad
    assert (logits.argmax(1).numpy() == y).mean() > 0.9
    # the head sits on the raw features: the standardisation is folded into it
    with torch.no_grad():
        direct = adapted.head(inner.features()(torch.from_numpy(x)))
    torch.testing.assert_close(logits, direct)
    again = run(make_teacher(), make_teacher().model.features(), tmp_path / "b")  # type: ignore[operator]
    assert again.weights_sha256 == adapted.weights_sha256
    torch.testing.assert_close(again.head.weight, adapted.head.weight, rtol=0, atol=0)
    # the seed orders the batches (one full batch here, so it matters only with smaller ones)
    batched = run(make_teacher(), inner.features(), tmp_path / "b", batch_size=50)
    assert batched.weights_sha256 != adapted.weights_sha256
    reseeded = run(make_teacher(), inner.features(), tmp_path / "b", batch_size=50, seed=1)
    assert reseeded.weights_sha256 != batched.weights_sha256


def test_second_call_hits_the_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = make_teacher()
    features = Counted(teacher.model.features())  # type: ignore[operator]
    trained: list[float] = []
    real = adapt._train_linear_head

    def counting(run_: Any, *args: Any) -> nn.Linear:
        trained.append(args[-1])
        return real(run_, *args)

    monkeypatch.setattr(adapt, "_train_linear_head", counting)
    progress: list[tuple[int, str | None]] = []
    first = run(teacher, features, tmp_path, progress=lambda n=1, d=None: progress.append((n, d)))
    assert features.rows == 150 + 60 and trained == [0.05]  # train and val features, one head
    assert sum(n for n, d in progress if d == "train features") == 150
    assert sum(1 for _, d in progress if d and d.startswith("head epoch")) == 60
    second = run(teacher, features, tmp_path)
    assert features.rows == 210 and trained == [0.05]  # nothing recomputed, nothing trained
    assert second.weights_sha256 == first.weights_sha256 and second.head_top1 == first.head_top1
    third = run(teacher, features, tmp_path, lr=0.02)  # a new head on the cached features
    assert features.rows == 210 and trained == [0.05, 0.02]
    assert third.weights_sha256 != first.weights_sha256
    assert len(list(tmp_path.glob("teacher-features-*.npy"))) == 2
    assert len(list(tmp_path.glob("teacher-head-*.safetensors"))) == 2
    # other labels for the same images: same features, a new head
    x, y = blobs(150, seed=1)
    adapt_teacher(
        teacher,
        features_fn=features,
        x_train=x,
        y_train=(y + 1) % 3,
        num_classes=3,
        cache_dir=tmp_path,
        data_key="blobs-150",
        epochs=5,
    )
    assert features.rows == 210 and len(trained) == 3


def test_finetune_trains_the_last_block_of_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = make_teacher()
    inner: TinyTeacher = teacher.model  # type: ignore[assignment]
    before = module_sha256(inner)
    features = inner.features()
    probe = run(teacher, features, tmp_path)
    tuned = run(
        teacher,
        features,
        tmp_path,
        method="finetune",
        blocks=["0.0", "0.1"],
        finetune_epochs=3,
        finetune_lr=1e-3,
    )
    assert module_sha256(inner) == before  # the teacher itself is untouched
    assert tuned.method == "finetune" and tuned.weights_sha256 != probe.weights_sha256
    assert tuned.head_top1 is not None and tuned.head_top1 > 90
    assert not any(p.requires_grad for p in tuned.parameters()) and not tuned.train().training
    copy = tuned.model.features_fn
    assert isinstance(copy, nn.Sequential) and copy is not features
    torch.testing.assert_close(copy[0][0][0].weight, inner.blocks[0][0].weight, rtol=0, atol=0)  # type: ignore[index]
    assert not torch.equal(copy[0][1][0].weight, inner.blocks[1][0].weight)  # type: ignore[index]
    calls: list[int] = []
    monkeypatch.setattr(adapt, "_finetune", lambda *a: calls.append(1))
    again = run(
        teacher,
        features,
        tmp_path,
        method="finetune",
        blocks=["0.0", "0.1"],
        finetune_epochs=3,
        finetune_lr=1e-3,
    )
    assert calls == [] and again.weights_sha256 == tuned.weights_sha256
    loaded: Any = again.model.features_fn
    torch.testing.assert_close(loaded[0][1][0].weight, copy[0][1][0].weight)  # type: ignore[index]


def test_user_errors(tmp_path: Path) -> None:
    teacher = make_teacher()
    features = teacher.model.features()  # type: ignore[operator]
    with pytest.raises(RecipeError, match="unknown adaptation method"):
        run(teacher, features, tmp_path, method="distill")
    with pytest.raises(RecipeError, match=r"nn\.Module"):
        run(teacher, lambda x: features(x), tmp_path, method="finetune", blocks=["0.1"])
    with pytest.raises(RecipeError, match="unknown"):
        run(teacher, features, tmp_path, method="finetune", blocks=["0.7"])
    with pytest.raises(RecipeError, match="transform_key"):
        run(teacher, features, tmp_path, transform=torch.from_numpy)
    with pytest.raises(DataError, match=r"\[B, D\]"):
        run(teacher, teacher.model.blocks, tmp_path)  # type: ignore[arg-type]
    x, y = blobs(10, seed=0)
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        adapt_teacher(
            teacher,
            features_fn=features,
            x_train=x,
            y_train=y + 3,
            num_classes=3,
            cache_dir=tmp_path,
        )
    with pytest.raises(DataError, match="integer labels"):
        adapt_teacher(
            teacher,
            features_fn=features,
            x_train=x,
            y_train=y[:5],
            num_classes=3,
            cache_dir=tmp_path,
        )


def test_imagenet_mobilenet_v2_probe_on_bright_vs_dark(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from edgedistill.teachers.image import frozen_imagenet_teacher, preprocess_imagenet

    try:
        teacher = frozen_imagenet_teacher("mobilenet_v2")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    mobilenet: Any = teacher.model
    features = nn.Sequential(mobilenet.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    # 1: bright, 0: dark; both with smooth blotches (8 x 8 noise upsampled to 64 x 64)
    labels = np.arange(40) % 2
    blotches = np.kron(np.random.default_rng(0).uniform(size=(40, 8, 8, 3)), np.ones((1, 8, 8, 1)))
    level = np.where(labels == 1, 170.0, 30.0)[:, None, None, None]
    images = np.clip(level + 60 * (blotches - 0.5), 0, 255).astype(np.uint8)

    def transform(batch: np.ndarray) -> torch.Tensor:
        return torch.cat([preprocess_imagenet(image, 64) for image in batch])

    adapted = adapt_teacher(
        teacher,
        features_fn=features,
        x_train=images[:24],
        y_train=labels[:24],
        num_classes=2,
        cache_dir=tmp_path,
        data_key="bright-dark-24",
        transform=transform,
        transform_key={"imagenet": 64},
        epochs=30,
        lr=0.05,
        x_val=images[24:],
        y_val=labels[24:],
    )
    assert adapted.head.in_features == 1280
    assert adapted.head_top1 is not None and adapted.head_top1 > 90
    assert adapted.base_sha256 == teacher.weights_sha256 != adapted.weights_sha256
    logits = adapted(transform(images[24:]))
    assert logits.shape == (16, 2) and (logits.argmax(1).numpy() == labels[24:]).mean() > 0.9


def test_recipe_teacher_adapt_trains_a_head_once_and_keys_caches_by_it(
    tiny_recipe_dict: dict[str, Any], tmp_path: Path
) -> None:
    """A recipe stage: the teacher's head is replaced by a probe trained on its features."""
    import yaml

    from edgedistill.config import load_recipe
    from edgedistill.pipeline.run import run_pipeline
    from edgedistill.teachers import load_teacher

    recipe = dict(tiny_recipe_dict)
    recipe["teacher"] = {**recipe["teacher"], "adapt": {"method": "linear_probe", "epochs": 30}}
    path = tmp_path / "adapt.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ctx = run_pipeline(load_recipe(path), tmp_path / "run", until="distill")
    base, _ = load_teacher(Path(recipe["teacher"]["card"]))
    assert isinstance(ctx.teacher, AdaptedTeacher)
    assert ctx.teacher.base_sha256 == base.weights_sha256 != ctx.teacher.weights_sha256
    assert ctx.manifests["distill"]["inputs"]["teacher"] == ctx.teacher.weights_sha256
    assert ctx.manifests["distill"]["metrics"]["teacher_top1"] > 60  # a probe on good features
    heads = list((tmp_path / "run" / "cache").glob("*.safetensors"))
    assert len(heads) == 1
    stamp = heads[0].stat().st_mtime_ns
    again = run_pipeline(load_recipe(path), tmp_path / "run", until="distill")
    assert again.skipped == ["pretrain", "distill"]
    assert heads[0].stat().st_mtime_ns == stamp  # the head was loaded, not retrained
