"""SIGKILL a run at every awkward moment, resume it, and get the same bytes as a clean run.

Each recipe runs twice through the CLI (``python -m edgedistill run RECIPE --out DIR``): once
uninterrupted, and once as a chain of processes over one run folder, each killed by
``EDGEDISTILL_TEST_KILL_AT`` (:mod:`edgedistill.faults`) at the next point — while caching
teacher outputs, mid-epoch, between epochs, in the middle of writing a checkpoint, during the
pruning recovery, between two quantized models, between two bundle files — until a last
process finishes it. After every kill the folder must be in the expected half-done state (so
the kill really landed there); the resumed processes must say they resumed; at the end every
model file, stage output and cache entry must equal the uninterrupted run's byte for byte, and
no temporary file may be left.

The four process chains (two recipes × clean/killed) run concurrently to keep the wall time
down; the slowest part is process start-up (importing torch) and ONNX export.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from edgedistill import faults
from edgedistill.artifacts import atomic_path, remove_stale_temporaries, sha256_file
from edgedistill.pipeline.run import STAGES


@dataclass(frozen=True)
class Kill:
    """One process of a killed chain and what the folder must look like after its death.

    Attributes:
        at: ``EDGEDISTILL_TEST_KILL_AT`` for this process.
        stage: The stage it died in: every earlier stage has its manifest, this one has none.
        epoch: The epoch of that stage's ``checkpoint.pt`` (None: no checkpoint yet).
        present: Run-relative glob patterns that must match a file.
        absent: Patterns that must match none.
        torn: Whether a temporary of a cut-short atomic write is left (until the next run).
        resumed: Lines this process must print (it resumed a stage killed earlier).
    """

    at: str
    stage: str
    epoch: int | None = None
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    torn: bool = False
    resumed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What one process left behind."""

    returncode: int
    files: frozenset[str]
    epochs: dict[str, int]
    log: str


# Image recipe: 384 training images in batches of 64 = 6 steps per epoch; the teacher caches the
# test split (3 batches of 64) and then the training split (6 batches).
IMAGE_KILLS = (
    Kill(
        "teacher_batch:5",
        "distill",
        present=("cache/teacher-logits-*.npy",),  # the test split's, not yet the training's
        absent=("distill/checkpoint.pt",),
    ),
    Kill("distill_batch:8", "distill", epoch=1),  # epoch 2, second batch
    Kill("train_epoch:2", "distill", epoch=2),  # right after epoch 2's checkpoint
    Kill("prune_batch:8", "prune", epoch=1, resumed=("resumed distill from epoch 2",)),
    Kill(
        "quantize_model:1",
        "quantize",
        present=("quantize/student-int8.onnx",),
        absent=("quantize/student-pruned-int8.onnx",),
        resumed=("resumed prune from epoch 1",),
    ),
    Kill(
        "bundle_file:1",
        "bundle",
        present=("bundle/app/model.onnx",),
        absent=("bundle/app/model-int8.onnx", "bundle/app/manifest.json"),
    ),
)
# Cross-modal recipe: 56 training windows in batches of 16 = 4 steps per epoch in every stage.
CROSSMODAL_KILLS = (
    Kill("train_batch:6", "pretrain", epoch=1, present=("cache/video-embeddings-*.npy",)),
    # epoch 3's checkpoint is written to its temporary but never renamed: epoch 2's stays
    Kill("checkpoint_write:3", "pretrain", epoch=2, torn=True),
    # resumes pretraining from epoch 2 (the torn write was ignored, then swept), distills
    Kill("prune_batch:5", "prune", epoch=1, resumed=("resumed pretrain from epoch 2",)),
)
FINAL_RESUMED = {"image": (), "crossmodal": ("resumed prune from epoch 1",)}

COMPARED_STAGES = ("pretrain", "distill", "prune", "export", "quantize", "verify")
"""Stages whose every output is deterministic (profile, bundle manifest, report hold timings)."""
ARTIFACT_SUFFIXES = (".onnx", ".safetensors", ".npy", ".npz", ".csv")
TEMPORARY_MARKS = (".tmp", ".partial", ".part")
LABELS = ["left", "middle", "right"]  # the classes of conftest's tiny_idx_dir


