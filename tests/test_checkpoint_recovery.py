"""Crash-safe checkpoints: a damaged ``checkpoint.pt`` never blocks a re-run.

A checkpoint that is truncated, random bytes, a pickle carrying an ``os.system`` payload, or
a readable one from another model is moved aside with one warning line, and its stage
restarts from scratch and ends byte-identical to a clean run. Nothing is ever loaded with
``weights_only=False``.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.artifacts import (
    load_checkpoint,
    resume_checkpoint,
    set_aside,
    sha256_file,
)
from edgedistill.cli.app import app
from edgedistill.config import Recipe
from edgedistill.errors import StageError, UnsafeFileError
from edgedistill.pipeline.run import run_pipeline

LABELS = ["left", "middle", "right"]  # the classes of the tiny bars data (conftest)

# what each stage leaves that must not depend on whether its checkpoint was damaged
ARTIFACTS = {
    "distill": ("student.safetensors", "student.json", "train_log.csv"),
    "prune": ("student-pruned.safetensors", "student-pruned.json", "train_log.csv"),
}


class _Payload:
    """Unpickling this runs ``os.system(command)``: what a malicious checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def _recipe(idx: Path, card: Path) -> Recipe:
    return Recipe.from_dict(
        {
            "name": "tiny-ckpt",
            "seed": 0,
            "threads": 1,
            "data": {"path": str(idx), "name": "bars", "labels": LABELS},
            "teacher": {"card": str(card)},
            "student": {"arch": "convnet", "config": {"widths": [16, 32]}},
            "distill": {"epochs": 2, "batch_size": 64, "lr": 0.05},
            "prune": {"target_macs_ratio": 0.7, "finetune_epochs": 1},
        }
    )


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, force_terminal=False, width=400), text


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clean_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> Path:
    """An undamaged run of distill and prune: the bytes every recovered run must match."""
    out = tmp_path_factory.mktemp("clean") / "run"
    threads = torch.get_num_threads()
    run_pipeline(
        _recipe(tiny_idx_dir, tiny_teacher_card), out, until="prune", console=_console()[0]
    )
    torch.set_num_threads(threads)
    return out


