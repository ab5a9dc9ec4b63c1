"""The input contract and the app-ready folder of a deployed IMU classifier.

:class:`ImuInputSpec` is what an app must feed the model; :func:`write_imu_bundle` (called by
:func:`edgedistill.imu_deploy.deploy_imu_classifier`) mirrors the image bundle of
:mod:`edgedistill.deliver`: the models, a ``manifest.json`` with the sha256 of every file,
and an ``example.py`` that needs only numpy and onnxruntime. The models take *normalised*
windows, so the manifest carries the complete contract (channel order, units, sample rate,
window and stride, per-channel normalisation) and the example applies it to raw windows.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedistill.artifacts import (
    atomic_copy,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from edgedistill.data.imu import ImuDataset, ImuNormalization, samples_of
from edgedistill.data.paired import PairedWindows
from edgedistill.errors import DataError
from edgedistill.export.onnx import INPUT_NAME

LAYOUT = "[batch, channels, time]"


@dataclass(frozen=True)
class ImuInputSpec:
    """What a deployed IMU model expects: the contract an app must honour.

    Attributes:
        channels: Channel names, in the order of axis C.
        units: Unit of each channel's raw values (e.g. "m/s^2", "rad/s").
        sample_rate_hz: Samples per second of every channel.
        window_s: Window length in seconds (a whole number of samples).
        stride_s: Step between consecutive window starts in seconds (a whole number of samples).
        mean: [C] per-channel mean of the raw training windows (units of the channel).
        std: [C] per-channel standard deviation (> 0); model input = (raw - mean) / std.
        classes: Class names; logit k is ``classes[k]``.

    Raises:
        DataError: when lengths disagree, a std is not > 0, a statistic is not finite, names
            repeat, or the window or stride is not a whole number of samples.
    """

    channels: tuple[str, ...]
    units: tuple[str, ...]
    sample_rate_hz: float
    window_s: float
    stride_s: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        try:
            for name in ("channels", "units", "classes"):
                object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
            for name in ("mean", "std"):
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            object.__setattr__(self, "sample_rate_hz", float(self.sample_rate_hz))
            object.__setattr__(self, "window_s", float(self.window_s))
            object.__setattr__(self, "stride_s", float(self.stride_s))
        except (TypeError, ValueError) as exc:
            raise DataError(f"IMU input spec: {exc}") from None
        c = len(self.channels)
        if c == 0:
            raise DataError("IMU input spec: no channels")
        if len(set(self.channels)) != c or any(not n.strip() for n in self.channels):
            raise DataError(
                "IMU input spec: channel names must be unique and non-empty, got "
                f"{list(self.channels)}"
            )
        for name in ("units", "mean", "std"):
            if len(getattr(self, name)) != c:
                raise DataError(
                    f"IMU input spec: {c} channels but {len(getattr(self, name))} {name} values"
                )
        for i, (m, s) in enumerate(zip(self.mean, self.std, strict=True)):
            if not math.isfinite(m) or not math.isfinite(s) or s <= 0:
                raise DataError(
                    f"IMU input spec: channel '{self.channels[i]}' needs a finite mean and a std "
                    f"> 0, got mean {m} and std {s}"
                )
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DataError(
                f"IMU input spec: need >= 2 unique class names, got {list(self.classes)}"
            )
        if not math.isfinite(self.sample_rate_hz) or self.sample_rate_hz <= 0:
            raise DataError(
                f"IMU input spec: sample_rate_hz must be > 0, got {self.sample_rate_hz}"
            )
        samples_of(self.window_s, self.sample_rate_hz, "IMU input spec window_s")
        samples_of(self.stride_s, self.sample_rate_hz, "IMU input spec stride_s")

    @property
    def window_samples(self) -> int:
        """T: samples per channel in one window."""
        return samples_of(self.window_s, self.sample_rate_hz, "window_s")

    @property
    def stride_samples(self) -> int:
        """Samples between consecutive window starts."""
        return samples_of(self.stride_s, self.sample_rate_hz, "stride_s")

    @property
    def input_shape(self) -> tuple[int, int]:
        """(C, T) of one window."""
        return len(self.channels), self.window_samples

    @property
    def normalization(self) -> ImuNormalization:
        """The per-channel standardisation as the data module's type."""
        return ImuNormalization(self.mean, self.std)

    @classmethod
    def from_paired(cls, paired: PairedWindows, normalization: ImuNormalization) -> ImuInputSpec:
        """The spec of ``paired``'s IMU stream with statistics from its training split."""
        spec = cls(
            channels=paired.imu_channels,
            units=paired.imu_units,
            sample_rate_hz=paired.imu_rate_hz,
            window_s=paired.window_s,
            stride_s=paired.stride_s,
            mean=normalization.mean,
            std=normalization.std,
            classes=paired.classes,
        )
        if paired.imu.shape[2] != spec.window_samples:
            raise DataError(
                f"paired IMU windows have {paired.imu.shape[2]} samples, but {paired.window_s:g} "
                f"s at {paired.imu_rate_hz:g} Hz is {spec.window_samples}"
            )
        return spec

    @classmethod
    def from_dataset(cls, dataset: ImuDataset) -> ImuInputSpec:
        """The spec of an :class:`ImuDataset` (statistics of its training split)."""
        norm = dataset.normalization
        return cls(
            dataset.channels,
            dataset.units,
            dataset.sample_rate_hz,
            dataset.window_s,
            dataset.stride_s,
            norm.mean,
            norm.std,
            dataset.labels,
        )

    def as_dict(self) -> dict[str, Any]:
        """The complete contract, as written to the bundle's manifest (``input``)."""
        c, t = self.input_shape
        return {
            "name": INPUT_NAME,
            "layout": LAYOUT,
            "shape": ["batch", c, t],
            "dtype": "float32",
            "channels": list(self.channels),
            "units": list(self.units),
            "sample_rate_hz": self.sample_rate_hz,
            "window_s": self.window_s,
            "window_samples": t,
            "stride_s": self.stride_s,
            "stride_samples": self.stride_samples,
            "normalization": {
                "formula": "input[c, t] = (raw[c, t] - mean[c]) / std[c]",
                "mean": list(self.mean),
                "std": list(self.std),
                "applied_by": "the caller (the models take normalised input; see example.py)",
            },
            "classes": list(self.classes),
        }


