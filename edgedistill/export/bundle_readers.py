"""The modality-specific part of a bundle's ``example.py``: how raw input of each modality
(pictures or uint8 arrays, IMU CSV/npy windows, WAV clips, texts) becomes the model's stored
form, and each program's ``main``. Plain text, joined with the shared helpers by
:mod:`.bundle_examples`.
"""

from __future__ import annotations

from edgedistill.export.bundle_image import IMAGE
from edgedistill.export.bundle_imu import IMU

_ARRAYS = r'''

def load_numpy(path):
    """The array (or .npz archive) in ``path``; anything else is refused in one line naming
    the file: another kind of file, a damaged one, or pickled Python objects."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        fail(f"{path.name}: cannot read the file ({exc.strerror or exc})")
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        fail(f"{path.name} is not a numpy .npy/.npz file (save arrays with np.save)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            fail(
                f"{path.name} holds Python objects (dtype=object), not numbers; save a numeric "
                "array, e.g. np.save(path, np.asarray(x, dtype=np.float32))"
            )
        fail(f"{path.name}: not a readable numpy file ({exc})")
    except Exception as exc:
        fail(f"{path.name}: not a readable numpy file ({exc})")


def numeric(array):
    """Whether ``array`` is a numpy array of integers or real floats (not bool, complex,
    strings or objects)."""
    return isinstance(array, np.ndarray) and (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    )


def refuse_non_finite(values, name, axes, labels=None):
    """Refuse NaN or infinite values, saying how many and where the first one is.

    ``axes`` names each axis of ``values``; ``labels`` may name the positions along an axis,
    e.g. ``{"channel": ["ax", "ay", ...]}``."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    kinds = ((int(np.isnan(values).sum()), "NaN"), (int(np.isinf(values).sum()), "infinite"))
    counts = " and ".join(f"{n} {kind}" for n, kind in kinds if n)
    labels = labels or {}
    first = zip(axes, np.argwhere(bad)[0].tolist())
    at = ", ".join(f"{axis} {labels[axis][i] if axis in labels else i}" for axis, i in first)
    fail(
        f"{name}: {counts} value(s) among {values.size}, the first at {at}; the model needs "
        "finite numbers"
    )
'''
"""Reading numpy files and refusing non-finite values (image and IMU programs)."""


_WAV = r'''
FULL_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


def read_wav(path, rate_wanted, widths=(2, 3, 4)):
    """(mono float32 samples in [-1, 1], sample rate) of an integer-PCM WAV file whose
    sample width in bytes is one of ``widths`` (8-bit audio, 48 dB of range, is refused:
    a model trained on 16-bit clips would silently see a noisier input)."""
    advice = f"convert it, e.g. ffmpeg -i IN -ac 1 -ar {rate_wanted} -c:a pcm_s16le OUT.wav"
    if path.suffix.lower() in (".npy", ".npz"):
        fail(
            f"{path.name}: this example reads WAV files; save the waveform as PCM16, e.g. "
            "scipy.io.wavfile.write(OUT.wav, rate, (x * 32767).astype(np.int16))"
        )
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except Exception as exc:
        fail(f"{path.name} is not a PCM WAV file ({str(exc) or 'the file ends before its WAV header does'}); {advice}")
    if width not in FULL_SCALE or width not in widths or channels < 1 or rate < 1:
        fail(f"{path.name}: {8 * width}-bit audio, {channels} channel(s) at {rate} Hz; {advice}")
    usable = len(data) // (width * channels) * width * channels  # drop a truncated last frame
    if usable == 0:
        fail(f"{path.name} holds no audio samples")
    raw = np.frombuffer(data[:usable], dtype=np.uint8).reshape(-1, width)
    if width == 1:  # 8-bit WAV is unsigned
        ints = raw[:, 0].astype(np.int64) - 128
    else:  # little-endian signed: sign-extend the top byte, add the lower bytes
        ints = raw[:, -1].astype(np.int8).astype(np.int64)
        for b in range(width - 2, -1, -1):
            ints = (ints << 8) | raw[:, b]
    if channels > 1:
        note(f"averaged the {channels} channels of {path.name} to mono")
    samples = ints.reshape(-1, channels).mean(axis=1) / FULL_SCALE[width]
    return samples.astype(np.float32), rate


def resample(samples, rate, target):
    """``samples`` at ``rate`` Hz -> ``target`` Hz, band-limited."""
    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    try:
        from scipy.signal import resample_poly
    except ImportError:
        note(
            f"resampled {rate} Hz -> {target} Hz with numpy FFT (pip install scipy for the "
            "polyphase filter training used)"
        )
        n, m = len(samples), -(-len(samples) * up // down)
        spectrum = np.fft.rfft(samples.astype(np.float64))
        kept = np.zeros(m // 2 + 1, dtype=np.complex128)
        k = min(len(spectrum), len(kept))
        kept[:k] = spectrum[:k]
        out = np.fft.irfft(kept, m) * (m / n)
    else:
        note(f"resampled {rate} Hz -> {target} Hz (scipy resample_poly, as in training)")
        out = resample_poly(samples.astype(np.float64), up, down)
    return np.clip(out, -1.0, 1.0).astype(np.float32)
'''
"""Reading an integer-PCM WAV file as mono float32 and resampling it (audio and pitch)."""


