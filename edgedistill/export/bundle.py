"""The app-ready bundle: one folder an app can embed, for every modality.

:func:`write_bundle` writes the models, sample input in the modality's everyday file format
(PNG + npz, CSV + npy, WAV, text), an ``example.py`` that needs only numpy and onnxruntime
(:mod:`.bundle_examples`), a ``README.md`` and, last, ``manifest.json``: the complete input
contract (:meth:`InputSpec.as_dict`), labels, models, metrics and the sha256 of every other
file. Every file is written atomically and deterministically: the same inputs give the same
bytes (no timestamps; zip entries dated 1980-01-01).
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import wave
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.artifacts import atomic_copy, atomic_write_bytes, atomic_write_json, sha256_file
from edgedistill.errors import StageError
from edgedistill.export.bundle_examples import example_program
from edgedistill.export.bundle_readme import readme
from edgedistill.faults import maybe_die
from edgedistill.tasks.task import METRICS, InputSpec

BUNDLE_FORMAT = "edgedistill-bundle/1"
MANIFEST, EXAMPLE, README = "manifest.json", "example.py", "README.md"
SAMPLE_FILES: dict[str, tuple[str, ...]] = {
    "image": ("samples.npz", "sample.png"),
    "imu": ("sample_window.npy", "sample_window.csv"),
    "audio": ("sample.wav",),
    "text": ("sample.txt",),
}
"""Per modality: the sample files; the first is what ``python example.py`` classifies."""


@dataclass(frozen=True)
class BundledModel:
    """One model file of the bundle.

    Attributes:
        onnx: The ONNX file to copy (self-contained: no external data).
        precision: "fp32" or "int8".
        source: The run's model name, e.g. "student-pruned" or "student-pruned-int8".
        metric: The task metric (top-1 %, or the metric write_bundle is given) on the test
            split, or None when not measured.
        latency_ms_batch1: {runtime: {p50, p90, p99}} at batch 1 (may be empty).
    """

    onnx: Path
    precision: str
    source: str
    metric: float | None
    latency_ms_batch1: dict[str, Any]


def write_bundle(
    folder: Path,
    *,
    name: str,
    dataset: str,
    input_spec: InputSpec,
    labels: Sequence[str],
    models: Mapping[str, BundledModel],
    recommended: str,
    recommended_reason: str,
    samples: np.ndarray,
    sample_labels: Sequence[int],
    metrics: Mapping[str, Any],
    latency: Mapping[str, Any],
    metric: str = "top1",
    environment: Mapping[str, Any] | None = None,
    verify: Mapping[str, Any] | None = None,
    teacher: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle into ``folder``; ``manifest.json`` last, so its presence means done.

    A previous bundle in ``folder`` is replaced: its manifest is removed first and the files
    it listed that this bundle does not write are deleted; other files are left alone.

    Args:
        folder: Destination (created if needed).
        name: Recipe name, shown in the README and manifest.
        dataset: Dataset name.
        input_spec: The input contract; ``as_dict()`` becomes ``manifest["input"]``.
        labels: Class names; logit k is ``labels[k]``.
        models: Bundle file name (``model.onnx``, ``model-int8.onnx``) -> model.
        recommended: The file an app should load (a key of ``models``).
        recommended_reason: One line saying why.
        samples: [k, *input_spec.shape] test samples in stored form (k >= 1); image and
            text bundles keep all k, IMU and audio bundles the first.
        sample_labels: True class index of each sample.
        metrics: Accuracy/parity/size figures for the manifest.
        latency: Latency figures and their environment for the manifest.
        metric: The task metric each model's ``top1`` entry holds (a key of
            :data:`~edgedistill.tasks.task.METRICS`); ``pitch_rpa`` bundles a pitch tracker
            (``example.py`` prints a WAV file's pitch track, the manifest says how to decode
            the 360 bin scores).
        environment: The machine the latency was measured on (the profile stage's
            ``latency.json["environment"]``: cpu, cpu_count, threads, platform, libraries), or
            None when nothing was profiled.
        verify: The verify gates the bundled models passed
            (:func:`~edgedistill.export.bundle_readme.verify_gates`), or None.
        teacher: Where the teacher came from and its licence
            (:func:`~edgedistill.export.bundle_readme.teacher_provenance`), or None.

    Returns:
        The manifest that was written.

    Raises:
        StageError: on a missing model file, a bad file name, or samples/labels that do not
            fit the input contract.
    """
    stored = _check(input_spec, labels, models, recommended, samples, sample_labels)
    if metric not in METRICS:
        raise StageError(f"bundle: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    folder.mkdir(parents=True, exist_ok=True)
    previous = _previous_files(folder)
    (folder / MANIFEST).unlink(missing_ok=True)  # half-replaced bundles carry no manifest
    for file, model in models.items():
        atomic_copy(model.onnx, folder / file)
        maybe_die("bundle_file")  # tests only
    truth = [str(labels[int(k)]) for k in sample_labels]
    ids = [int(k) for k in sample_labels]
    sample_files, classified = _write_samples(folder, input_spec, stored, ids)
    program = example_program(input_spec.modality, metric)
    atomic_write_bytes(folder / EXAMPLE, program.encode("utf-8"))
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "dataset": dataset,
        "modality": input_spec.modality,
        "recommended": recommended,
        "recommended_reason": recommended_reason,
        "models": {
            file: {
                "precision": m.precision,
                "source": m.source,
                "top1": m.metric,
                "latency_ms_batch1": m.latency_ms_batch1,
            }
            for file, m in models.items()
        },
        "metric": {"name": metric, "meaning": METRICS[metric].describe},
        "input": input_spec.as_dict(),
        "output": _output(metric, len(labels)),
        "labels": [str(label) for label in labels],
        "metrics": dict(metrics),
        "latency": dict(latency),
        "environment": None if environment is None else dict(environment),
        "verify": None if verify is None else dict(verify),
        "teacher": None if teacher is None else dict(teacher),
        "samples": {
            "files": list(sample_files),
            "default": sample_files[0],
            "true_labels": truth[:classified],
            "true_label_ids": ids[:classified],
        },
    }
    manifest = _plain(manifest)
    # The README lists every other file with its size and sha256, so those are final first.
    listed = sorted([*models, *sample_files, EXAMPLE])
    manifest["files"] = {file: sha256_file(folder / file) for file in listed}
    manifest["file_bytes"] = {file: (folder / file).stat().st_size for file in listed}
    atomic_write_bytes(folder / README, readme(manifest).encode("utf-8"))
    written = [*listed, README]
    for stale in sorted(previous - set(written)):
        (folder / stale).unlink(missing_ok=True)
    del manifest["files"], manifest["file_bytes"]  # re-added last, README included
    manifest["file_bytes"] = {file: (folder / file).stat().st_size for file in sorted(written)}
    manifest["files"] = {file: sha256_file(folder / file) for file in sorted(written)}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def _output(metric: str, classes: int) -> dict[str, Any]:
    """The manifest's description of the model output (a pitch task's decoding rule too)."""
    output: dict[str, Any] = {
        "name": "logits",
        "shape": ["N", classes],
        "meaning": "unnormalised class scores in the order of labels; argmax = predicted "
        "class, softmax = probabilities",
    }
    if metric == "pitch_rpa":
        from edgedistill.tasks.pitch import decoding_contract

        output["meaning"] = (
            "scores of the pitch bins in the order of labels (bin centres); decode them to Hz "
            "and a confidence with output.pitch.rule"
        )
        output["pitch"] = decoding_contract()
    return output