def _interrupted_copy(clean: Path, tmp_path: Path, stage: str) -> Path:
    """A copy of the clean run whose ``stage`` looks interrupted: no manifest, so it re-runs
    and reads its checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(clean, out)
    (out / stage / "manifest.json").unlink()
    return out


def _damage(checkpoint: Path, how: str, marker: Path) -> None:
    if how == "truncate":
        data = checkpoint.read_bytes()
        checkpoint.write_bytes(data[: len(data) // 3])
    elif how == "random":
        checkpoint.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif how == "os_system":
        torch.save({"epoch": 1, "model": _Payload(f"touch {marker}")}, checkpoint)
    elif how == "other_model":
        # Readable, same run fingerprint and settings, but the weights of another network.
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state["model"] = torch.nn.Linear(3, 2).state_dict()
        torch.save(state, checkpoint)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "stage"),
    [
        ("truncate", "distill"),
        ("os_system", "distill"),
        ("random", "prune"),
        ("other_model", "prune"),
    ],
)
def test_damaged_checkpoint_is_set_aside_and_the_stage_restarts(
    clean_run: Path,
    tmp_path: Path,
    tiny_idx_dir: Path,
    tiny_teacher_card: Path,
    how: str,
    stage: str,
) -> None:
    out = _interrupted_copy(clean_run, tmp_path, stage)
    checkpoint = out / stage / "checkpoint.pt"
    marker = tmp_path / "payload-ran"
    _damage(checkpoint, how, marker)
    damaged = sha256_file(checkpoint)
    console, text = _console()
    ctx = run_pipeline(
        _recipe(tiny_idx_dir, tiny_teacher_card), out, until="prune", console=console
    )
    assert not marker.exists(), "the pickled os.system payload was executed"
    assert ctx.executed[0] == stage  # the damaged stage re-ran (and whatever follows it)

    warnings = [line for line in text.getvalue().splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, text.getvalue()
    assert str(checkpoint) in warnings[0]
    assert "restarting this stage from scratch" in warnings[0]
    assert "weights_only=False" not in warnings[0] and "set to `False`" not in warnings[0]
    if how == "os_system":
        assert "refused by weights_only" in warnings[0] and "system" in warnings[0]
    if how == "other_model":
        assert "does not fit this model" in warnings[0]

    aside = sorted((out / stage).glob("checkpoint.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].name in warnings[0]
    assert sha256_file(aside[0]) == damaged  # kept as it was, for inspection
    assert checkpoint.is_file()  # the restarted training wrote a fresh one
    assert load_checkpoint(checkpoint)["epoch"] >= 1

    # The restarted stage ends exactly where an undamaged run ended.
    for later in ("distill", "prune"):
        for name in ARTIFACTS[later]:
            assert sha256_file(out / later / name) == sha256_file(clean_run / later / name), (
                later,
                name,
            )

    # The next run resumes from the fresh checkpoint without any warning.
    console, text = _console()
    again = run_pipeline(
        _recipe(tiny_idx_dir, tiny_teacher_card), out, until="prune", console=console
    )
    assert again.executed == [] and "warning" not in text.getvalue()


def test_cli_prints_one_warning_line_and_succeeds(
    clean_run: Path, tmp_path: Path, tiny_idx_dir: Path, tiny_teacher_card: Path
) -> None:
    out = _interrupted_copy(clean_run, tmp_path, "distill")
    _damage(out / "distill" / "checkpoint.pt", "random", tmp_path / "unused")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(_recipe(tiny_idx_dir, tiny_teacher_card).model_dump(mode="json"))
    )
    result = CliRunner().invoke(app, ["distill", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "corrupt or truncated" in warnings[0]
    assert str(out / "distill" / "checkpoint.pt") in warnings[0]


# ---- the helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error", "words"),
    [
        (b"", StageError, "corrupt or truncated"),
        (b"\x80\x02garbage that is not a pickle", StageError, "corrupt or truncated"),
        (None, UnsafeFileError, "refused by weights_only"),
        ("tensor", StageError, "not a checkpoint (holds a Tensor"),
    ],
)
def test_load_checkpoint_errors_are_one_line_naming_the_file(
    tmp_path: Path, content: bytes | str | None, error: type[Exception], words: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    marker = tmp_path / "ran"
    if content is None:
        torch.save({"x": _Payload(f"touch {marker}")}, path)
    elif content == "tensor":
        torch.save(torch.ones(2), path)
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(error) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message
    assert "weights_only` set to `False`" not in message
    assert not marker.exists()


def test_resume_checkpoint_keeps_a_good_one_and_sets_a_bad_one_aside(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    warned: list[str] = []
    assert resume_checkpoint(path, warned.append) is None and warned == []  # none yet
    torch.save({"epoch": 3, "w": torch.arange(4.0)}, path)
    state = resume_checkpoint(path, warned.append)
    assert state is not None and state["epoch"] == 3 and torch.equal(state["w"], torch.arange(4.0))
    assert warned == [] and path.is_file()
    path.write_bytes(b"PK\x03\x04 half a zip")
    assert resume_checkpoint(path, warned.append) is None
    assert not path.exists() and len(warned) == 1
    (aside,) = tmp_path.glob("checkpoint.pt.corrupt-*")
    assert aside.read_bytes() == b"PK\x03\x04 half a zip" and aside.name in warned[0]


def test_set_aside_never_overwrites(tmp_path: Path) -> None:
    names = set()
    for i in range(3):
        path = tmp_path / "checkpoint.pt"
        path.write_bytes(bytes([i]))
        names.add(set_aside(path).name)
    assert len(names) == 3
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b"\x00", b"\x01", b"\x02"]