_AUDIO = r'''

def fit_length(samples, length, rate):
    """The centre ``length`` samples, or ``samples`` zero-padded at the end to ``length``."""
    if len(samples) > length:
        note(f"cut the centre {length / rate:g} s of the {len(samples) / rate:g} s clip")
        start = (len(samples) - length) // 2
        return samples[start : start + length]
    if len(samples) < length:
        note(f"zero-padded the {len(samples) / rate:g} s clip to {length / rate:g} s")
        return np.concatenate([samples, np.zeros(length - len(samples), dtype=np.float32)])
    return samples


def main():
    p = parser("Classify a WAV clip.")
    p.add_argument("wav", nargs="?", help="an integer-PCM .wav file")
    args = parse(p)
    if args.wav is None:
        path, truth = bundled_sample()
    else:
        path, truth = input_file(args.wav), None
    target = int(round(SPEC["sample_rate_hz"]))
    samples, rate = read_wav(path, target)
    if rate != target:
        samples = resample(samples, rate, target)
    clip = fit_length(samples, SPEC["shape"][-1], target)[None]  # [1, T]
    show(args.model, run_model(args.model, prepare(clip)), truth)
'''
"""The audio classifier: the clip cut or padded to the model's length."""

_PITCH = r'''

CHUNK = 2048  # frames per onnxruntime call (8 MiB of input)


def decode(logits):
    """(pitch in Hz, confidence) of [N, bins] scores, as the chain's metric decodes them:
    softmax, then the probability-weighted mean of the bin cents around the argmax."""
    grid = MANIFEST["output"]["pitch"]
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    half, bins = grid["decode_window"], grid["bins"]
    index = p.argmax(axis=1)[:, None] + np.arange(-half, half + 1)[None]
    inside = (index >= 0) & (index < bins)
    weights = np.take_along_axis(p, index.clip(0, bins - 1), axis=1) * inside
    cents = grid["cents_offset"] + grid["cents_per_bin"] * index
    mass = weights.sum(axis=1)
    mean = (weights * cents).sum(axis=1) / np.maximum(mass, 1e-300)
    return 10.0 * 2.0 ** (mean / 1200.0), mass


def frames_of(samples, window, hop):
    """[N, window] frames centred on samples 0, hop, 2 hop, ... (zero-padded at both ends)."""
    padded = np.concatenate([np.zeros(window // 2), samples, np.zeros(window // 2)])
    count = 1 + len(samples) // hop
    index = np.arange(count)[:, None] * hop + np.arange(window)[None]
    return padded[index].astype(np.float32)


def main():
    p = parser("Print the pitch track of a WAV file: time, frequency, confidence.")
    p.add_argument("wav", nargs="?", help="an integer-PCM .wav file (16, 24 or 32 bit)")
    p.add_argument("--hop-ms", type=float, default=10.0, help="time between frames (10 ms)")
    args = parse(p)
    if args.wav is None:
        path, truth = bundled_sample()
    else:
        path, truth = input_file(args.wav), None
    target = int(round(SPEC["sample_rate_hz"]))
    if not math.isfinite(args.hop_ms) or not 1000 / target <= args.hop_ms <= 1000:
        fail(f"--hop-ms {args.hop_ms:g} must lie between {1000 / target:g} and 1000")
    samples, rate = read_wav(path, target)
    if rate != target:
        samples = resample(samples, rate, target)
    hop = max(1, round(args.hop_ms * target / 1000))
    frames = frames_of(samples, SPEC["shape"][-1], hop)
    chunks = range(0, len(frames), CHUNK)
    logits = [run_model(args.model, prepare(frames[i : i + CHUNK])) for i in chunks]
    pitch, confidence = decode(np.concatenate(logits))
    precision = MANIFEST["models"][args.model]["precision"]
    say_notes()
    every = f"every {1000 * hop / target:g} ms"
    print(f"# model: {args.model} ({precision}), {len(frames)} frames {every} of {path.name}")
    if truth is not None:
        print(f"# true pitch of the bundled sample: {truth[0]}")
    print("time_s frequency_hz confidence")
    for i, (hz, conf) in enumerate(zip(pitch, confidence)):
        print(f"{i * hop / target:.3f} {hz:.2f} {conf:.3f}")
'''
"""The pitch tracker: frames every ``--hop-ms``, decoded as the manifest says."""