# ---- checks --------------------------------------------------------------------------------


def _check(
    spec: InputSpec,
    labels: Sequence[str],
    models: Mapping[str, BundledModel],
    recommended: str,
    samples: np.ndarray,
    sample_labels: Sequence[int],
) -> np.ndarray:
    """The samples in their stored dtype, after checking every argument fits the contract."""
    reserved = {MANIFEST, EXAMPLE, README, *SAMPLE_FILES[spec.modality]}
    if not models:
        raise StageError("bundle: no model to bundle")
    for file, model in models.items():
        if Path(file).name != file or not file.endswith(".onnx") or file in reserved:
            raise StageError(f"bundle: model file name {file!r} must be a plain name *.onnx")
        if not Path(model.onnx).is_file():
            raise StageError(f"bundle: model file {model.onnx} does not exist")
    if recommended not in models:
        raise StageError(f"bundle: recommended {recommended!r} is not one of {sorted(models)}")
    if len(labels) < 2:
        raise StageError(f"bundle: need at least 2 labels, got {list(labels)}")
    array = np.asarray(samples)
    if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != spec.shape or not len(array):
        raise StageError(
            f"bundle: samples are {list(array.shape)}, expected [k >= 1, {list(spec.shape)}]"
        )
    if len(sample_labels) != len(array):
        raise StageError(f"bundle: {len(array)} samples but {len(sample_labels)} labels")
    if any(not 0 <= int(k) < len(labels) for k in sample_labels):
        raise StageError(f"bundle: sample labels {list(sample_labels)} outside 0..{len(labels)}")
    stored = array.astype(spec.stored_dtype)
    if array.dtype != stored.dtype and not np.array_equal(stored, array):
        raise StageError(f"bundle: {array.dtype} samples change when stored as {spec.stored_dtype}")
    return np.ascontiguousarray(stored)


