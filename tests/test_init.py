"""``edgedistill init``: folders the tests write (PNGs, IMU CSVs, WAVs, a text CSV) become
recipes that load, whose findings match what the data sources then read, and that train."""

from __future__ import annotations

import io
import re
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.cli.init import init_command
from edgedistill.config import load_recipe
from edgedistill.pipeline.run import run_pipeline
from edgedistill.scaffold.render import flow
from edgedistill.tasks.sources import build_task

app = typer.Typer(add_completion=False)
app.command(name="init")(init_command)


@app.command(name="other")
def _other() -> None:  # a second command keeps `init` a sub-command, as in the real app
    """Unused."""


def _init(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``init`` in ``tmp_path``; (exit code, what it printed, whitespace collapsed)."""
    result = CliRunner().invoke(
        app, ["init", *args], env={"COLUMNS": "250"}, catch_exceptions=False
    )
    text = re.sub("[\u2500-\u257f]", " ", result.output)  # the table's box drawing
    return result.exit_code, " ".join(text.split())


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the recipe goes to the working folder by default


def _pngs(root: Path, classes: dict[str, int], mode: str = "RGB") -> None:
    """Class k: a bright left or right half; sizes alternate 24x20 and 30x25."""
    rng = np.random.default_rng(0)
    for k, (label, count) in enumerate(classes.items()):
        (root / label).mkdir(parents=True)
        for i in range(count):
            h, w = (24, 20) if i % 2 else (30, 25)
            pixels = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            pixels[:, (slice(0, w // 2), slice(w // 2, w))[k % 2]] += 150
            Image.fromarray(pixels).convert(mode).save(root / label / f"{i:02d}.png")


def _imu(root: Path, *, timed: bool = True) -> None:
    """3 subjects x 4 recordings of 6 s at 50 Hz: 'wave' is a 2 Hz sine on ax."""
    rng = np.random.default_rng(1)
    rows = []
    (root / "rec").mkdir(parents=True)
    for subject in ("s1", "s2", "s3"):
        for k, label in enumerate(("wave", "still") * 2):
            t = np.arange(300) / 50.0
            ax = np.sin(2 * np.pi * 2 * t) * (label == "wave") + rng.normal(0, 0.1, t.size)
            ay = rng.normal(0, 0.1, t.size)
            cols = (t, ax, ay) if timed else (ax, ay)
            lines = ["time,ax,ay" if timed else "ax,ay"]
            lines += [",".join(f"{v:.5f}" for v in row) for row in zip(*cols, strict=True)]
            (root / "rec" / f"{subject}_{k}.csv").write_text("\n".join(lines) + "\n")
            rows.append(f"{subject}_{k},{label},{subject}")
    (root / "labels.csv").write_text("recording,label,subject\n" + "\n".join(rows) + "\n")


def _wav(path: Path, rate: int, seconds: float, freq: float) -> None:
    n = int(rate * seconds)
    x = 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((x * 32767).astype("<i2").tobytes())


def _class_counts(recipe_path: Path, tmp_path: Path) -> dict[str, int]:
    """Samples per class (train + test) as the recipe's data source reads them."""
    recipe = load_recipe(recipe_path)
    task = build_task(recipe.data, cache_dir=tmp_path / "cache", seed=recipe.seed)
    found = Counter(np.concatenate([task.y_train, task.y_test]).tolist())
    return {name: found[k] for k, name in enumerate(task.labels)}


def _train(recipe_path: Path, tmp_path: Path, until: str = "distill") -> float:
    """Run the chain up to ``until``; the student's test top-1."""
    ctx = run_pipeline(
        load_recipe(recipe_path), tmp_path / "run", until=until, console=Console(file=io.StringIO())
    )
    assert ctx.executed[-1] == until
    return float(ctx.manifests["distill"]["metrics"]["student_top1"])


def test_png_folder_becomes_a_recipe_that_trains(tmp_path: Path) -> None:
    _pngs(tmp_path / "photos", {"left": 12, "right": 10})
    code, out = _init(tmp_path, "photos")
    assert code == 0, out
    for seen in ("modality image", "left 12, right 10", "1.2x", "RGB x22", "24 / 27 / 30 px"):
        assert seen in out
    assert "next: edgedistill run" in out
    path = tmp_path / "photos.yaml"
    text = path.read_text()
    assert "# No teacher" in text and "fashion_mnist_convnet adapts it to yours" in text
    recipe = load_recipe(path)
    assert recipe.data.source == "image_folder" and recipe.data.color == "rgb"
    assert recipe.data.size == (28, 24)  # median 27 x 22.5, a multiple of 4
    assert recipe.teacher is None and [t.name for t in recipe.distill.terms] == ["ce"]
    # 18 training images: batches of 4, 5 steps an epoch, 40 epochs for 200 steps
    assert (recipe.distill.batch_size, recipe.distill.epochs) == (4, 40)
    assert recipe.profile.batch_sizes == (1,)
    assert _class_counts(path, tmp_path) == {"left": 12, "right": 10}
    assert _train(path, tmp_path) >= 75.0  # the bright halves are easy to learn


def test_imu_folder_becomes_a_recipe_that_trains(tmp_path: Path) -> None:
    _imu(tmp_path / "imu")
    code, out = _init(tmp_path, "imu", "--target", "edge-cpu-1thread")
    assert code == 0, out
    for seen in ("modality imu", "still 30, wave 30", "50 Hz from column 'time'", "ax, ay"):
        assert seen in out
    assert "2 s (100 samples) / 1 s" in out and "3 in 'subject'" in out
    recipe = load_recipe(tmp_path / "imu.yaml")
    data = recipe.data
    assert (data.sample_rate_hz, data.window_s, data.stride_s) == (50, 2.0, 1.0)
    assert data.channels == ("ax", "ay") and data.time_column == "time"
    assert data.group_column == "subject"
    assert recipe.student.arch == "imu_cnn" and recipe.student.config["widths"] == [8, 16, 32]
    assert recipe.profile.threads == 1  # edge-cpu-1thread
    # 12 recordings of 6 s: (300 - 100) // 50 + 1 = 5 windows each, 6 recordings a class
    assert _class_counts(tmp_path / "imu.yaml", tmp_path) == {"still": 30, "wave": 30}
    assert _train(tmp_path / "imu.yaml", tmp_path) >= 75.0


def test_imu_without_time_column_needs_the_sample_rate(tmp_path: Path) -> None:
    _imu(tmp_path / "imu", timed=False)
    code, out = _init(tmp_path, "imu")
    assert code == 2 and "no time column" in out and "--sample-rate" in out
    code, out = _init(tmp_path, "imu", "--sample-rate", "25")
    assert code == 0, out
    recipe = load_recipe(tmp_path / "imu.yaml")
    assert recipe.data.sample_rate_hz == 25 and recipe.data.time_column is None
    assert recipe.data.window_s == 2.0  # 50 samples at 25 Hz
    assert _class_counts(tmp_path / "imu.yaml", tmp_path) == {"still": 66, "wave": 66}


def test_wav_folder_becomes_a_recipe(tmp_path: Path) -> None:
    for label, freq in (("high", 2000.0), ("low", 300.0)):
        (tmp_path / "sounds" / label).mkdir(parents=True)
        for i in range(5):
            rate = 8000 if i % 2 else 16000
            _wav(tmp_path / "sounds" / label / f"{i}.wav", rate, 0.8 + 0.05 * i, freq)
    code, out = _init(tmp_path, "sounds", "-o", "cfg/audio.yaml")
    assert code == 0, out
    assert "16,000 Hz x6, 8,000 Hz x4" in out and "0.80 / 0.90 / 1.00 s" in out
    recipe = load_recipe(tmp_path / "cfg" / "audio.yaml")
    assert recipe.data.source == "audio_folder" and recipe.data.path == tmp_path / "sounds"
    assert recipe.data.sample_rate_hz == 16000 and recipe.data.clip_s == 1.0
    assert recipe.student.arch == "audio_dscnn"
    assert recipe.student.config["sample_rate"] == 16000
    if recipe.teacher is not None:  # the speech embedding, where openwakeword is installed
        assert recipe.teacher.adapt is not None and recipe.teacher.card is not None
        assert recipe.teacher.card.name == "speech_embedding.yaml"
        assert [t.name for t in recipe.distill.terms] == ["ce", "kd"]
    assert _class_counts(tmp_path / "cfg" / "audio.yaml", tmp_path) == {"high": 5, "low": 5}


def test_text_csv_becomes_a_recipe(tmp_path: Path) -> None:
    lines = ["id,review,stars"]
    for i in range(40):
        words = "a great and fun film" if i % 4 else "dull, boring, awful: a long film"
        lines.append(f'{i},"{words}",{("one", "five")[bool(i % 4)]}')
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "reviews.csv").write_text("\n".join(lines) + "\n")
    code, out = _init(tmp_path, "texts", "--name", "my reviews!")
    assert code == 0, out
    assert "text 'review', label 'stars'" in out and "five 30, one 10" in out and "3.0x" in out
    recipe = load_recipe(tmp_path / "my-reviews.yaml")
    assert recipe.name == "my-reviews" and recipe.data.source == "text_csv"
    assert (recipe.data.text_column, recipe.data.label_column) == ("review", "stars")
    assert recipe.data.max_length == 32  # the longer texts are 32 bytes (steps of 16)
    assert recipe.student.arch == "text_cnn"
    assert _class_counts(tmp_path / "my-reviews.yaml", tmp_path) == {"five": 30, "one": 10}