READERS: dict[str, str] = {
    "image": _ARRAYS + IMAGE,
    "imu": _ARRAYS + IMU,
    "audio": _WAV + _AUDIO,
    "pitch": _WAV + _PITCH,
    "text": r'''


MAX_TEXT_BYTES = 65536  # far beyond any sentence: a whole file passed as one text


def tokenize(text, where="the text"):
    """(ids [max_len], whether the text was cut), as the manifest's tokenizer rule says."""
    spec = SPEC["tokenizer"]
    if spec.get("type") != "byte":
        fail(f"manifest.json names an unknown tokenizer {spec.get('type')!r}")
    data = text.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        fail(
            f"{where} is {len(data):,} bytes, not a sentence (the model reads the first "
            f"{spec['max_len']}); pass the sentence itself, or --file with one text per line"
        )
    if spec["lowercase"]:
        data = bytes(b + 32 if 65 <= b <= 90 else b for b in data)
    max_len = spec["max_len"]
    ids = [b + 1 for b in data[:max_len]]
    return ids + [spec["pad_id"]] * (max_len - len(ids)), len(data) > max_len


def names_a_file(text):
    """Whether ``text`` is the name of an existing file (``--file`` forgotten)."""
    try:
        return " " not in text and Path(text).is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL character
        return False


def read_lines(path):
    try:
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path.name}: not a readable UTF-8 text file ({exc})")
    lines = content.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        fail(f"{path.name} holds no text; expected one text per line")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            fail(f"{path.name} line {n}: empty text; give some words to classify")
    return lines


def main():
    p = parser("Classify texts.")
    p.add_argument("text", nargs="?", help="the text to classify")
    p.add_argument("--file", help="a UTF-8 file with one text per line")
    args = parse(p)
    truth = None
    if args.text is not None and args.file is not None:
        fail("give a text or --file, not both")
    if args.text is not None:
        if not args.text.strip():
            fail("the text is empty; give some words to classify")
        if names_a_file(args.text):
            fail(f"{args.text} is a file: pass --file {args.text} to classify its lines")
        texts = [args.text]
    elif args.file is not None:
        texts = read_lines(input_file(args.file))
    else:
        path, truth = bundled_sample()
        texts = read_lines(path)
        truth = truth if len(truth) == len(texts) else None
    where = "the text" if args.text is not None else f"{Path(args.file or 'sample.txt').name} line"
    encoded = [tokenize(t, where if args.text is not None else f"{where} {n}")
               for n, t in enumerate(texts, start=1)]
    cut = sum(c for _, c in encoded)
    if cut:
        note(f"{cut} text(s) longer than {SPEC['tokenizer']['max_len']} UTF-8 bytes were cut")
    ids = np.array([i for i, _ in encoded], dtype=np.int64)
    names = [repr(t if len(t) <= 40 else t[:37] + "...") for t in texts]
    show(args.model, run_model(args.model, prepare(ids)), truth, names)
''',
}