def _image_recipe(idx_dir: Path, card: Path) -> dict[str, Any]:
    return {
        "name": "tiny-kill",
        "seed": 0,
        "threads": 1,
        "data": {"path": str(idx_dir), "name": "bars", "labels": LABELS},
        "teacher": {"card": str(card)},
        "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
        "distill": {"epochs": 3, "batch_size": 64, "lr": 0.05, "teacher_batch_size": 64},
        "prune": {"target_macs_ratio": 0.7, "finetune_epochs": 3},
        "export": {"openvino": "no"},
        "quantize": {"calibration_samples": 64},
        "profile": {"batch_sizes": [1], "warmup": 1, "runs": 100, "runtimes": ["onnxruntime"]},
        "gates": {"parity_samples": 64, "int8_max_accuracy_drop": 100.0},
    }


CROSSMODAL_RECIPE: dict[str, Any] = {
    "name": "tiny-xmodal-kill",
    "threads": 1,
    "data": {
        "source": "paired",
        "frame_size": 16,
        "test_subjects": [2],
        "synthetic": {"subjects": 3, "clips_per_activity": 4},
    },
    "teacher": {"video": {"image_size": 32, "pca_dim": 16}},
    "student": {"arch": "imu_cnn", "config": {"widths": [8, 16]}},
    "pretrain": {
        "epochs": 3,
        "batch_size": 16,
        "term": {
            "name": "comodo",
            "weight": 1.0,
            "temperature": 0.05,
            "student_temperature": 0.1,
            "queue_size": 64,
        },
    },
    "distill": {"epochs": 3, "batch_size": 16, "terms": [{"name": "ce", "weight": 1.0}]},
    "prune": {"finetune_epochs": 3, "round_to": 4},
    "export": {"openvino": "no"},
    "profile": {"runtimes": ["onnxruntime"], "batch_sizes": [1], "warmup": 1, "runs": 100},
    "gates": {"int8_max_accuracy_drop": 100.0},
}