BUNDLE_FORMAT = "edgedistill-imu-bundle/1"
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
SAMPLE_NPY = "sample_window.npy"
SAMPLE_CSV = "sample_window.csv"

# Plain text, not a format string: the script reads everything it needs from manifest.json.
EXAMPLE = '''"""Classify one raw IMU window with only numpy and onnxruntime.

    python example.py                          # the bundled sample_window.npy
    python example.py window.npy               # [channels, time] or [time, channels]
    python example.py window.csv               # header = channel names, one row per sample
    python example.py window.csv --model model.onnx   # default: the recommended model

The window holds RAW sensor values in the units listed in manifest.json. The models expect
normalised input, so this script applies (raw - mean) / std per channel with the manifest's
statistics before running the model.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent


def fail(message):
    sys.exit(f"error: {message}")


def read_csv(path, channels):
    """[C, T] from a CSV whose header names the channels (any order) and rows are samples."""
    with open(path, newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    if not rows:
        fail(f"{path.name} is empty; expected a header row naming the channels {channels}")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in channels if name not in header]
    unknown = [name for name in header if name not in channels]
    if missing or unknown or len(header) != len(channels):
        fail(
            f"{path.name}: header {header} does not name the model's {len(channels)} "
            f"channels {channels} (missing {missing}, unknown {unknown})"
        )
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            fail(f"{path.name} line {line}: {len(row)} values, expected {len(header)}")
        try:
            values.append([float(v) for v in row])
        except ValueError:
            fail(f"{path.name} line {line}: not a number in {row}")
    if not values:
        fail(f"{path.name} has a header but no samples")
    table = np.asarray(values, dtype=np.float64)
    return table[:, [header.index(name) for name in channels]].T


def read_npy(path, n_channels):
    """[C, T] from a .npy holding [C, T] or [T, C] (told apart by the channel count)."""
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        fail(f"{path.name}: expected a 2-D numeric array, got {array.dtype} {list(array.shape)}")
    if array.shape[0] == n_channels:  # [C, T], the documented layout, wins a tie
        return array
    if array.shape[1] == n_channels:  # [T, C]
        return array.T
    fail(
        f"{path.name}: shape {list(array.shape)} has no axis of {n_channels} channels; "
        f"expected [{n_channels}, T] or [T, {n_channels}]"
    )


def main():
    manifest = json.loads((HERE / "manifest.json").read_text())
    spec = manifest["input"]
    parser = argparse.ArgumentParser(description="Classify one raw IMU window.")
    parser.add_argument("window", nargs="?", default=str(HERE / manifest["sample"]["npy"]))
    models = sorted(manifest["models"])
    parser.add_argument("--model", default=manifest["recommended"], choices=models)
    args = parser.parse_args()

    path = Path(args.window)
    if not path.is_file():
        fail(f"no such file: {path}")
    channels, samples = spec["channels"], spec["window_samples"]
    if path.suffix.lower() == ".csv":
        window = read_csv(path, channels)
    elif path.suffix.lower() == ".npy":
        window = read_npy(path, len(channels))
    else:
        fail(f"{path.name}: expected a .npy or .csv file")
    if window.shape[1] != samples:
        fail(
            f"{path.name}: the window has {window.shape[1]} samples per channel; the model needs "
            f"exactly {samples} ({spec['window_s']} s at {spec['sample_rate_hz']} Hz)"
        )
    window = window.astype(np.float32)
    if not np.isfinite(window).all():
        fail(f"{path.name}: the window contains NaN or infinite values")

    mean = np.asarray(spec["normalization"]["mean"], dtype=np.float32).reshape(-1, 1)
    std = np.asarray(spec["normalization"]["std"], dtype=np.float32).reshape(-1, 1)
    x = ((window - mean) / std)[None].astype(np.float32)  # [1, C, T]

    session = ort.InferenceSession(str(HERE / args.model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {spec["name"]: x})[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    classes = spec["classes"]
    print(f"model: {args.model} ({manifest['models'][args.model]['precision']})")
    print(f"activity: {classes[int(probs.argmax())]}")
    print("probabilities:")
    for k in np.argsort(-probs):
        print(f"  {classes[k]:<24} {probs[k]:.4f}")


if __name__ == "__main__":
    main()
'''


