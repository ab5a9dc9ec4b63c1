"""The IMU part of a bundle's ``example.py`` (joined with the shared helpers by
:mod:`.bundle_examples`): a CSV or .npy window (or a batch of windows) of raw sensor values,
checked against the manifest before the model sees it.

Besides shape, length and NaN/Inf, the program checks that the values are in the manifest's
units, because a unit mix-up (degrees for radians, g for m/s^2) gives confident nonsense:

- accelerometer (3 channels in m/s^2 or g): a device at rest reads gravity, 9.81 m/s^2 or 1 g,
  and over a window of real motion the median magnitude stays within ~0.8..3.2 g (measured on
  every window of the seglearn smartwatch set). A median above 4 g (and 4x the training RMS) is
  a unit too small (m/s^2 given for g); one of 0.05..0.4 g, from a model trained on data that
  holds gravity, is g given for m/s^2. A window near 0 (gravity removed, at rest) is accepted.
- gyroscope (rad/s or deg/s): faster than 2000 deg/s (the full scale of common MEMS gyros) and
  8x the training RMS is deg/s given for rad/s; 8x quieter than training while the
  accelerometer moves at least half as much as in training is rad/s given for deg/s. A still
  device is never refused (it cannot tell the units apart).
- every channel (checked first): a value 1000 training standard deviations from the training
  mean (a sentinel such as -9999, a unit 1000x off).

Units the tables do not know (e.g. "as provided by seglearn") skip the unit checks;
``--trust-input`` skips the unit and range checks for data they refuse wrongly.
"""

from __future__ import annotations

