"""The bundle's ``README.md``, generated from its manifest (so the two never disagree):
what the model does, how to run ``example.py``, the input contract per modality (or for a
pitch task), and the models with their metric and latency. Used by :mod:`.bundle`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(float(value), spec)


def _dims(shape: Sequence[Any]) -> str:
    """["N", 1, 28, 28] -> "[N, 1, 28, 28]"."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _contract(manifest: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
    """(what one sample is, how to run example.py, input-contract lines) per modality."""
    spec, samples = manifest["input"], manifest["samples"]
    norm, shape = spec["normalization"], _dims(spec["shape"])
    truth = samples["true_labels"]
    told = f"true: {truth[0]}" if len(truth) == 1 else f"true: {', '.join(truth)}"
    run = f"python example.py                        # bundled {samples['default']} ({told})"
    other = sorted(f for f in manifest["models"] if f != manifest["recommended"])
    choose = f"--model {other[0]}" if other else f"--model {manifest['recommended']}"
    modality = manifest["modality"]
    if modality == "image":
        c, h, w = spec["shape"][1:]
        what = f"one {h}x{w} {spec['color']} image"
        runs = [
            run,
            "python example.py sample.png             # any .png/.jpg (needs Pillow; resized)",
            f"python example.py images.npy {choose}   # uint8 [N, {c}, {h}, {w}]",
            "python example.py floats.npy --scale 255 # float pixels in 0..1 (never guessed)",
        ]
        names = ["gray"] if c == 1 else ["R", "G", "B"] if c == 3 else [str(i) for i in range(c)]
        lines = [
            f"Pixels are uint8 0..255, {spec['color']}, {h}x{w} (HxW). The model takes float32 "
            f"`{spec['layout']}` = `{shape}`: `{norm['formula']}`; example.py applies it.",
            "",
            "| channel | mean | std |",
            "|---|---|---|",
            *(
                f"| {n} | {_num(m, '.6g')} | {_num(s, '.6g')} |"
                for n, m, s in zip(
                    names, norm["mean"] or [None] * c, norm["std"] or [None] * c, strict=True
                )
            ),
            "",
            "example.py refuses anything else in one line: float, 16-bit or other integer "
            "arrays unless `--scale` says how they map to 0..255 (`--scale 255` for floats in "
            "0..1, `--scale 255/65535` for uint16; scaled values outside 0..255 are refused), "
            "NaN or infinite values, an empty batch, another shape, 16-bit pictures, files "
            "that are not numpy arrays or pictures.",
        ]
    elif modality == "imu":
        channels, units = spec["channels"], spec["units"]
        what = (
            f"one window of raw IMU values ({len(channels)} channels x {spec['window_samples']} "
            f"samples = {spec['window_s']:g} s at {spec['sample_rate_hz']:g} Hz)"
        )
        runs = [
            run,
            "python example.py sample_window.csv      # header = channel names, any order",
            f"python example.py window.npy {choose}   # [channels, time] or [time, channels]",
        ]
        mean = norm["mean"] or [None] * len(channels)
        std = norm["std"] or [None] * len(channels)
        lines = [
            "Raw values, one column per channel, in these units; the model takes float32 "
            f"`{spec['layout']}` = `{shape}` **normalised** per channel: `{norm['formula']}` "
            "(example.py applies it). Consecutive windows start "
            f"{spec['stride_s']:g} s ({spec['stride_samples']} samples) apart.",
            "",
            "| # | channel | unit | mean | std |",
            "|---|---|---|---|---|",
            *(
                f"| {i} | {n} | {u} | {_num(m, '.6g')} | {_num(s, '.6g')} |"
                for i, (n, u, m, s) in enumerate(zip(channels, units, mean, std, strict=True))
            ),
            "",
            "example.py refuses in one line: windows of another length or channel count, NaN "
            "or infinite values, values that look like another unit (an accelerometer whose "
            "median magnitude is far from gravity, 9.81 m/s^2 = 1 g; angular rates that look "
            "like deg/s given for rad/s or the reverse) and values 1000 training standard "
            "deviations from the mean. `--trust-input` skips the unit and range checks.",
        ]
    elif modality == "audio":
        what = f"one {spec['clip_s']:g} s mono clip at {spec['sample_rate_hz']:g} Hz"
        runs = [run, f"python example.py clip.wav {choose}   # any integer-PCM WAV"]
        lines = [
            "| property | value |",
            "|---|---|",
            f"| sample rate | {spec['sample_rate_hz']:g} Hz |",
            f"| clip length | {spec['clip_s']:g} s ({spec['shape'][-1]} samples) |",
            "| channels | mono (example.py averages channels) |",
            f"| model input | float32 `{spec['layout']}` = `{shape}`: PCM16 / 32768 in [-1, 1] |",
            "",
            "Other sample rates are resampled (band-limited); longer clips are cut around their "
            "centre, shorter ones zero-padded at the end, exactly as in training.",
        ]
    else:
        tok = spec["tokenizer"]
        what = f"one UTF-8 text (the first {tok['max_len']} bytes)"
        runs = [
            run,
            'python example.py "a text to classify"',
            f"python example.py --file texts.txt {choose}   # one text per line",
        ]
        lines = [
            "| property | value |",
            "|---|---|",
            f"| tokenizer | {tok['type']}: id = UTF-8 byte + 1, padding {tok['pad_id']} |",
            f"| lowercase | {'ASCII A-Z -> a-z first' if tok['lowercase'] else 'no'} |",
            f"| max_len | {tok['max_len']} (longer texts are cut) |",
            f"| model input | int64 `{spec['layout']}` = `{shape}` |",
            "",
            f"Rule: {tok['rule']}",
        ]
    return what, runs, lines