def test_a_named_teacher_for_other_classes_is_adapted(tmp_path: Path) -> None:
    """The Fashion-MNIST card reads 1x28x28: the recipe resizes to it and trains a head."""
    _pngs(tmp_path / "photos", {"left": 10, "right": 10}, mode="L")
    code, out = _init(tmp_path, "photos", "--teacher", "fashion_mnist_convnet", "--epochs", "1")
    assert code == 0, out
    assert "teacher: fashion-mnist-convnet" in out
    recipe = load_recipe(tmp_path / "photos.yaml")
    assert recipe.data.size == (28, 28) and recipe.data.color == "grayscale"
    assert recipe.teacher is not None and recipe.teacher.adapt is not None
    assert [t.name for t in recipe.distill.terms] == ["ce", "kd"]
    text = (tmp_path / "photos.yaml").read_text()
    assert "card: " in text and "teachers/fashion_mnist_convnet.yaml" in text


def test_bad_folders_are_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out = _init(tmp_path, "empty")
    assert code == 3 and "is empty" in out
    _pngs(tmp_path / "one", {"cats": 3})
    code, out = _init(tmp_path, "one")
    assert code == 3 and "at least 2 class sub-folders" in out
    (tmp_path / "notes").mkdir()
    for i in range(3):
        (tmp_path / "notes" / f"{i}.txt").write_text("hello")
    code, out = _init(tmp_path, "notes")
    assert code == 3 and "no layout init knows" in out and "3 .txt" in out
    assert not list(tmp_path.glob("*.yaml"))