def _readme(spec: ImuInputSpec, manifest: dict[str, Any]) -> str:
    """The bundle's README.md: how to run the example and what the models expect."""
    sample = manifest["sample"]
    lines = [
        "# IMU activity classifier",
        "",
        f"Classifies one window of raw IMU data ({len(spec.channels)} channels x "
        f"{spec.window_samples} samples = {spec.window_s:g} s at {spec.sample_rate_hz:g} Hz) "
        f"as one of: {', '.join(spec.classes)}.",
        "",
        "## Run the example",
        "",
        "Needs only numpy and onnxruntime (`pip install numpy onnxruntime`):",
        "",
        "```",
        f"python example.py                     # bundled {SAMPLE_NPY} (true: {sample['label']})",
        f"python example.py {SAMPLE_CSV}",
        "python example.py my_window.npy       # [channels, time] or [time, channels]",
        f"python example.py my_window.csv --model {FP32_FILE}",
        "```",
        "",
        "It prints the predicted activity and the probability of every class. A window with the "
        "wrong number of samples or channels is refused with a message (exit status 1).",
        "",
        "## Input",
        "",
        "Raw values, one column per channel, in this order and these units:",
        "",
        "| # | channel | unit | mean | std |",
        "|---|---|---|---|---|",
    ]
    for i, (name, unit, m, s) in enumerate(
        zip(spec.channels, spec.units, spec.mean, spec.std, strict=True)
    ):
        lines.append(f"| {i} | {name} | {unit} | {m:.6g} | {s:.6g} |")
    lines += [
        "",
        f"The models take float32 `[batch, channels, time]` = `[N, {len(spec.channels)}, "
        f"{spec.window_samples}]` **normalised** per channel: `(raw - mean) / std`. They do not "
        "normalise themselves; `example.py` shows how. Windows are "
        f"{spec.window_s:g} s ({spec.window_samples} samples); consecutive windows start "
        f"{spec.stride_s:g} s ({spec.stride_samples} samples) apart. The output `logits` "
        "[N, classes] are unnormalised scores in the order of `input.classes` in manifest.json.",
        "",
        "## Models",
        "",
        "| file | precision | top-1 % (test windows) | p50 ms | p99 ms (batch 1) |",
        "|---|---|---|---|---|",
    ]
    for name, entry in manifest["models"].items():
        lat = entry["latency_ms_batch1"]
        lines.append(
            f"| {name} | {entry['precision']} | {entry['top1']:.2f} | {lat['p50']:.4f} | "
            f"{lat['p99']:.4f} |"
        )
    lines += [
        "",
        f"Recommended: `{manifest['recommended']}` ({manifest['recommended_reason']}).",
        "",
        "manifest.json holds the full input contract, the metrics, the latency environment and "
        "the sha256 of every file.",
        "",
    ]
    return "\n".join(lines)


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_save(path, write)


