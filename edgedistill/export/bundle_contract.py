"""The per-modality parts of a bundle's README (used by :mod:`.bundle_readme`): the
``example.py`` commands on the bundled sample files, how to make input by hand, and the input
contract (layout, dtype, units, value range, sample rate / window, image size and colour, text
encoding and length, and the normalisation example.py applies), all read from the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Parts = tuple[str, list[str], list[str], list[str]]
"""(what one sample is, example.py commands, input-by-hand lines, input-contract lines)."""


def num(value: Any, spec: str) -> str:
    """A number in ``spec`` format, "-" for None."""
    return "-" if value is None else format(float(value), spec)


def dims(shape: Sequence[Any]) -> str:
    """["N", 1, 28, 28] -> "[N, 1, 28, 28]"."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _run_lines(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(the no-argument command with its bundled sample, ``--model <the other file>``)."""
    samples = manifest["samples"]
    truth = ", ".join(samples["true_labels"])
    run = f"python example.py                        # bundled {samples['default']} (true: {truth})"
    other = sorted(f for f in manifest["models"] if f != manifest["recommended"])
    return run, f"--model {other[0] if other else manifest['recommended']}"


def _image(manifest: Mapping[str, Any]) -> Parts:
    spec, norm = manifest["input"], manifest["input"]["normalization"]
    run, choose = _run_lines(manifest)
    c, h, w = spec["shape"][1:]
    files = manifest["samples"]["files"]
    what = f"one {h}x{w} {spec['color']} image"
    runs = [run, f"python example.py samples.npz {choose}"]
    if "sample.png" in files:
        runs.append("python example.py sample.png             # the first sample as a picture")
    runs += [
        "python example.py photo.jpg              # any .png/.jpg (needs Pillow; resized)",
        f"python example.py images.npy             # uint8 [N, {c}, {h}, {w}] (or channels last)",
        "python example.py floats.npy --scale 255 # float pixels in 0..1 (never guessed)",
    ]
    pixel = f"({h}, {w})" if c == 1 else f"({h}, {w}, {c})" if c == 3 else f"({c}, {h}, {w})"
    own = [
        "Pixels you make yourself work too, e.g. a mid-grey image:",
        "",
        "```",
        f"python -c \"import numpy as np; np.save('mine.npy', np.full({pixel}, 128, np.uint8))\"",
        "python example.py mine.npy",
        "```",
    ]
    names = ["gray"] if c == 1 else ["R", "G", "B"] if c == 3 else [str(i) for i in range(c)]
    lines = [
        "| property | value |",
        "|---|---|",
        f"| raw input | uint8 pixels 0..255, {spec['color']}, {h}x{w} (HxW); pictures are "
        "converted and resized by example.py |",
        f"| layout | `{spec['layout']}` = `{dims(spec['shape'])}` (example.py also takes "
        "[N, H, W, C], [H, W, C] and, for one channel, [N, H, W] / [H, W]) |",
        f"| model input | float32 `{dims(spec['shape'])}`: `{norm['formula']}`, applied by "
        "example.py |",
        "",
        "| channel | mean | std |",
        "|---|---|---|",
        *(
            f"| {n} | {num(m, '.6g')} | {num(s, '.6g')} |"
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
    return what, runs, own, lines


def _imu(manifest: Mapping[str, Any]) -> Parts:
    spec, norm = manifest["input"], manifest["input"]["normalization"]
    run, choose = _run_lines(manifest)
    channels, units = spec["channels"], spec["units"]
    rate, samples = spec["sample_rate_hz"], spec["window_samples"]
    what = (
        f"one window of raw IMU values ({len(channels)} channels x {samples} "
        f"samples = {spec['window_s']:g} s at {rate:g} Hz)"
    )
    runs = [
        run,
        "python example.py sample_window.csv      # the same window as CSV",
        f"python example.py sample_window.npy {choose}",
        "python example.py window.npy             # [channels, time], [time, channels] or "
        "[N, channels, time]",
    ]
    own = [
        "A CSV you write by hand works too: a header line naming the channels (any order, "
        f"extra columns ignored), then exactly {samples} lines of comma-separated values in "
        f"the units below, one line per sample ({1 / rate:g} s apart):",
        "",
        "```",
        ",".join(channels),
        ",".join(
            f"{m:.4g}" if m is not None else "0" for m in (norm["mean"] or [0.0] * len(channels))
        ),
        f"... ({samples} lines in all)",
        "```",
    ]
    mean = norm["mean"] or [None] * len(channels)
    std = norm["std"] or [None] * len(channels)
    lines = [
        "| property | value |",
        "|---|---|",
        f"| raw input | one window: {len(channels)} channels x {samples} samples, in the units "
        "below (not normalised) |",
        f"| sample rate | {rate:g} Hz; window {spec['window_s']:g} s; windows start "
        f"{spec['stride_s']:g} s ({spec['stride_samples']} samples) apart |",
        f"| model input | float32 `{spec['layout']}` = `{dims(spec['shape'])}`, normalised per "
        f"channel: `{norm['formula']}`, applied by example.py |",
        "",
        "| # | channel | unit | mean | std |",
        "|---|---|---|---|---|",
        *(
            f"| {i} | {n} | {u} | {num(m, '.6g')} | {num(s, '.6g')} |"
            for i, (n, u, m, s) in enumerate(zip(channels, units, mean, std, strict=True))
        ),
        "",
        "example.py refuses in one line: windows of another length or channel count, NaN "
        "or infinite values, values that look like another unit (an accelerometer whose "
        "median magnitude is far from gravity, 9.81 m/s^2 = 1 g; angular rates that look "
        "like deg/s given for rad/s or the reverse) and values 1000 training standard "
        "deviations from the mean. `--trust-input` skips the unit and range checks.",
    ]
    return what, runs, own, lines


def _audio(manifest: Mapping[str, Any]) -> Parts:
    spec = manifest["input"]
    run, choose = _run_lines(manifest)
    rate = spec["sample_rate_hz"]
    what = f"one {spec['clip_s']:g} s mono clip at {rate:g} Hz"
    runs = [
        run,
        f"python example.py sample.wav {choose}",
        "python example.py clip.wav               # any 16/24/32-bit integer-PCM WAV",
    ]
    own = [
        "Your own recording works too; convert other formats with e.g. "
        f"`ffmpeg -i IN -ac 1 -ar {rate:g} -c:a pcm_s16le clip.wav`.",
    ]
    lines = [
        "| property | value |",
        "|---|---|",
        "| raw input | a WAV file, 16/24/32-bit integer PCM, any channels (averaged to mono) |",
        f"| sample rate | {rate:g} Hz |",
        "| other rates | resampled by example.py (band-limited, as in training) |",
        f"| clip length | {spec['clip_s']:g} s ({spec['shape'][-1]} samples); longer clips are "
        "cut around their centre, shorter ones zero-padded at the end, as in training |",
        f"| model input | float32 `{spec['layout']}` = `{dims(spec['shape'])}`: PCM / full "
        "scale, in [-1, 1] (PCM16 / 32768); any front end (e.g. log-mel) is inside the model |",
    ]
    return what, runs, own, lines


def _text(manifest: Mapping[str, Any]) -> Parts:
    spec = manifest["input"]
    run, choose = _run_lines(manifest)
    tok = spec["tokenizer"]
    what = f"one UTF-8 text (the first {tok['max_len']} bytes)"
    runs = [
        run,
        f"python example.py --file sample.txt {choose}",
        "python example.py --file texts.txt       # UTF-8, one text per line",
    ]
    own = [
        'Any text you type works too: `python example.py "a text to classify"`.',
    ]
    lines = [
        "| property | value |",
        "|---|---|",
        "| raw input | UTF-8 text, one text per call or per line of `--file` |",
        f"| tokenizer | {tok['type']}: id = UTF-8 byte + 1, padding {tok['pad_id']} |",
        f"| lowercase | {'ASCII A-Z -> a-z first' if tok['lowercase'] else 'no'} |",
        f"| max_len | {tok['max_len']} bytes (longer texts are cut; shorter ones padded) |",
        f"| model input | int64 token ids `{spec['layout']}` = `{dims(spec['shape'])}` |",
        "",
        f"Rule: {tok['rule']}",
    ]
    return what, runs, own, lines


def contract(manifest: Mapping[str, Any]) -> Parts:
    """(what one sample is, example.py commands, input-by-hand lines, input-contract lines)
    of a classifier bundle, per modality."""
    modality = manifest["modality"]
    build = {"image": _image, "imu": _imu, "audio": _audio}.get(modality, _text)
    return build(manifest)


def pitch_contract(manifest: Mapping[str, Any]) -> Parts:
    """(what the model does, example.py commands, input-by-hand lines, input lines) of a
    pitch task's bundle."""
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
    other = sorted(f for f in manifest["models"] if f != manifest["recommended"])
    choose = f" --model {other[0]}" if other else ""
    runs = [
        f"python example.py                        # bundled {manifest['samples']['default']} "
        f"(true: {told})",
        f"python example.py sample.wav --hop-ms 5{choose}   # a line every 5 ms (default 10)",
        "python example.py song.wav               # any integer-PCM WAV (16/24/32 bit)",
    ]
    own = [
        "Your own recording works too; convert other formats with e.g. "
        f"`ffmpeg -i IN -ac 1 -ar {rate:g} -c:a pcm_s16le song.wav`.",
    ]
    lines = [
        "| property | value |",
        "|---|---|",
        "| raw input | a WAV file, 16/24/32-bit integer PCM, any length, any channels "
        "(averaged to mono) |",
        f"| sample rate | {rate:g} Hz (example.py resamples other rates) |",
        f"| frame | {window} samples, centred on its time; float32 `{spec['layout']}` = "
        f"`{dims(spec['shape'])}` in [-1, 1] |",
        "| level | any gain: the model normalises each frame to zero mean, unit std |",
        "",
        f"Decoding: {grid['rule']}.",
    ]
    return what, runs, own, lines