def test_corrupt_images_are_listed_and_nothing_is_written(tmp_path: Path) -> None:
    _pngs(tmp_path / "photos", {"left": 4, "right": 4})
    (tmp_path / "photos" / "left" / "broken.png").write_bytes(b"\x89PNG not really")
    code, out = _init(tmp_path, "photos")
    assert code == 3 and "1 unreadable file(s)" in out and "broken.png" in out
    assert "left 5, right 4" in out  # the findings are printed before the refusal
    assert not (tmp_path / "photos.yaml").exists()


def test_existing_recipe_needs_force(tmp_path: Path) -> None:
    _pngs(tmp_path / "photos", {"left": 4, "right": 4})
    (tmp_path / "photos.yaml").write_text("mine\n")
    code, out = _init(tmp_path, "photos")
    assert code == 2 and "pass --force" in out
    assert (tmp_path / "photos.yaml").read_text() == "mine\n"
    code, out = _init(tmp_path, "photos", "--force")
    assert code == 0 and load_recipe(tmp_path / "photos.yaml").name == "photos"


def test_a_teacher_for_another_modality_is_refused(tmp_path: Path) -> None:
    _pngs(tmp_path / "photos", {"left": 4, "right": 4})
    code, out = _init(tmp_path, "photos", "--teacher", "seglearn_watch_imu_cnn")
    assert code == 2 and "reads imu input, not image" in out
    code, out = _init(tmp_path, "photos", "--teacher", "no_such_card")
    assert code == 2 and "no such card" in out and "fashion_mnist_convnet" in out
    code, out = _init(tmp_path, "photos", "--target", "moon-base")
    assert code == 2 and "desktop-cpu" in out


@pytest.mark.parametrize("value", ["yes", "1e3", "a: b", "null", "x # y", " pad", "01", "ok"])
def test_flow_values_read_back_as_written(value: str) -> None:
    for item in (value, [value, 1.0e-5, 3], {"k": value}):
        assert yaml.safe_load(f"v: {flow(item)}")["v"] == item