def _run(recipe: Path, out: Path, kill_at: str | None) -> Outcome:
    """One CLI process over ``out``; killed at ``kill_at`` (None: runs to the end)."""
    env = {k: v for k, v in os.environ.items() if k != faults.ENV_VAR}
    if kill_at is not None:
        env[faults.ENV_VAR] = kill_at
    done = subprocess.run(
        [sys.executable, "-m", "edgedistill", "run", str(recipe), "--out", str(out)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    files = frozenset(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    epochs = {
        p.parent.name: int(torch.load(p, map_location="cpu", weights_only=True)["epoch"])
        for p in out.glob("*/checkpoint.pt")
    }
    return Outcome(done.returncode, files, epochs, done.stdout + done.stderr)


def _chain(recipe: Path, out: Path, kills: tuple[Kill, ...]) -> list[Outcome]:
    """Every kill in turn over one folder, then a process that finishes the run."""
    outcomes = []
    for kill in (*kills, None):
        outcomes.append(_run(recipe, out, None if kill is None else kill.at))
        if outcomes[-1].returncode not in (0, -signal.SIGKILL):
            break  # a crash: the test reports its log
    return outcomes


Started = dict[str, tuple[Future[Outcome], Future[list[Outcome]], Path, Path]]


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> Iterator[Started]:
    """Starts the clean and the killed runs of both recipes at once, in four threads.

    Returns:
        recipe name -> (clean run, killed chain (futures), clean folder, killed folder).
    """
    root = tmp_path_factory.mktemp("kill")
    recipes = {
        "image": (_image_recipe(tiny_idx_dir, tiny_teacher_card), IMAGE_KILLS),
        "crossmodal": (CROSSMODAL_RECIPE, CROSSMODAL_KILLS),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        started: Started = {}
        for name, (raw, kills) in recipes.items():
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw))
            clean, killed = root / f"{name}-clean", root / f"{name}-killed"
            reference = pool.submit(_run, path, clean, None)
            chain = pool.submit(_chain, path, killed, kills)
            started[name] = (reference, chain, clean, killed)
        yield started


def _digests(run: Path) -> dict[str, str]:
    """sha256 of every model file, cache entry, sample and training log under ``run``."""
    return {
        p.relative_to(run).as_posix(): sha256_file(p)
        for p in sorted(run.rglob("*"))
        if p.is_file() and (p.suffix in ARTIFACT_SUFFIXES)
    }


def _check_kill(kill: Kill, outcome: Outcome) -> None:
    tail = outcome.log[-3000:]
    assert outcome.returncode == -signal.SIGKILL, f"{kill.at} never fired:\n{tail}"
    for stage in STAGES[: STAGES.index(kill.stage)]:
        assert f"{stage}/manifest.json" in outcome.files, f"{kill.at}: {stage} unfinished"
    assert f"{kill.stage}/manifest.json" not in outcome.files, f"{kill.at}: {kill.stage} done"
    assert outcome.epochs.get(kill.stage) == kill.epoch, (kill.at, outcome.epochs)
    for pattern in kill.present:
        assert any(fnmatch(f, pattern) for f in outcome.files), (kill.at, pattern)
    for pattern in kill.absent:
        assert not any(fnmatch(f, pattern) for f in outcome.files), (kill.at, pattern)
    torn = [f for f in outcome.files if Path(f).name.startswith(".") and ".tmp" in f]
    assert bool(torn) == kill.torn, (kill.at, torn)
    for line in kill.resumed:
        assert line in outcome.log, f"{kill.at}: no '{line}' in\n{tail}"


def test_kill_spec_is_parsed_strictly() -> None:
    assert faults.parse_kill_spec(None) is None
    assert faults.parse_kill_spec("") is None
    assert faults.parse_kill_spec("bundle_file") == ("bundle_file", None)
    assert faults.parse_kill_spec("train_batch:12") == ("train_batch", 12)
    for bad in ("train_batch:0", "train_batch:x", "train_batch:"):
        with pytest.raises(ValueError, match="EDGEDISTILL_TEST_KILL_AT"):
            faults.parse_kill_spec(bad)


def test_maybe_die_fires_only_at_its_point_and_occurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    fired: list[str] = []
    monkeypatch.setattr(faults, "_kill_self", lambda: fired.append("killed"))
    monkeypatch.setattr(faults, "_TARGET", None)
    faults.maybe_die("teacher_batch")
    assert fired == []  # unset: never
    monkeypatch.setattr(faults, "_reached", {})
    monkeypatch.setattr(faults, "_TARGET", ("teacher_batch", 3))
    for _ in range(2):
        faults.maybe_die("teacher_batch")
        faults.maybe_die("bundle_file")
    assert fired == []
    faults.maybe_die("teacher_batch")  # the third time this point is reached
    assert fired == ["killed"]
    monkeypatch.setattr(faults, "_TARGET", ("train_epoch", 2))
    faults.maybe_die("train_epoch", 1)
    faults.maybe_die("train_epoch", 3)
    assert fired == ["killed"]
    faults.maybe_die("train_epoch", 2)  # an explicit index is compared, not counted
    assert fired == ["killed", "killed"]


def test_only_temporaries_of_dead_writers_are_swept(tmp_path: Path) -> None:
    folder = tmp_path / "distill"
    with atomic_path(folder / "student.onnx") as tmp:  # the name atomic writes really use
        tmp.write_bytes(b"half")
        assert remove_stale_temporaries(tmp_path) == [] and tmp.exists()  # its writer lives
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process now
    torn = folder / f".checkpoint.{child.pid}-k3j_x9.tmp.pt"
    live = folder / f".student.{os.getpid()}-a8b2c4.tmp.safetensors"
    other = [folder / ".hidden.tmp", folder / "notes.tmp.txt", folder / "checkpoint.pt"]
    for path in (torn, live, *other):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [torn]
    assert not torn.exists() and live.exists() and all(p.exists() for p in other)
    assert (folder / "student.onnx").read_bytes() == b"half"


@pytest.mark.parametrize("name", ["image", "crossmodal"])
def test_killed_everywhere_resumes_to_the_same_bytes(name: str, runs: Started) -> None:
    reference_run, chain_run, clean, killed = runs[name]
    reference, chain = reference_run.result(), chain_run.result()
    kills = IMAGE_KILLS if name == "image" else CROSSMODAL_KILLS
    assert reference.returncode == 0, reference.log[-3000:]
    assert len(chain) == len(kills) + 1, chain[-1].log[-3000:]
    for kill, outcome in zip(kills, chain, strict=False):
        _check_kill(kill, outcome)
    final = chain[-1]
    assert final.returncode == 0, final.log[-3000:]
    for line in FINAL_RESUMED[name]:
        assert line in final.log

    want, got = _digests(clean), _digests(killed)
    assert sorted(got) == sorted(want)
    assert {"bundle/app/model.onnx", "bundle/app/model-int8.onnx"} <= set(want)
    assert sum(f.endswith(".onnx") for f in want) >= 6  # export, quantize, bundle
    assert [f for f in want if got[f] != want[f]] == []
    for stage in COMPARED_STAGES:
        outputs = json.loads((killed / stage / "manifest.json").read_text())["outputs"]
        assert outputs == json.loads((clean / stage / "manifest.json").read_text())["outputs"]
    leftovers = [
        p.relative_to(killed).as_posix()
        for p in killed.rglob("*")
        if any(mark in p.name for mark in TEMPORARY_MARKS)
    ]
    assert leftovers == []
