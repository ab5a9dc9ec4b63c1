"""The one bundle writer (``edgedistill.export.bundle``): for every modality, ``example.py``
classifies the bundled samples and raw input exactly as the chain does, refuses bad input in
one line, and the same inputs give byte-identical files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import runpy
import subprocess
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from edgedistill.errors import StageError
from edgedistill.export.bundle import BundledModel, png_bytes, write_bundle
from edgedistill.export.onnx import export_onnx
from edgedistill.students.text import ByteTokenizer
from edgedistill.tasks.inputs import audio_input, image_input, imu_input, text_input
from edgedistill.tasks.sources.audio_folder import fit_length, read_wav, resample
from edgedistill.tasks.sources.image_folder import read_images
from edgedistill.tasks.task import InputSpec

LABELS = ("left", "middle", "right")
INT8 = "model-int8.onnx"
RATE, CLIP = 16000, 800  # audio: 0.05 s at 16 kHz
TONES = (300.0, 1000.0, 2500.0)  # audio class k = a tone at TONES[k]


@dataclass
class Case:
    """A tiny exported model, its input contract and stored test samples of one modality."""

    spec: InputSpec
    onnx: Path
    samples: np.ndarray
    ids: list[int]
    bundle: Path

    def write(self, folder: Path, **changes: Any) -> dict[str, Any]:
        latency = {"onnxruntime": {"p50": 0.0123, "p90": 0.015, "p99": 0.02}}
        args: dict[str, Any] = {
            "name": "tiny",
            "dataset": "synthetic",
            "input_spec": self.spec,
            "labels": LABELS,
            "models": {
                "model.onnx": BundledModel(self.onnx, "fp32", "student", 91.25, latency),
                INT8: BundledModel(self.onnx, "int8", "student-int8", np.float64(90.5), {}),
            },
            "recommended": "model.onnx",
            "recommended_reason": "INT8 is not faster than FP32",
            "samples": self.samples,
            "sample_labels": self.ids,
            "metrics": {"student_top1": np.float32(91.25), "nan": float("nan")},
            "latency": {"batch1_ms": {"student": latency}},
            **changes,
        }
        return write_bundle(folder, **args)

    def predict(self, stored: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The chain's answer: labels and softmax of onnxruntime on ``spec.prepare(stored)``."""
        x = self.spec.prepare(stored).numpy()
        session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"input": x})[0].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return [LABELS[k] for k in logits.argmax(axis=1)], probs


def _case(folder: Path, spec: InputSpec, model: nn.Module, samples: np.ndarray) -> Case:
    dtype = torch.int64 if spec.dtype == "int64" else torch.float32
    onnx = export_onnx(model, spec.shape, folder / "tiny.onnx", input_dtype=dtype)
    ids = [i % len(LABELS) for i in range(len(samples))]
    case = Case(spec, onnx, samples, ids, folder / "bundle")
    case.write(case.bundle)
    return case


def _linear(n_in: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, len(LABELS)))