def _write_csv(path: Path, window: np.ndarray, channels: tuple[str, ...]) -> None:
    """[C, T] -> CSV with a header of channel names and one row per sample.

    Values are written with 9 significant digits, which round-trips float32 exactly.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(channels)
    writer.writerows([f"{v:.9g}" for v in row] for row in window.T.tolist())
    atomic_write_text(path, buffer.getvalue())


def write_imu_bundle(
    folder: Path,
    *,
    spec: ImuInputSpec,
    fp32_onnx: Path,
    int8_onnx: Path,
    models: dict[str, dict[str, Any]],
    recommended: str,
    recommended_reason: str,
    sample_window: np.ndarray,
    sample: dict[str, Any],
    metrics: dict[str, Any],
    latency: dict[str, Any],
) -> dict[str, Any]:
    """Write the bundle into ``folder``; ``manifest.json`` last, so its presence means done.

    Args:
        folder: Destination (created if needed; files are replaced atomically).
        spec: The input contract, written in full as ``manifest["input"]``.
        fp32_onnx: Verified FP32 model (normalised input), copied to ``model.onnx``.
        int8_onnx: Verified INT8 QDQ model, copied to ``model-int8.onnx``.
        models: Per bundled file name: precision, top1 and ``latency_ms_batch1`` (p50/p90/p99).
        recommended: The bundled file an app should load.
        recommended_reason: One line saying why.
        sample_window: [C, T] raw float32 window, saved as .npy ([C, T]) and .csv ([T, C]).
        sample: What to record about the sample (test index, true label, predictions).
        metrics: Accuracy, parity, size and MACs figures.
        latency: Batch-1 latency per runtime, speed ratios and the environment.

    Returns:
        The manifest that was written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    atomic_copy(fp32_onnx, folder / FP32_FILE)
    atomic_copy(int8_onnx, folder / INT8_FILE)
    window = np.ascontiguousarray(sample_window, dtype=np.float32)
    _write_npy(folder / SAMPLE_NPY, window)
    _write_csv(folder / SAMPLE_CSV, window, spec.channels)
    atomic_write_text(folder / "example.py", EXAMPLE)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "task": "activity classification of one IMU window",
        "recommended": recommended,
        "recommended_reason": recommended_reason,
        "models": models,
        "input": spec.as_dict(),
        "output": {
            "name": "logits",
            "shape": ["batch", len(spec.classes)],
            "meaning": "unnormalised class scores in the order of input.classes; argmax = "
            "predicted activity",
        },
        "classes": list(spec.classes),
        "metrics": metrics,
        "latency": latency,
        "sample": {"npy": SAMPLE_NPY, "csv": SAMPLE_CSV, **sample},
    }
    atomic_write_text(folder / "README.md", _readme(spec, manifest))
    names = [FP32_FILE, INT8_FILE, "example.py", SAMPLE_NPY, SAMPLE_CSV, "README.md"]
    manifest["files"] = {name: sha256_file(folder / name) for name in names}
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest
