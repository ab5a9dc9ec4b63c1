"""The ``example.py`` program of a bundle, one per modality and one for pitch tasks (used by
:mod:`.bundle`).

Plain text, not format strings: each program reads everything it needs (input contract,
labels, models, samples) from the bundle's ``manifest.json`` at run time, needs only numpy
and onnxruntime, and refuses any bad input with one ``error: ...`` line and exit status 1.
A program is a modality's docstring + the shared helpers + the modality's reader
(:mod:`.bundle_readers`) + the entry.
"""

from __future__ import annotations

from edgedistill.export.bundle_readers import READERS

_HEADS = {
    "image": r'''"""Classify images with only numpy and onnxruntime (Pillow only for .png/.jpg files).

    python example.py                      # the bundled samples.npz (true labels printed)
    python example.py images.npy           # uint8 pixels [N, C, H, W], [N, H, W] or [H, W](, C)
    python example.py photo.png            # resized and converted to the model's size and colour
    python example.py images.npy --model model-int8.onnx   # default: the recommended model
    python example.py floats.npy --scale 255   # float pixels in 0..1 (255/65535 for uint16)

Pixels are uint8 0..255; this script applies the manifest's normalisation. Float, 16-bit or
other integer arrays are refused unless --scale says how they map to 0..255 (never guessed).
"""
''',
    "imu": r'''"""Classify windows of raw IMU values with only numpy and onnxruntime.

    python example.py                      # the bundled sample_window.npy (true label printed)
    python example.py window.npy           # [channels, time], [time, channels] or [N, C, T]
    python example.py window.csv           # header = channel names (any order), one row per sample
    python example.py window.csv --model model-int8.onnx   # default: the recommended model

RAW sensor values in manifest.json's units; this script applies (raw - mean) / std itself.
Windows that look like another unit (an accelerometer far from gravity, 9.81 m/s^2 = 1 g;
degrees for radians per second) are refused; --trust-input skips that check.
"""
''',
    "audio": r'''"""Classify a WAV clip with only numpy, onnxruntime and Python's wave module.

    python example.py                      # the bundled sample.wav (true label printed)
    python example.py clip.wav             # any integer-PCM WAV: 16/24/32 bit, any channels
    python example.py clip.wav --model model-int8.onnx     # default: the recommended model

Channels are averaged to mono, other rates resampled, the clip cut or zero-padded to length.
"""
''',
    "pitch": r'''"""Print the pitch track of a WAV file with only numpy, onnxruntime and Python's wave module.

    python example.py                      # the bundled sample.wav (its true pitch printed)
    python example.py song.wav             # any integer-PCM WAV: 16/24/32 bit, any channels
    python example.py song.wav --hop-ms 5  # one line every 5 ms (default 10)
    python example.py song.wav --model model-int8.onnx     # default: the recommended model

One line per frame: time (s), frequency (Hz), confidence (0..1). Channels are averaged to
mono, other rates resampled to the model's. Each 1024-sample frame is centred on its time
(zero-padded at both ends); the model scores 360 pitch bins, decoded as manifest.json's
output.pitch says (softmax, weighted mean of the bins around the best one). Confidence is the
share of the probability near the best bin: low for noise, silence and unpitched sounds.
"""
''',
    "text": r'''"""Classify texts with only numpy and onnxruntime.

    python example.py                      # the bundled sample.txt (true labels printed)
    python example.py "some text to classify"
    python example.py --file texts.txt     # UTF-8, one text per line
    python example.py --file texts.txt --model model-int8.onnx   # default: the recommended model

Tokenised as manifest.json's input.tokenizer says (UTF-8 bytes + 1, padding 0).
"""
''',
}

# Standard-library modules of each program besides the five the shared helpers need.
_IMPORTS = {
    "image": (),
    "imu": ("csv",),
    "audio": ("math", "wave"),
    "pitch": ("math", "wave"),
    "text": (),
}