def _pitch_contract(manifest: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
    """(what the model does, how to run example.py, input lines) of a pitch task's bundle."""
    spec, grid = manifest["input"], manifest["output"]["pitch"]
    rate, window = spec["sample_rate_hz"], spec["shape"][-1]
    labels = manifest["labels"]
    told = ", ".join(manifest["samples"]["true_labels"])
    what = (
        f"Estimates the pitch (f0) of {rate:g} Hz audio, one {window}-sample frame "
        f"({1000 * window / rate:g} ms) at a time: {grid['bins']} pitch bins "
        f"{grid['cents_per_bin']:g} cents apart ({labels[0]} .. {labels[-1]}), decoded to Hz "
        f"and a confidence. Trained on {manifest['dataset']}."
    )
    runs = [
        f"python example.py                        # bundled {manifest['samples']['default']} "
        f"(true: {told})",
        "python example.py song.wav               # any integer-PCM WAV (16/24/32 bit)",
        "python example.py song.wav --hop-ms 5    # a line every 5 ms (default 10)",
    ]
    lines = [
        "| property | value |",
        "|---|---|",
        f"| sample rate | {rate:g} Hz (example.py resamples other rates) |",
        f"| frame | {window} samples, centred on its time; float32 `{spec['layout']}` = "
        f"`{_dims(spec['shape'])}` |",
        "| level | any gain: the model normalises each frame to zero mean, unit std |",
        "| channels | mono (example.py averages channels) |",
        "",
        f"Decoding: {grid['rule']}.",
    ]
    return what, runs, lines


def _models_table(manifest: Mapping[str, Any]) -> list[str]:
    """The models with their metric on the test split and batch-1 latency."""
    from edgedistill.tasks.task import METRICS

    metric = METRICS[(manifest.get("metric") or {}).get("name", "top1")]
    lines = [
        f"| file | precision | model | {metric.header} (test split) | p50 ms | p99 ms (batch 1) |",
        "|---|---|---|---|---|---|",
    ]
    for file, entry in manifest["models"].items():
        latency = entry["latency_ms_batch1"] or {}
        runtime = "onnxruntime" if "onnxruntime" in latency else next(iter(latency), None)
        ms = latency.get(runtime, {}) if runtime else {}
        where = f" ({runtime})" if runtime else ""
        lines.append(
            f"| {file} | {entry['precision']} | {entry['source']} | {_num(entry['top1'], '.2f')} "
            f"| {_num(ms.get('p50'), '.4f')}{where} | {_num(ms.get('p99'), '.4f')} |"
        )
    return lines


def readme(manifest: Mapping[str, Any]) -> str:
    """The bundle's README.md, generated from the manifest (so the two never disagree)."""
    pitch = (manifest.get("metric") or {}).get("name") == "pitch_rpa"
    if pitch:
        intro, runs, contract = _pitch_contract(manifest)
        title = "pitch estimator"
        prints = "It prints one line per frame: time (s), frequency (Hz), confidence (0..1)."
    else:
        what, runs, contract = _contract(manifest)
        labels = manifest["labels"]
        title = f"{manifest['modality']} classifier"
        intro = (
            f"Classifies {what} as one of {len(labels)} classes: {', '.join(labels)}. "
            f"Trained on {manifest['dataset']}."
        )
        prints = (
            "It prints the predicted class (and every class's probability for a single sample)."
        )
    lines = [
        f"# {manifest['name']}: {title}",
        "",
        intro,
        "",
        "## Run the example",
        "",
        "Needs only numpy and onnxruntime (`pip install numpy onnxruntime`):",
        "",
        "```",
        *runs,
        "```",
        "",
        f"{prints} Bad input is refused with one `error:` line and exit status 1.",
        "",
        "## Input",
        "",
        *contract,
        "",
        f"Output `{manifest['output']['name']}` `{_dims(manifest['output']['shape'])}`: "
        f"{manifest['output']['meaning']}.",
        "",
        "## Models",
        "",
        *_models_table(manifest),
        "",
        f"Recommended: `{manifest['recommended']}`: {manifest['recommended_reason']}.",
        "",
        "`manifest.json` holds the complete input contract (`input`), the labels, metrics, "
        "latency and the sha256 of every file.",
        "",
    ]
    return "\n".join(lines)