IMU = r'''

GRAVITY = {"m/s^2": 9.80665, "m/s2": 9.80665, "m/s²": 9.80665, "m s^-2": 9.80665, "g": 1.0}
"""Accelerometer units -> what a device at rest reads in them."""
PER_RAD_S = {"rad/s": 1.0, "deg/s": 180 / np.pi, "°/s": 180 / np.pi, "dps": 180 / np.pi}
"""Gyroscope units -> what 1 rad/s reads in them."""
GYRO_LIMIT = 35.0  # rad/s = 2000 deg/s, the full scale of common MEMS gyroscopes
FAR = 1000.0  # training standard deviations; no real reading lies that far from the mean

CHANNELS = SPEC["channels"]
MEAN, STD = SPEC["normalization"]["mean"], SPEC["normalization"]["std"]
MEAN = None if MEAN is None else np.asarray(MEAN, dtype=np.float64)
STD = None if STD is None else np.asarray(STD, dtype=np.float64)


def unit_of(text):
    """A manifest unit in the spelling of GRAVITY / PER_RAD_S, or None if it is neither."""
    text = str(text).strip()
    if text == "g":  # only a lower-case g is gravity ("G" is gauss, a magnetometer unit)
        return text
    text = text.lower()
    return text if text in GRAVITY or text in PER_RAD_S else None


UNITS = [unit_of(u) for u in SPEC["units"]]


def accelerometers():
    """Triples of consecutive accelerometer channels (x, y, z) in one unit."""
    accel = [c for c, u in enumerate(UNITS) if u in GRAVITY]
    triples = [accel[i : i + 3] for i in range(0, len(accel) - len(accel) % 3, 3)]
    return [t for t in triples if len({UNITS[c] for c in t}) == 1]


def mix_up(name, sensor, channels, detail, likely):
    """Refuse a window whose ``sensor`` values look like another unit."""
    names = "/".join(CHANNELS[c] for c in channels)
    hint = f"the values look like {likely}" if likely else "check the unit"
    fail(
        f"{name}: {sensor} ({names}) {detail}; {hint} (manifest.json: {SPEC['units'][channels[0]]}"
        "); --trust-input skips this check"
    )


def check_accelerometer(window, name):
    """Refuse a [C, T] window whose acceleration magnitude is not gravity-sized in its unit."""
    for xyz in accelerometers():
        unit = UNITS[xyz[0]]
        gravity = GRAVITY[unit]
        level = np.median(np.sqrt((window[xyz] ** 2).sum(axis=0))) / gravity  # 1 at rest
        trained = np.sqrt((MEAN[xyz] ** 2 + STD[xyz] ** 2).sum()) / gravity  # RMS of training
        detail = (
            f"reads a median magnitude of {level * gravity:.3g} {unit}; a device at rest reads "
            f"{gravity:.3g} {unit} (training: RMS {trained * gravity:.3g})"
        )
        if level > 4 * max(1.0, trained):
            likely = "m/s^2: divide by 9.81" if unit == "g" and level < 40 else None
            mix_up(name, "the accelerometer", xyz, detail, likely)
        if trained > 0.7 and 0.05 <= level < 0.4:  # gravity-sized in training, not here
            likely = "g: multiply by 9.81" if unit != "g" else None
            mix_up(name, "the accelerometer", xyz, detail, likely)


def check_gyroscope(window, name):
    """Refuse a [C, T] window whose angular rates look like the other unit (deg vs rad)."""
    gyro = [c for c, u in enumerate(UNITS) if u in PER_RAD_S]
    if not gyro or len({UNITS[c] for c in gyro}) != 1:
        return
    unit = UNITS[gyro[0]]
    rad_s = window[gyro] / PER_RAD_S[unit]
    rms = np.sqrt(np.mean(rad_s**2))
    trained = np.sqrt(np.mean(MEAN[gyro] ** 2 + STD[gyro] ** 2)) / PER_RAD_S[unit]
    peak = np.abs(rad_s).max()
    if peak > GYRO_LIMIT and rms > 8 * trained:
        detail = (
            f"reads up to {peak * PER_RAD_S[unit]:.4g} {unit}, faster than gyroscopes measure "
            f"(2000 deg/s) and {rms / trained:.0f}x the training RMS"
        )
        likely = "deg/s: multiply by pi/180 = 0.01745" if unit == "rad/s" else None
        mix_up(name, "the gyroscope", gyro, detail, likely)
    accel = [c for xyz in accelerometers() for c in xyz]
    if not accel or rms * 8 >= trained:
        return
    moving = np.sqrt(np.mean(window[accel].var(axis=1)) / np.mean(STD[accel] ** 2))
    if moving >= 0.5:  # the device moves as in training, yet barely turns: rad/s for deg/s?
        detail = (
            f"is {trained / max(rms, 1e-12):.0f}x quieter than in training while the "
            f"accelerometer moves {moving:.1f}x as much"
        )
        likely = "rad/s: multiply by 180/pi = 57.3" if unit == "deg/s" else None
        mix_up(name, "the gyroscope", gyro, detail, likely)


def check_range(window, name):
    """Refuse a [C, T] window holding a value FAR training standard deviations from the
    channel's training mean (a sentinel such as -9999, or a unit 1000x off)."""
    z = np.abs(window - MEAN[:, None]) / STD[:, None]
    c, t = np.unravel_index(int(np.argmax(z)), z.shape)
    if z[c, t] > FAR:
        fail(
            f"{name}: channel {CHANNELS[c]} holds {window[c, t]:g} at time step {t}, "
            f"{z[c, t]:.3g} training standard deviations from its mean {MEAN[c]:.4g} "
            f"({SPEC['units'][c]}); the model never saw such values. Check the units; "
            "--trust-input skips this check"
        )


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
    """[N, C, T] from a .npy holding [C, T], [T, C], [N, C, T] or [N, T, C] (the channel axis
    found by its size; the documented [.., C, T] wins a tie)."""
    array = load_numpy(path)
    if not numeric(array):
        got = f"{getattr(array, 'dtype', 'an .npz archive')}"
        fail(f"{path.name}: holds {got}, not numbers; expected a numeric [C, T] array")
    if array.size == 0:
        fail(f"{path.name}: the window is empty (shape {list(array.shape)})")
    if array.ndim not in (2, 3):
        fail(f"{path.name}: shape {list(array.shape)}; expected [C, T], [T, C] or [N, C, T]")
    windows = array if array.ndim == 3 else array[None]
    if windows.shape[1] == n_channels:
        return windows
    if windows.shape[2] == n_channels:
        return windows.transpose(0, 2, 1)
    fail(
        f"{path.name}: shape {list(array.shape)} has no axis of {n_channels} channels; "
        f"expected [{n_channels}, T], [T, {n_channels}] or [N, {n_channels}, T]"
    )


def main():
    p = parser("Classify windows of raw IMU values.")
    p.add_argument("window", nargs="?", help=".npy ([C, T], [T, C], [N, C, T]) or .csv")
    p.add_argument(
        "--trust-input",
        action="store_true",
        help="skip the unit and range checks (NaN, shape and length are still checked)",
    )
    args = parse(p)
    if args.window is None:
        path, truth = bundled_sample()
    else:
        path, truth = input_file(args.window), None
    channels, samples = CHANNELS, SPEC["window_samples"]
    suffix = path.suffix.lower()
    if suffix == ".csv":
        windows = read_csv(path, channels)[None]
    elif suffix == ".npy":
        windows = read_npy(path, len(channels))
    else:
        fail(f"{path.name}: expected a .npy or .csv window")
    if windows.shape[2] != samples:
        fail(
            f"{path.name}: the window has {windows.shape[2]} samples per channel; the model needs "
            f"exactly {samples} ({SPEC['window_s']:g} s at {SPEC['sample_rate_hz']:g} Hz)"
        )
    windows = windows.astype(np.float64)
    axes = ("window", "channel", "time step")
    one = len(windows) == 1  # then say "channel ay, time step 3", without "window 0"
    refuse_non_finite(windows[0] if one else windows, path.name, axes[one:], {"channel": channels})
    if not args.trust_input and MEAN is not None:
        for i, window in enumerate(windows):
            name = path.name if len(windows) == 1 else f"{path.name} window {i}"
            check_range(window, name)  # first: a sentinel is named as such
            check_accelerometer(window, name)
            check_gyroscope(window, name)
    # [N, C, T] raw values in their units; prepare() applies (raw - mean) / std
    show(args.model, run_model(args.model, prepare(windows.astype(np.float32))), truth)
'''
"""The IMU classifier: windows of raw values, checked for shape, NaN, units and range."""
