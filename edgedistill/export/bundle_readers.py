"""The modality-specific part of a bundle's ``example.py``: how raw input of each modality
(pictures or uint8 arrays, IMU CSV/npy windows, WAV clips, texts) becomes the model's stored
form, and each program's ``main``. Plain text, joined with the shared helpers by
:mod:`.bundle_examples`.
"""

from __future__ import annotations

_WAV = r'''
FULL_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


def read_wav(path, rate_wanted, widths=(2, 3, 4)):
    """(mono float32 samples in [-1, 1], sample rate) of an integer-PCM WAV file whose
    sample width in bytes is one of ``widths`` (8-bit audio, 48 dB of range, is refused:
    a model trained on 16-bit clips would silently see a noisier input)."""
    advice = f"convert it, e.g. ffmpeg -i IN -ac 1 -ar {rate_wanted} -c:a pcm_s16le OUT.wav"
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except Exception as exc:
        fail(f"{path.name} is not a PCM WAV file ({str(exc) or 'the file ends before its WAV header does'}); {advice}")
    if width not in FULL_SCALE or width not in widths or channels < 1 or rate < 1:
        fail(f"{path.name}: {8 * width}-bit audio with {channels} channel(s); {advice}")
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
    "image": r'''

PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def check_pixels(array, name):
    """Refuse anything but uint8 pixels, naming the usual mistakes."""
    if not isinstance(array, np.ndarray) or array.dtype == object:
        fail(f"{name}: not a numeric array; the model wants uint8 pixels 0..255")
    if array.size == 0:
        fail(f"{name}: the batch is empty (shape {list(array.shape)})")
    if array.dtype == np.uint8:
        return
    if np.issubdtype(array.dtype, np.floating):
        if np.isnan(array).any():
            fail(f"{name}: contains NaN; the model wants uint8 pixels 0..255")
        if array.min() >= 0 and array.max() <= 1:
            fail(
                f"{name}: holds {array.dtype} values in 0..1 (the usual mistake); the model "
                "wants uint8 pixels 0..255: save (array * 255).round().astype(np.uint8)"
            )
    fail(f"{name}: holds {array.dtype} values; the model wants uint8 pixels 0..255")


def to_batch(array, name):
    """uint8 [N, C, H, W] from [N, C, H, W], [N, H, W, C], [N, H, W], [H, W, C] or [H, W]."""
    check_pixels(array, name)
    c, h, w = SPEC["shape"][1:]
    s = tuple(array.shape)
    if array.ndim == 4 and s[1:] == (c, h, w):
        return array
    if array.ndim == 4 and s[1:] == (h, w, c):
        return array.transpose(0, 3, 1, 2)
    if array.ndim == 3 and c == 1 and s[1:] == (h, w):
        return array[:, None]
    if array.ndim == 3 and s in ((c, h, w), (h, w, c)):
        return array[None] if s == (c, h, w) else array.transpose(2, 0, 1)[None]
    if array.ndim == 2 and c == 1 and s == (h, w):
        return array[None, None]
    forms = f"[N, {h}, {w}] or [{h}, {w}]" if c == 1 else f"[N, {h}, {w}, {c}] or [{h}, {w}, {c}]"
    fail(
        f"{name}: shape {list(s)} does not fit the model's {h}x{w} {SPEC['color']} images; "
        f"expected uint8 [N, {c}, {h}, {w}], {forms}"
    )


def load_array(path):
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        fail(f"{path.name}: not a readable numpy file ({exc})")
    if isinstance(data, np.ndarray):
        return data
    if "images" not in data.files:
        fail(f"{path.name}: holds {data.files}; expected an array named 'images'")
    return data["images"]


def read_picture(path):
    """[1, C, H, W] uint8 from an image file, converted and resized like the training data."""
    try:
        from PIL import Image
    except ImportError:
        fail(f"reading {path.suffix} files needs Pillow (pip install pillow); or pass uint8 .npy")
    c, h, w = SPEC["shape"][1:]
    if c not in (1, 3):
        fail(f"{path.name}: the model takes {c}-channel images; pass uint8 .npy")
    mode = "L" if c == 1 else "RGB"
    try:
        with Image.open(path) as picture:
            original = picture.mode
            image = picture.convert(mode)
    except Exception as exc:
        fail(f"{path.name}: cannot read the image ({exc})")
    if original != mode:
        note(f"converted the {original} image to {SPEC['color']}, the model's colour")
    if image.size != (w, h):
        size = f"{image.size[1]}x{image.size[0]}"
        note(f"resized {size} -> {h}x{w} (HxW, bilinear), the model's size")
        image = image.resize((w, h), getattr(Image, "Resampling", Image).BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None, None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)[None]


def main():
    p = parser("Classify images.")
    p.add_argument("images", nargs="?", help=".npy/.npz uint8 pixels or an image file")
    args = parse(p)
    if args.images is None:
        path, truth = bundled_sample()
    else:
        path, truth = input_file(args.images), None
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        images = to_batch(load_array(path), path.name)
    elif suffix in PICTURES:
        images = read_picture(path)
    else:
        fail(f"{path.name}: expected uint8 pixels in a .npy/.npz file or a .png/.jpg image")
    show(args.model, run_model(args.model, prepare(images)), truth)
''',
    "imu": r'''

def read_csv(path, channels):
    """[C, T] from a CSV whose header names the channels (any order) and rows are samples."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        fail(f"{path.name}: not a readable CSV file ({exc})")
    if not rows:
        fail(f"{path.name} is empty; expected a header row naming the channels {channels}")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in channels if name not in header]
    if missing or len(set(header)) != len(header):
        fail(
            f"{path.name}: header {header} does not name the model's {len(channels)} channels "
            f"{channels} once each (missing {missing})"
        )
    extra = [name for name in header if name not in channels]
    if extra:
        note(f"ignored the columns {extra} of {path.name}")
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
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        fail(f"{path.name}: not a readable .npy file ({exc})")
    numeric = isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.number)
    if not numeric or array.ndim != 2:
        got = f"{getattr(array, 'dtype', '?')} {list(getattr(array, 'shape', []))}"
        fail(f"{path.name}: expected a 2-D numeric array, got {got}")
    if array.shape[0] == n_channels:  # [C, T], the documented layout, wins a tie
        return array
    if array.shape[1] == n_channels:  # [T, C]
        return array.T
    fail(
        f"{path.name}: shape {list(array.shape)} has no axis of {n_channels} channels; "
        f"expected [{n_channels}, T] or [T, {n_channels}]"
    )


def main():
    p = parser("Classify one window of raw IMU values.")
    p.add_argument("window", nargs="?", help=".npy ([C, T] or [T, C]) or .csv (header = channels)")
    args = parse(p)
    if args.window is None:
        path, truth = bundled_sample()
    else:
        path, truth = input_file(args.window), None
    channels, samples = SPEC["channels"], SPEC["window_samples"]
    suffix = path.suffix.lower()
    if suffix == ".csv":
        window = read_csv(path, channels)
    elif suffix == ".npy":
        window = read_npy(path, len(channels))
    else:
        fail(f"{path.name}: expected a .npy or .csv window")
    if window.shape[1] != samples:
        fail(
            f"{path.name}: the window has {window.shape[1]} samples per channel; the model needs "
            f"exactly {samples} ({SPEC['window_s']:g} s at {SPEC['sample_rate_hz']:g} Hz)"
        )
    if not np.isfinite(window).all():
        fail(f"{path.name}: the window contains NaN or infinite values")
    window = window.astype(np.float32)[None]  # [1, C, T], raw values in their units
    show(args.model, run_model(args.model, prepare(window)), truth)
''',
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