def image_case(folder: Path) -> Case:
    """A 12x12 grayscale bundle in ``folder`` (4 bundled samples)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 1, 12, 12)).astype(np.uint8)
    return _case(folder, image_input(x), _linear(144, 0), x[:4])


def imu_windows() -> np.ndarray:
    """[30, 6, 20] raw windows: ax, ay, az in m/s^2, gx, gy, gz in deg/s (3 bundled)."""
    rng = np.random.default_rng(1)
    scale = np.array([9.8, 2.0, 0.5, 30.0, 100.0, 1.0], dtype=np.float32)[None, :, None]
    return (rng.normal(size=(30, 6, 20)) * scale + 3.0).astype(np.float32)


def imu_case(folder: Path) -> Case:
    """A 6-channel, 0.4 s at 50 Hz IMU bundle in ``folder`` (1 bundled window)."""
    x = imu_windows()
    spec = imu_input(
        x,
        channels=["ax", "ay", "az", "gx", "gy", "gz"],
        units=["m/s^2"] * 3 + ["deg/s"] * 3,
        sample_rate_hz=50.0,
        window_s=0.4,
        stride_s=0.2,
    )
    return _case(folder, spec, _linear(120, 1), x[:3])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return image_case(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def imu(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return imu_case(tmp_path_factory.mktemp("imu"))


def _tone(freq: float, rate: int, n: int, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def audio_case(folder: Path) -> Case:
    """A 0.05 s at 16 kHz audio bundle in ``folder``: class k is a tone at TONES[k]."""
    model = nn.Linear(CLIP, len(LABELS))  # class k scores the waveform against TONES[k]
    with torch.no_grad():
        model.weight.copy_(torch.tensor(np.stack([_tone(f, RATE, CLIP, 1.0) for f in TONES])))
        model.bias.zero_()
    rng = np.random.default_rng(2)
    clips = [_tone(TONES[k % 3], RATE, CLIP) + rng.normal(0, 0.05, CLIP) for k in range(3)]
    pcm = np.clip(np.round(np.stack(clips) * 32768), -32768, 32767) / 32768  # PCM16-exact
    return _case(folder, audio_input(CLIP, RATE), model, pcm.astype(np.float32))


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return audio_case(tmp_path_factory.mktemp("audio"))


class _BagOfBytes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embedding = nn.Embedding(257, 8)
        self.classifier = nn.Linear(8, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embedding(x).mean(dim=1))


TEXTS = ["Hello World", "Ünïcode ok", "a text much longer than sixteen bytes", "Short"]
TOKENIZER = ByteTokenizer(16, lowercase=True)


def text_case(folder: Path) -> Case:
    """A 16-byte text bundle in ``folder`` (the 4 TEXTS bundled)."""
    spec = text_input(16, TOKENIZER.spec())
    return _case(folder, spec, _BagOfBytes(), TOKENIZER.encode_batch(TEXTS))


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return text_case(tmp_path_factory.mktemp("text"))


# ---- helpers -------------------------------------------------------------------------------


def _run(bundle: Path, *args: str, block_scipy: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(bundle / "example.py"), *args]
    if block_scipy:  # as if scipy were not installed
        runner = (
            "import runpy, sys; sys.modules['scipy'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        command = [sys.executable, "-c", runner, *command[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _run_inline(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``_run`` without a new interpreter (refusals are many; numpy + onnxruntime imports are
    most of a run): a ``sys.exit("error: ...")`` is what the interpreter reports as status 1."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = [str(bundle / "example.py"), *args]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(bundle / "example.py"), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = saved
    if isinstance(code, str):
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(args, int(code or 0), out.getvalue(), err.getvalue())


def _predictions(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: ")
    single = [m.group(1) for line in lines if (m := re.match(r"predicted: (\S+)", line))]
    return single or [m.group(1) for line in lines if (m := re.match(r"\d+: (\S+)", line))]


def _probabilities(result: subprocess.CompletedProcess[str]) -> dict[str, float]:
    rows = result.stdout.split("probabilities:\n")[1].splitlines()
    return {name: float(p) for name, p in (row.split() for row in rows)}


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def _same_as_chain(
    result: subprocess.CompletedProcess[str], case: Case, stored: np.ndarray
) -> None:
    labels, probs = case.predict(stored)
    assert _predictions(result) == labels
    if len(labels) == 1:
        shown = _probabilities(result)
        assert shown == {
            n: pytest.approx(p, abs=1e-4) for n, p in zip(LABELS, probs[0], strict=True)
        }


def _save_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


# ---- (a) the bundled samples ---------------------------------------------------------------


@pytest.mark.parametrize("modality", ["image", "imu", "audio", "text"])
def test_bundled_samples_match_the_chain(modality: str, request: pytest.FixtureRequest) -> None:
    case: Case = request.getfixturevalue(modality)
    result = _run(case.bundle)
    classified = case.samples if modality in ("image", "text") else case.samples[:1]
    _same_as_chain(result, case, classified)
    truths = re.findall(r"true: (\S+)", result.stdout)
    assert truths == [LABELS[k] for k in case.ids[: len(classified)]]
    assert "model: model.onnx (fp32)" in result.stdout
    other = _run(case.bundle, "--model", INT8)
    assert f"model: {INT8} (int8)" in other.stdout and _predictions(other) == _predictions(result)


def test_sample_files_hold_the_samples(image: Case, imu: Case, audio: Case, text: Case) -> None:
    with Image.open(image.bundle / "sample.png") as png:
        assert np.array_equal(np.asarray(png)[None], image.samples[0])
    npz = np.load(image.bundle / "samples.npz")
    assert np.array_equal(npz["images"], image.samples) and list(npz["labels"]) == image.ids
    window = np.load(imu.bundle / "sample_window.npy")
    assert window.dtype == np.float32 and np.array_equal(window, imu.samples[0])
    table = np.loadtxt(
        imu.bundle / "sample_window.csv", delimiter=",", skiprows=1, dtype=np.float64
    )
    assert np.array_equal(table.T.astype(np.float32), imu.samples[0])  # %.9g round-trips float32
    head = (imu.bundle / "sample_window.csv").read_text().splitlines()[0]
    assert head == "ax,ay,az,gx,gy,gz"
    waveform, rate = read_wav(audio.bundle / "sample.wav")
    assert rate == RATE and np.array_equal(waveform, audio.samples[0])
    lines = (text.bundle / "sample.txt").read_text(encoding="utf-8").splitlines()
    assert np.array_equal(TOKENIZER.encode_batch(lines), text.samples)


def test_png_writer_rgb_and_gray() -> None:
    rng = np.random.default_rng(5)
    for channels in (1, 3):
        pixels = rng.integers(0, 256, (channels, 5, 7)).astype(np.uint8)
        with Image.open(io.BytesIO(png_bytes(pixels))) as png:
            back = np.asarray(png)
        assert np.array_equal(back[None] if channels == 1 else back.transpose(2, 0, 1), pixels)


# ---- (b) raw input as an app has it ---------------------------------------------------------


def test_image_file_is_converted_and_resized_like_the_chain(image: Case, tmp_path: Path) -> None:
    rgb = np.random.default_rng(6).integers(0, 256, (20, 16, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    result = _run(image.bundle, str(tmp_path / "photo.png"))
    chain = read_images([(tmp_path / "photo.png", 0)], "L", (12, 12))
    _same_as_chain(result, image, chain)
    assert "converted the RGB image to grayscale" in result.stderr
    assert "resized 20x16 -> 12x12" in result.stderr
    single = _save_npy(tmp_path / "one.npy", image.samples[1, 0])  # [H, W]
    _same_as_chain(_run(image.bundle, str(single)), image, image.samples[1:2])
    bundled_png = _run(image.bundle, str(image.bundle / "sample.png"))
    _same_as_chain(bundled_png, image, image.samples[:1])
    assert bundled_png.stderr == ""


def test_imu_csv_in_any_column_order(imu: Case, tmp_path: Path) -> None:
    window = imu.samples[1]
    order = [3, 0, 5, 1, 4, 2]
    names = imu.spec.raw["channels"]
    rows = [",".join(["t", *(names[c] for c in order)])]
    rows += [",".join([str(t), *(repr(float(window[c, t])) for c in order)]) for t in range(20)]
    (tmp_path / "w.csv").write_text("\n".join(rows) + "\n")
    result = _run(imu.bundle, str(tmp_path / "w.csv"))
    _same_as_chain(result, imu, imu.samples[1:2])
    assert "ignored the columns ['t']" in result.stderr
    transposed = _save_npy(tmp_path / "tc.npy", window.T.astype(np.float64))  # [T, C]
    _same_as_chain(_run(imu.bundle, str(transposed)), imu, imu.samples[1:2])


def _write_wav(path: Path, frames: np.ndarray, rate: int, width: int) -> None:
    """[T, C] floats in [-1, 1) as ``width``-byte PCM."""
    scale = float(2 ** (8 * width - 1))
    ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype(np.int64)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.ravel())
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)


def _chain_clip(path: Path) -> np.ndarray:
    samples, rate = read_wav(path)
    return fit_length(resample(samples, rate, RATE), CLIP)[None]


def test_wav_at_8khz_is_resampled_like_the_chain(audio: Case, tmp_path: Path) -> None:
    wav = tmp_path / "slow.wav"
    _write_wav(wav, _tone(TONES[1], 8000, 640)[:, None], 8000, 2)  # 0.08 s: cut to 0.05 s
    result = _run(audio.bundle, str(wav))
    _same_as_chain(result, audio, _chain_clip(wav))
    assert _predictions(result) == ["middle"]
    assert (
        "resampled 8000 Hz -> 16000 Hz (scipy" in result.stderr
        and "cut the centre" in result.stderr
    )
    fallback = _run(audio.bundle, str(wav), block_scipy=True)
    assert _predictions(fallback) == ["middle"] and "numpy FFT" in fallback.stderr


def test_8_bit_wav_is_refused_in_one_line(audio: Case, tmp_path: Path) -> None:
    wav = tmp_path / "coarse.wav"
    _write_wav(wav, _tone(TONES[2], RATE, 500)[:, None], RATE, 1)
    result = _run(audio.bundle, str(wav))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: coarse.wav: 8-bit audio, 1 channel(s) at {RATE} Hz; convert it, e.g. ffmpeg -i "
        f"IN -ac 1 -ar {RATE} -c:a pcm_s16le OUT.wav"
    ]


@pytest.mark.parametrize("width", [3, 4])
def test_wav_widths_and_channels(audio: Case, tmp_path: Path, width: int) -> None:
    wav = tmp_path / "stereo.wav"
    tone = _tone(TONES[2], RATE, 500)
    _write_wav(wav, np.stack([tone, 0.5 * tone], axis=1), RATE, width)  # short: zero-padded
    result = _run(audio.bundle, str(wav))
    _same_as_chain(result, audio, _chain_clip(wav))
    assert "averaged the 2 channels" in result.stderr and "zero-padded" in result.stderr


def test_text_argument_and_file_like_the_tokenizer(text: Case, tmp_path: Path) -> None:
    result = _run(text.bundle, "HELLO wORLD, again")
    _same_as_chain(result, text, TOKENIZER.encode_batch(["HELLO wORLD, again"]))
    assert "cut" in result.stderr
    texts = ["Ünïcode OK", "short one"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    _same_as_chain(
        _run(text.bundle, "--file", str(tmp_path / "t.txt")), text, TOKENIZER.encode_batch(texts)
    )


# ---- (c) refusals --------------------------------------------------------------------------


def _npy(array: np.ndarray) -> Callable[[Path], list[str]]:
    return lambda d: [str(_save_npy(d / "x.npy", array))]


def _file(name: str, content: str) -> Callable[[Path], list[str]]:
    return lambda d: [str(_save_text(d / name, content))]


BAD: dict[str, list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]]] = {
    "image": [
        ("float01", _npy(np.full((2, 1, 12, 12), 0.5)), ("0..1", "uint8")),
        ("nan", _npy(np.full((1, 12, 12), np.nan)), ("NaN",)),
        ("int64", _npy(np.zeros((1, 12, 12), np.int64)), ("uint8",)),
        ("size", _npy(np.zeros((2, 1, 10, 10), np.uint8)), ("[2, 1, 10, 10]", "12x12")),
        ("empty", _npy(np.zeros((0, 1, 12, 12), np.uint8)), ("empty",)),
        ("missing", lambda d: [str(d / "absent.png")], ("no such file",)),
        ("suffix", _file("x.txt", "hi"), ("expected uint8 pixels",)),
        ("model", lambda d: ["--model", "other.onnx"], ("not in this bundle",)),
        ("option", lambda d: ["--nope"], ("unrecognized arguments",)),
    ],
    "imu": [
        ("count", _npy(np.zeros((6, 19))), ("19 samples", "exactly 20")),
        ("nan", _npy(np.full((6, 20), np.nan)), ("NaN",)),
        ("channels", _npy(np.zeros((5, 20))), ("no axis of 6 channels",)),
        ("header", _file("h.csv", "ax,ay\n1,2\n"), ("missing ['az'",)),
        ("missing", lambda d: [str(d / "absent.csv")], ("no such file",)),
    ],
    "audio": [
        ("text", _file("fake.wav", "not audio"), ("not a PCM WAV",)),
        ("mp3", _file("clip.mp3", "ID3..."), ("not a PCM WAV", "ffmpeg")),
        ("short", _file("tiny.wav", "hello"), ("not a PCM WAV file (the file ends before",)),
        ("missing", lambda d: [str(d / "absent.wav")], ("no such file",)),
    ],
    "text": [
        ("empty", lambda d: [""], ("empty",)),
        ("blank", lambda d: ["   "], ("empty",)),
        ("line", lambda d: ["--file", *_file("t.txt", "fine\n\nmore\n")(d)], ("line 2",)),
        ("both", lambda d: ["x", "--file", "y.txt"], ("not both",)),
        ("missing", lambda d: ["--file", str(d / "absent.txt")], ("no such file",)),
    ],
}


def _save_text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("modality", "make", "words"),
    [
        pytest.param(m, make, words, id=f"{m}-{name}")
        for m, cases in BAD.items()
        for name, make, words in cases
    ],
)
def test_bad_input_is_refused_in_one_line(
    modality: str,
    make: Callable[[Path], list[str]],
    words: tuple[str, ...],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    case: Case = request.getfixturevalue(modality)
    _refused(_run_inline(case.bundle, *make(tmp_path)), *words)


def test_damaged_model_is_refused(imu: Case, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    imu.write(copy)
    (copy / "model.onnx").write_bytes(b"garbage")
    _refused(_run(copy), "sha256")


# ---- (d) manifest, README, determinism -----------------------------------------------------


@pytest.mark.parametrize("modality", ["image", "imu", "audio", "text"])
def test_same_inputs_same_bytes(
    modality: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case: Case = request.getfixturevalue(modality)
    case.write(tmp_path / "a")
    case.write(tmp_path / "b")
    case.write(tmp_path / "b")  # over an existing bundle
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(set(files) - {"manifest.json"})
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest() == digest


def test_manifest_contract(imu: Case) -> None:
    manifest = json.loads((imu.bundle / "manifest.json").read_text())
    assert manifest["format"] == "edgedistill-bundle/1" and manifest["modality"] == "imu"
    assert manifest["input"] == json.loads(json.dumps(imu.spec.as_dict()))
    assert manifest["output"] == {
        "name": "logits",
        "shape": ["N", 3],
        "meaning": manifest["output"]["meaning"],
    }
    assert manifest["labels"] == list(LABELS) and manifest["recommended"] == "model.onnx"
    assert manifest["models"][INT8] == {
        "precision": "int8",
        "source": "student-int8",
        "top1": 90.5,
        "latency_ms_batch1": {},
    }
    assert manifest["metrics"] == {"student_top1": 91.25, "nan": None}
    assert manifest["samples"]["default"] == "sample_window.npy"
    assert manifest["samples"]["true_labels"] == ["left"]
    assert list(manifest)[-1] == "files"


def test_readme_per_modality(image: Case, imu: Case, audio: Case, text: Case) -> None:
    shared = ("## Run the example", "| model.onnx | fp32 | student | 91.25 | 0.0123", "INT8 is not")
    wanted = [
        (image, ("12x12 grayscale", "| gray |", "true: left, middle, right, left")),
        (imu, ("| 0 | ax | m/s^2 |", "0.4 s at 50 Hz", "(true: left)")),
        (audio, ("| sample rate | 16000 Hz |", "0.05 s (800 samples)", "(true: left)")),
        (text, ("ASCII A-Z -> a-z", "| max_len | 16", "--file texts.txt")),
    ]
    for case, words in wanted:
        readme = (case.bundle / "README.md").read_text()
        for word in (*shared, *words):
            assert word in readme, (case.spec.modality, word)


def test_rewrite_removes_files_of_the_previous_bundle(
    image: Case, imu: Case, tmp_path: Path
) -> None:
    image.write(tmp_path)
    imu.write(tmp_path, models={"model.onnx": BundledModel(imu.onnx, "fp32", "student", None, {})})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [
            "README.md",
            "example.py",
            "manifest.json",
            "model.onnx",
            "sample_window.csv",
            "sample_window.npy",
        ]
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"recommended": "nope.onnx"}, "recommended"),
        ({"samples": np.zeros((2, 6, 19), np.float32)}, "expected [k >= 1"),
        ({"samples": np.zeros((0, 6, 20), np.float32), "sample_labels": []}, "expected [k >= 1"),
        ({"sample_labels": [0, 1]}, "3 samples but 2 labels"),
        ({"sample_labels": [0, 1, 7]}, "outside"),
        ({"models": {"../x.onnx": BundledModel(Path("x"), "fp32", "s", None, {})}}, "plain name"),
        (
            {"models": {"m.onnx": BundledModel(Path("/no/such.onnx"), "fp32", "s", None, {})}},
            "does not exist",
        ),
    ],
)
def test_bad_arguments_are_refused(
    imu: Case, tmp_path: Path, change: dict[str, Any], words: str
) -> None:
    with pytest.raises(StageError, match=re.escape(words)):
        imu.write(tmp_path, **change)
    assert not (tmp_path / "manifest.json").exists()