_COMMON = r'''from pathlib import Path

HERE = Path(__file__).resolve().parent


def fail(message):
    """Refuse with one line on stderr and exit status 1."""
    sys.exit("error: " + " ".join(str(message).split()))


NOTES = []


def note(message):
    """Remember what was done to the input; said on stderr once the input is accepted (a
    refusal stays one line)."""
    NOTES.append("note: " + message)


def say_notes():
    """Print the remembered notes on stderr, one line each."""
    for line in NOTES:
        print(line, file=sys.stderr)
    NOTES.clear()


try:
    import numpy as np
except ImportError:
    fail("this example needs numpy: pip install numpy onnxruntime")


def onnxruntime():
    """The onnxruntime module, imported only when a model runs (--help needs numpy alone)."""
    try:
        import onnxruntime as ort
    except ImportError:
        fail("this example needs onnxruntime: pip install onnxruntime")
    return ort


def read_manifest():
    try:
        manifest = json.loads((HERE / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"cannot read manifest.json next to example.py ({exc})")
    if not all(k in manifest for k in ("input", "labels", "models", "recommended", "samples")):
        fail("manifest.json next to example.py is not an edgedistill bundle manifest")
    return manifest


MANIFEST = read_manifest()
SPEC = MANIFEST["input"]
LABELS = MANIFEST["labels"]


class Parser(argparse.ArgumentParser):
    """argparse that refuses a bad command line with one error line (exit status 1)."""

    def error(self, message):
        fail(message)


def parser(description):
    """The command line of this program: ``description`` and what this bundle holds on top of
    --help, the usage examples of this file's docstring below it."""
    names = LABELS if len(LABELS) <= 12 else [*LABELS[:3], "...", *LABELS[-2:]]
    pitch = (MANIFEST.get("metric") or {}).get("name") == "pitch_rpa"
    kind = "pitch bins" if pitch else "classes"
    about = (
        f"{description} Bundle {MANIFEST.get('name', '')!r}: {len(LABELS)} {kind} "
        f"({', '.join(names)}); input and numbers are described in README.md next to this file."
    )
    examples = (__doc__ or "").strip().partition("\n")[2]
    epilog = (
        "examples (run in the bundle folder):\n"
        + examples.strip("\n")
        + f"\n\nThe bundled sample is {MANIFEST['samples']['default']}; "
        "python example.py with no file classifies it."
    )
    p = Parser(
        description=textwrap.fill(about, 88),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = ", ".join(sorted(MANIFEST["models"]))
    p.add_argument("--model", default=MANIFEST["recommended"], help=f"one of {models}")
    return p


def parse(p):
    args = p.parse_args()
    if args.model not in MANIFEST["models"]:
        choices = sorted(MANIFEST["models"])
        fail(f"--model {args.model} is not in this bundle; choose one of {choices}")
    return args


def input_file(text):
    path = Path(text)
    if path.is_dir():
        fail(f"{path} is a folder; give a file")
    if not path.is_file():
        fail(f"no such file: {path}")
    return path


def bundled_sample():
    """(file, true labels) of the bundled sample(s) the no-argument run classifies."""
    samples = MANIFEST["samples"]
    return HERE / samples["default"], samples["true_labels"]


def prepare(stored):
    """Stored-form samples [N, ...] -> model input, exactly as the training chain did:
    (stored / divisor - mean[c]) / std[c] along axis 1; token ids pass through."""
    if SPEC["dtype"] == "int64":
        return np.ascontiguousarray(stored, dtype=np.int64)
    x = np.asarray(stored, dtype=np.float32)
    norm = SPEC["normalization"]
    if norm["divisor"] != 1:
        x = x / np.float32(norm["divisor"])
    if norm["mean"] is not None:
        view = (1, -1) + (1,) * (x.ndim - 2)
        mean = np.asarray(norm["mean"], dtype=np.float32).reshape(view)
        std = np.asarray(norm["std"], dtype=np.float32).reshape(view)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def run_model(name, x):
    """[N, K] float64 logits of the bundled model ``name`` on model input ``x``."""
    path = HERE / name
    if not path.is_file():
        fail(f"{name} is missing from the bundle folder {HERE}")
    expected = MANIFEST.get("files", {}).get(name)
    if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        fail(f"{name} does not match its sha256 in manifest.json; the bundle is damaged")
    ort = onnxruntime()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = SPEC["name"]
        if isinstance(session.get_inputs()[0].shape[0], int):  # a fixed batch: one at a time
            parts = [session.run(None, {feed: x[i : i + 1]})[0] for i in range(len(x))]
            return np.concatenate(parts).astype(np.float64)
        return session.run(None, {feed: x})[0].astype(np.float64)
    except Exception as exc:  # onnxruntime raises its own exception types
        fail(f"{name}: onnxruntime could not run the model ({exc})")


def show(name, logits, truth=None, names=None):
    """Print the top class of each sample (and every class's probability for one sample)."""
    say_notes()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    print(f"model: {name} ({MANIFEST['models'][name]['precision']})")
    for i, row in enumerate(probs):
        k = int(row.argmax())
        line = f"{LABELS[k]} (p={row[k]:.4f})"
        if truth is not None:
            line += f"; true: {truth[i]}"
        if len(probs) == 1:
            print("predicted: " + line)
        else:
            print(f"{i}: {line}" + (f"  {names[i]}" if names else ""))
    if len(probs) == 1:
        print("probabilities:")
        width = max(len(label) for label in LABELS)
        for k in np.argsort(-probs[0], kind="stable"):
            print(f"  {LABELS[k]:<{width}}  {probs[0, k]:.4f}")
'''

_TAIL = r"""

if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of the input
        sys.stderr.close()
    except Exception as exc:  # a surprise still ends in one line, not a traceback
        fail(f"unexpected {type(exc).__name__}: {exc}")
"""


def _program(modality: str) -> str:
    """The docstring, the sorted imports, the shared helpers, the reader and the entry."""
    modules = sorted(("argparse", "hashlib", "json", "sys", "textwrap", *_IMPORTS[modality]))
    imports = "\n" + "".join(f"import {m}\n" for m in modules)
    parts = (_COMMON, READERS[modality], _TAIL)
    return _HEADS[modality] + imports + "\n\n\n".join(p.strip("\n") for p in parts) + "\n"


EXAMPLES: dict[str, str] = {program: _program(program) for program in _HEADS}
"""Program -> the complete text of the bundle's ``example.py``: one per modality, and
``pitch`` (a pitch track of a WAV file) for pitch tasks."""

PROGRAM_OF_METRIC = {"pitch_rpa": "pitch"}
"""Task metrics whose bundles get their own program instead of their modality's."""


def example_program(modality: str, metric: str = "top1") -> str:
    """The ``example.py`` text of a bundle of ``modality`` scored with ``metric``."""
    return EXAMPLES[PROGRAM_OF_METRIC.get(metric, modality)]