def _previous_files(folder: Path) -> set[str]:
    """Plain file names listed by a previous bundle manifest in ``folder`` (none if unreadable)."""
    try:
        old = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        names = old["files"] if old.get("format") == BUNDLE_FORMAT else {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and Path(n).name == n and n != MANIFEST}


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars/arrays unwrapped, tuples as lists, paths
    as strings, non-finite floats as None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return value.as_posix()
    return value


# ---- sample files --------------------------------------------------------------------------


def _write_samples(
    folder: Path, spec: InputSpec, stored: np.ndarray, ids: list[int]
) -> tuple[tuple[str, ...], int]:
    """Write the modality's sample files.

    Returns:
        (the files written, the first being what ``example.py`` classifies by default; how
        many samples that file holds).
    """
    files, first = SAMPLE_FILES[spec.modality], stored[0]
    if spec.modality == "image":
        atomic_write_bytes(
            folder / "samples.npz",
            _npz_bytes({"images": stored, "labels": np.asarray(ids, dtype=np.int64)}),
        )
        if first.shape[0] not in (1, 3):  # no PNG of 2 or 4+ channels; samples.npz has them
            return files[:1], len(stored)
        atomic_write_bytes(folder / "sample.png", png_bytes(first))
        return files, len(stored)
    if spec.modality == "imu":
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, first.astype(np.float32), allow_pickle=False)
        atomic_write_bytes(folder / "sample_window.npy", buffer.getvalue())
        channels = [str(c) for c in spec.raw.get("channels", range(first.shape[0]))]
        atomic_write_bytes(folder / "sample_window.csv", _csv_bytes(first, channels))
        return files, 1
    if spec.modality == "audio":
        rate = float(spec.raw["sample_rate_hz"])
        atomic_write_bytes(folder / "sample.wav", wav_bytes(first, rate))
        return files, 1
    texts = [_decode(row, spec.raw["tokenizer"], i) for i, row in enumerate(stored)]
    atomic_write_bytes(folder / "sample.txt", "".join(f"{t}\n" for t in texts).encode("utf-8"))
    return files, len(stored)


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``np.load``-able .npz with fixed zip timestamps (``np.savez`` stamps the clock)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    """[C, H, W] uint8 (C = 1 grayscale or 3 RGB) -> the bytes of an 8-bit PNG file.

    A minimal writer (stdlib zlib, no filter), so writing a bundle never needs Pillow.
    """
    c, h, w = pixels.shape
    if c not in (1, 3) or pixels.dtype != np.uint8:
        raise StageError(f"PNG needs uint8 [1 or 3, H, W] pixels, got {pixels.dtype} {[c, h, w]}")
    rows = np.ascontiguousarray(pixels.transpose(1, 2, 0)).reshape(h, w * c)
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def wav_bytes(waveform: np.ndarray, sample_rate_hz: float) -> bytes:
    """[T] float waveform in [-1, 1] -> the bytes of a mono PCM16 WAV file (x * 32768)."""
    rate = round(sample_rate_hz)
    if abs(rate - sample_rate_hz) > 1e-6 or rate < 1:
        raise StageError(f"WAV needs a whole sample rate in Hz, got {sample_rate_hz}")
    pcm = np.clip(np.round(np.asarray(waveform, dtype=np.float64) * 32768.0), -32768, 32767)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def _csv_bytes(window: np.ndarray, channels: Sequence[str]) -> bytes:
    """[C, T] -> CSV: a header of channel names, one row per sample, ``%.9g`` values (which
    round-trip float32 exactly)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(channels)
    writer.writerows([f"{v:.9g}" for v in row] for row in window.astype(np.float32).T.tolist())
    return buffer.getvalue().encode("utf-8")


def _decode(ids: np.ndarray, tokenizer: Mapping[str, Any], index: int) -> str:
    """Token ids -> one line of text that tokenises back to them (byte tokenizer: id - 1).

    A multi-byte character cut at ``max_len`` is dropped and line breaks become spaces, so a
    line can tokenise slightly differently from the stored ids in those two cases only.
    """
    if tokenizer.get("type") != "byte":
        raise StageError(f"bundle: cannot write sample text for tokenizer {tokenizer.get('type')}")
    pad = int(tokenizer.get("pad_id", 0))
    data = bytes(int(i) - 1 for i in ids if int(i) != pad)
    text = data.decode("utf-8", "ignore").replace("\r", " ").replace("\n", " ")
    if not text.strip():
        raise StageError(f"bundle: text sample {index} is empty")
    return text
