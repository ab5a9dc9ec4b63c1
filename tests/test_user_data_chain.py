"""A user's own data through the whole chain: a folder of PNG files and a folder of IMU CSV
recordings written by the test, each run from recipe to bundle, the bundle's example.py run
on raw input the test writes by hand."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from rich.console import Console

from edgedistill.config import load_recipe
from edgedistill.pipeline.run import STAGES, run_pipeline

FAST = {
    "prune": {"finetune_epochs": 1, "round_to": 4},
    "quantize": {"calibration_samples": 32},
    "export": {"openvino": "no"},
    "profile": {"runtimes": ["torch", "onnxruntime"], "batch_sizes": [1], "warmup": 2, "runs": 100},
    "gates": {"int8_max_accuracy_drop": 100.0, "parity_samples": 50},
}


def _quiet() -> Console:
    return Console(file=io.StringIO())


def _run(tmp_path: Path, recipe: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    ctx = run_pipeline(load_recipe(path), out, console=_quiet())
    assert ctx.executed == list(STAGES)
    for stage in STAGES:
        assert (out / stage / "manifest.json").is_file(), stage
    assert (out / "summary.json").is_file() and (out / "report" / "report.html").is_file()
    again = run_pipeline(load_recipe(path), out, console=_quiet())
    assert again.skipped == list(STAGES)
    return out


def _example(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / "example.py"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_png_folder_runs_the_whole_chain(tmp_path: Path) -> None:
    """Two classes (a bright left / right half) of 20x24 RGB PNGs of mixed sizes, resized."""
    rng = np.random.default_rng(0)
    for label, side in (("left", 0), ("right", 1)):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(40):
            h, w = (24, 20) if i % 2 else (30, 25)
            image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            half = slice(0, w // 2) if side == 0 else slice(w // 2, w)
            image[:, half] += 150
            Image.fromarray(image).save(tmp_path / "photos" / label / f"{i:02d}.png")
    recipe = {
        "name": "photos",
        "data": {"source": "image_folder", "path": "photos", "size": [24, 20], "color": "rgb"},
        "student": {"arch": "convnet", "config": {"widths": [8, 16]}},
        "distill": {"epochs": 3, "batch_size": 16, "terms": [{"name": "ce", "weight": 1.0}]},
        **FAST,
    }
    out = _run(tmp_path, recipe)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modality"] == "image"
    assert summary["models"][0]["name"] == "student"  # no teacher row
    bundle = out / "bundle" / "app"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["shape"] == ["N", 3, 24, 20] and manifest["labels"] == [
        "left",
        "right",
    ]
    image = np.full((40, 32, 3), 20, np.uint8)
    image[:, 16:] = 200  # bright right half, another size: resized by the example
    Image.fromarray(image).save(tmp_path / "mine.png")
    done = _example(bundle, str(tmp_path / "mine.png"))
    assert done.returncode == 0, done.stderr
    assert "right" in done.stdout


def test_imu_csv_folder_runs_the_whole_chain(tmp_path: Path) -> None:
    """Recordings of 3 subjects: 'wave' is a 2 Hz sine on ax, 'still' is noise; subject s3
    held out."""
    rng = np.random.default_rng(1)
    rows = []
    for subject in ("s1", "s2", "s3"):
        for k, label in enumerate(("wave", "still") * 3):
            name = f"{subject}_{k}"
            t = np.arange(400) / 50.0
            ax = np.sin(2 * np.pi * 2 * t) * (label == "wave") + rng.normal(0, 0.1, t.size)
            ay = rng.normal(0, 0.1, t.size)
            lines = ["time,ax,ay"] + [
                f"{a:.4f},{b:.5f},{c:.5f}" for a, b, c in zip(t, ax, ay, strict=True)
            ]
            (tmp_path / "rec").mkdir(exist_ok=True)
            (tmp_path / "rec" / f"{name}.csv").write_text("\n".join(lines) + "\n")
            rows.append(f"{name},{label},{subject}")
    (tmp_path / "labels.csv").write_text("recording,label,subject\n" + "\n".join(rows) + "\n")
    recipe = {
        "name": "my-imu",
        "data": {
            "source": "imu",
            "path": "rec",
            "labels_file": "labels.csv",
            "channels": ["ax", "ay"],
            "units": ["m/s^2", "m/s^2"],
            "sample_rate_hz": 50,
            "window_s": 1.0,
            "stride_s": 0.5,
            "time_column": "time",
            "group_column": "subject",
            "test_groups": ["s3"],
        },
        "student": {"arch": "imu_cnn", "config": {"widths": [8, 16]}},
        "distill": {"epochs": 3, "batch_size": 16, "terms": [{"name": "ce", "weight": 1.0}]},
        **FAST,
    }
    out = _run(tmp_path, recipe)
    bundle = out / "bundle" / "app"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["channels"] == ["ax", "ay"]
    assert manifest["input"]["sample_rate_hz"] == 50.0
    t = np.arange(50) / 50.0
    window = ["ay,ax"] + [f"0.0,{np.sin(2 * np.pi * 2 * v):.5f}" for v in t]  # columns swapped
    (tmp_path / "mine.csv").write_text("\n".join(window) + "\n")
    done = _example(bundle, str(tmp_path / "mine.csv"))
    assert done.returncode == 0, done.stderr
    assert "wave" in done.stdout.splitlines()[1] or "wave" in done.stdout


def test_text_csv_runs_the_whole_chain(tmp_path: Path) -> None:
    """Reviews whose sentiment is carried by a few words; int64 token ids go through prune,
    INT8 calibration, verify and profile, and the bundle classifies a typed sentence."""
    rng = np.random.default_rng(2)
    good, bad = ["great", "wonderful", "moving", "fun"], ["dull", "awful", "boring", "bad"]
    filler = ["the", "film", "plot", "actors", "was", "really"]
    lines = ["text,label"]
    for i in range(160):
        label = ("rotten", "fresh")[i % 2]
        words = list(rng.choice(good if i % 2 else bad, 2)) + list(rng.choice(filler, 4))
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    recipe = {
        "name": "my-text",
        "data": {"source": "text_csv", "path": "reviews.csv", "max_length": 48},
        "student": {"arch": "text_cnn", "config": {"embed_dim": 16, "widths": [16, 16]}},
        "distill": {"epochs": 4, "batch_size": 16, "terms": [{"name": "ce", "weight": 1.0}]},
        **{**FAST, "prune": {"finetune_epochs": 1, "round_to": 8}},
    }
    out = _run(tmp_path, recipe)
    summary = json.loads((out / "summary.json").read_text())
    names = {m["name"] for m in summary["models"]}
    assert {"student-pruned", "student-pruned-int8"} <= names  # token ids pruned and quantized
    bundle = out / "bundle" / "app"
    done = _example(bundle, "a wonderful and moving film")
    assert done.returncode == 0, done.stderr
    assert "predicted:" in done.stdout
    for bad_input, message in (("", "the text is empty"), ("x" * 70_000, "not a sentence")):
        refused = _example(bundle, bad_input)
        assert refused.returncode != 0 and message in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


class _KeywordTeacher:
    """A text 'LM' for the test: scores fresh by counting positive words (tokenizer: split)."""

    good = ("great", "wonderful", "moving", "fun")

    def build(self, path: Path, config: dict[str, Any], name: str, digest: str) -> Any:
        import torch
        from torch import nn

        from edgedistill.teachers.base import FrozenTeacher
        from edgedistill.teachers.text import TextTeacher
        from edgedistill.teachers.text_inputs import TextTeacherOnIds

        good = self.good

        class Counting(TextTeacher):
            def spec(self) -> dict[str, Any]:
                return {"kind": "counting"}

            def _encode(self, texts: list[str]) -> torch.Tensor:
                score = [float(sum(w in good for w in t.split())) for t in texts]
                return torch.tensor([[1.0 - 2 * s, 2 * s - 1.0] for s in score])

        tokenizer = lambda texts: {"input_ids": [t.split() for t in texts]}  # noqa: E731
        teacher = Counting(nn.Linear(1, 1), tokenizer, name, digest)
        teacher.config = type("C", (), {"hidden_size": 4, "num_hidden_layers": 1,
                                        "intermediate_size": 8, "num_attention_heads": 1,
                                        "vocab_size": 10})()  # fmt: skip
        return FrozenTeacher(TextTeacherOnIds(teacher), name, digest)


def test_a_torch_only_text_teacher_is_verified_and_profiled_in_torch(tmp_path: Path) -> None:
    """A teacher that cannot become one ONNX graph (a tokenizer inside) distils through the
    chain: not exported, scored and timed in torch, and the speed-up is measured against it."""
    import hashlib

    import yaml as _yaml

    from edgedistill.teachers.packaged import PACKAGED_TEACHERS, register_packaged_teacher

    if "test_counting" not in PACKAGED_TEACHERS:
        register_packaged_teacher("test_counting", install="-", extra="text")(
            _KeywordTeacher().build
        )
    import numpy  # the weights 'file' is any file of an installed package

    weights = Path(numpy.__file__)
    card = {
        "name": "counting", "arch": "test_counting", "package": "numpy",
        "weights": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }  # fmt: skip
    (tmp_path / "card.yaml").write_text(_yaml.safe_dump(card))
    rng = np.random.default_rng(3)
    lines = ["text,label"]
    for i in range(120):
        words = list(rng.choice(_KeywordTeacher.good if i % 2 else ["dull", "bad"], 2))
        lines.append(f"{' '.join([*words, 'the', 'film'])},{('rotten', 'fresh')[i % 2]}")
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    recipe = {
        "name": "torch-only-teacher",
        "data": {"source": "text_csv", "path": "reviews.csv", "max_length": 32,
                 "labels": ["rotten", "fresh"]},
        "teacher": {"card": "card.yaml"},
        "student": {"arch": "text_cnn", "config": {"embed_dim": 8, "widths": [16, 16]}},
        "distill": {"epochs": 2, "batch_size": 16,
                    "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]},
        **{**FAST, "prune": {"finetune_epochs": 1, "round_to": 8}},
    }  # fmt: skip
    out = _run(tmp_path, recipe)
    assert not (out / "export" / "teacher.onnx").exists()
    summary = json.loads((out / "summary.json").read_text())
    teacher = next(m for m in summary["models"] if m["name"] == "teacher")
    assert teacher["onnx"] is None and teacher["accuracy"] == 100.0
    assert set(teacher["latency_ms"]) == {"torch"}
    assert any("vs teacher (torch)" in key for key in summary["speedups"])
