"""What a bundle's ``example.py`` refuses (issue 13): for every modality, input it cannot read
faithfully (floats in 0..1 or uint16 taken as pixels, NaN/Inf, empty or misshapen arrays,
pickled objects, IMU values in another unit) ends in one ``error:`` line on stderr, exit
status 1 and nothing on stdout; the right input is still classified exactly as the chain does
(the fixture's own samples, non-uint8 pixels with an explicit ``--scale``, IMU windows in their
real units, including every window of the seglearn smartwatch set)."""

from __future__ import annotations

import importlib.util
import runpy
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_bundle import (
    RATE,
    TONES,
    Case,
    _case,
    _chain_clip,
    _linear,
    _refused,
    _run,
    _run_inline,
    _same_as_chain,
    _save_npy,
    _tone,
    _write_wav,
    audio_case,
    image_case,
    imu_case,
    imu_windows,
    text_case,
)

from edgedistill.tasks.inputs import imu_input

Make = Callable[[Path], list[str]]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return image_case(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def imu(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return imu_case(tmp_path_factory.mktemp("imu"))


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return audio_case(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return text_case(tmp_path_factory.mktemp("text"))


def _npy(array: np.ndarray, *flags: str) -> Make:
    return lambda d: [str(_save_npy(d / "x.npy", array)), *flags]


def _bytes(name: str, data: bytes, *flags: str) -> Make:
    def make(folder: Path) -> list[str]:
        (folder / name).write_bytes(data)
        return [str(folder / name), *flags]

    return make


def _objects(name: str) -> Make:
    """A pickled object array (what np.load(..., allow_pickle=False) refuses)."""

    def make(folder: Path) -> list[str]:
        np.save(folder / name, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return [str(folder / name)]

    return make


def _npz(name: str, **arrays: np.ndarray) -> Make:
    def make(folder: Path) -> list[str]:
        with open(folder / name, "wb") as fh:  # np.savez would append ".npz" to other names
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        return [str(folder / name)]

    return make


def _truncated(folder: Path) -> list[str]:
    np.save(folder / "cut.npy", np.zeros((4, 12, 12), np.uint8))
    data = (folder / "cut.npy").read_bytes()
    (folder / "cut.npy").write_bytes(data[:200])
    return [str(folder / "cut.npy")]


def _png16(folder: Path) -> list[str]:
    Image.fromarray((np.arange(144).reshape(12, 12) * 400).astype(np.uint16)).save(folder / "d.png")
    return [str(folder / "d.png")]


def _scaled_png(folder: Path) -> list[str]:
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(folder / "p.png")
    return [str(folder / "p.png"), "--scale", "255"]


def _one_inf(folder: Path) -> list[str]:
    x = np.random.default_rng(7).random((2, 1, 12, 12))
    x[1, 0, 3, 4] = np.inf
    return [str(_save_npy(folder / "x.npy", x)), "--scale", "255"]


def _nan_and_inf(folder: Path) -> list[str]:
    x = np.zeros((3, 12, 12), np.float32)  # [N, H, W]: reported as [N, C, H, W]
    x[2, 5, 6] = x[2, 7, 1] = np.nan
    x[0, 0, 1] = -np.inf
    return [str(_save_npy(folder / "x.npy", x))]


PIXELS = np.full((12, 12), 0.25, np.float32)
UINT16 = (np.arange(144).reshape(12, 12) * 400).astype(np.uint16)
IMAGE_BAD: list[tuple[str, Make, tuple[str, ...]]] = [
    ("float01", _npy(np.full((2, 1, 12, 12), 0.5)), ("float64 values in 0..1", "--scale 255")),
    ("float01-single", _npy(PIXELS), ("float32 values in 0..1", "--scale 255")),
    ("uint16", _npy(UINT16), ("uint16 values (up to 57200)", "--scale 255/65535")),
    (
        "int-pixels",
        _npy(np.full((1, 12, 12), 7, np.int64)),
        ("int64 values in 0..255", "--scale 1"),
    ),
    (
        "int-negative",
        _npy(np.full((12, 12), -3, np.int16)),
        ("int16 values in -3..-3", "not uint8"),
    ),
    ("float-255", _npy(np.full((12, 12), 200.0)), ("float64 values in 0..255", "--scale 1")),
    (
        "nan",
        _npy(np.full((1, 12, 12), np.nan)),
        ("144 NaN value(s) among 144", "image 0, channel 0, row 0, column 0"),
    ),
    ("inf", _one_inf, ("1 infinite value(s) among 288", "image 1, channel 0, row 3, column 4")),
    ("nan-inf", _nan_and_inf, ("2 NaN and 1 infinite", "image 0, channel 0, row 0, column 1")),
    ("scaled-high", _npy(np.full((12, 12), 2.0), "--scale", "255"), ("span 510..510", "0..255")),
    ("scaled-low", _npy(np.full((12, 12), -0.6), "--scale", "1"), ("span -0.6..-0.6",)),
    ("uint8-scaled", _npy(np.full((12, 12), 9, np.uint8), "--scale", "255"), ("outside",)),
    ("scale-word", _npy(PIXELS, "--scale", "abc"), ("--scale abc: expected a positive",)),
    ("scale-zero", _npy(PIXELS, "--scale", "0"), ("--scale 0:",)),
    ("scale-by-zero", _npy(PIXELS, "--scale", "1/0"), ("--scale 1/0:",)),
    ("scale-negative", _npy(PIXELS, "--scale=-2"), ("--scale -2:",)),
    ("scale-picture", _scaled_png, ("--scale is for .npy/.npz arrays", "p.png")),
    ("empty", _npy(np.zeros((0, 12, 12), np.uint8)), ("batch is empty", "[0, 12, 12]")),
    ("empty-rows", _npy(np.zeros((12, 0), np.uint8)), ("batch is empty", "[12, 0]")),
    ("rank-1", _npy(np.zeros(144, np.uint8)), ("shape [144]", "expected uint8 [N, 1, 12, 12]")),
    ("rank-5", _npy(np.zeros((1, 1, 1, 12, 12), np.uint8)), ("shape [1, 1, 1, 12, 12]",)),
    ("rgb", _npy(np.zeros((2, 3, 12, 12), np.uint8)), ("[2, 3, 12, 12]", "12x12 grayscale")),
    ("objects", _objects("o.npy"), ("o.npy holds Python objects",)),
    ("not-numpy", _bytes("x.npy", b"1,2,3\n"), ("x.npy is not a numpy .npy/.npz file",)),
    ("truncated", _truncated, ("cut.npy: not a readable numpy file",)),
    ("npz-key", _npz("p.npz", pixels=np.zeros((1, 12, 12), np.uint8)), ("named 'images'",)),
    (
        "npz-objects",
        _npz("o.npz", images=np.array([None], object)),
        ("o.npz: its 'images' array holds Python objects",),
    ),
    ("bool", _npy(np.ones((12, 12), bool)), ("holds bool values, not numbers",)),
    ("complex", _npy(np.zeros((12, 12), np.complex64)), ("complex64 values, not numbers",)),
    ("strings", _npy(np.full((12, 12), "a")), ("not numbers",)),
    ("png-16-bit", _png16, ("I;16", "8-bit")),
    ("png-broken", _bytes("b.png", b"not a picture"), ("b.png: cannot read the image",)),
    ("folder", lambda d: [str(d)], ("is a folder",)),
    ("missing", lambda d: [str(d / "absent.npy")], ("no such file",)),
]

W = imu_windows()[1].astype(np.float64)  # [6, 20]: m/s^2, m/s^2, m/s^2, deg/s x3


def _window(change: Callable[[np.ndarray], None], name: str = "w.npy") -> Make:
    def make(folder: Path) -> list[str]:
        window = W.copy()
        change(window)
        return [str(_save_npy(folder / name, window))]

    return make


def _csv(content: str) -> Make:
    return _bytes("w.csv", content.encode())


def _csv_with_nan() -> str:
    rows = [["t", "ax", "ay", "az", "gx", "gy", "gz"]]
    rows += [[str(t), *(repr(float(v)) for v in W[:, t])] for t in range(20)]
    rows[4][2] = "nan"  # line 5 = time step 3, channel ay
    return "\n".join(",".join(r) for r in rows) + "\n"


def _set(index: tuple[int, int], value: float) -> Callable[[np.ndarray], None]:
    def change(window: np.ndarray) -> None:
        window[index] = value

    return change


def _times(rows: slice, factor: float) -> Callable[[np.ndarray], None]:
    def change(window: np.ndarray) -> None:
        window[rows] *= factor

    return change


IMU_BAD: list[tuple[str, Make, tuple[str, ...]]] = [
    (
        "g-for-m/s^2",
        _window(_times(slice(0, 3), 1 / 9.80665)),
        ("accelerometer (ax/ay/az)", "look like g: multiply by 9.81", "--trust-input"),
    ),
    (
        "rad/s-for-deg/s",
        _window(_times(slice(3, 6), np.pi / 180)),
        ("gyroscope (gx/gy/gz)", "look like rad/s: multiply by 180/pi", "deg/s"),
    ),
    ("mg", _window(_times(slice(0, 3), 1000 / 9.80665)), ("accelerometer", "check the unit")),
    (
        "sentinel",
        _window(_set((5, 7), -9999.0)),
        ("channel gz holds -9999 at time step 7", "training standard deviations"),
    ),
    ("nan-csv", _csv(_csv_with_nan()), ("1 NaN value(s) among 120", "channel ay, time step 3")),
    (
        "inf",
        _window(_set((4, 10), np.inf)),
        ("1 infinite value(s) among 120, the first at channel gy, time step 10",),
    ),
    (
        "nan-batch",
        _npy(np.stack([W, W, np.where(np.arange(20) == 2, np.nan, W)])),
        ("6 NaN", "window 2, channel ax, time step 2"),
    ),
    ("empty", _npy(np.zeros((6, 0))), ("window is empty", "[6, 0]")),
    ("empty-batch", _npy(np.zeros((0, 6, 20))), ("window is empty",)),
    ("empty-csv", _csv(""), ("w.csv is empty",)),
    ("header-only", _csv("ax,ay,az,gx,gy,gz\n"), ("header but no samples",)),
    ("rank-1", _npy(np.zeros(120)), ("shape [120]", "expected [C, T], [T, C] or [N, C, T]")),
    ("rank-4", _npy(np.zeros((1, 1, 6, 20))), ("shape [1, 1, 6, 20]",)),
    ("batch-channels", _npy(np.zeros((2, 5, 20))), ("no axis of 6 channels",)),
    ("batch-length", _npy(np.zeros((2, 6, 21))), ("21 samples", "exactly 20")),
    ("objects", _objects("o.npy"), ("o.npy holds Python objects",)),
    ("not-numpy", _bytes("w.npy", b"ax,ay\n"), ("w.npy is not a numpy",)),
    ("npz-as-npy", _npz("z.npy", w=W), ("holds an .npz archive, not numbers",)),
    ("bool", _npy(np.ones((6, 20), bool)), ("holds bool, not numbers",)),
    ("folder", lambda d: [str(d)], ("is a folder",)),
]


def _wav_header(channels: int, width: int, rate: int, fmt: int = 1, data: bytes = b"") -> bytes:
    """A WAV file with any header fields (including ones the wave module writes never)."""
    block = max(channels, 1) * width
    fields = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, 8 * width)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fields
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


AUDIO_BAD: list[tuple[str, Make, tuple[str, ...]]] = [
    ("no-channels", _bytes("c.wav", _wav_header(0, 2, RATE)), ("c.wav is not a PCM WAV",)),
    ("zero-rate", _bytes("r.wav", _wav_header(1, 2, 0, data=b"\0\0" * 8)), ("at 0 Hz",)),
    ("float-wav", _bytes("f.wav", _wav_header(1, 4, RATE, fmt=3)), ("not a PCM WAV", "format")),
    ("no-samples", _bytes("e.wav", _wav_header(1, 2, RATE)), ("e.wav holds no audio samples",)),
    ("npy", _npy(np.zeros(800, np.float32)), ("x.npy: this example reads WAV files",)),
    ("folder", lambda d: [str(d)], ("is a folder",)),
]

TEXT_BAD: list[tuple[str, Make, tuple[str, ...]]] = [
    ("file-name", lambda d: [str(_bytes("t.txt", b"hi\n")(d)[0])], ("is a file", "--file")),
    ("huge", lambda d: ["word " * 20000], ("100,000 bytes, not a sentence",)),
    ("huge-word", lambda d: ["x" * 70000], ("70,000 bytes, not a sentence",)),  # no file name
    ("binary", lambda d: ["--file", *_bytes("b.txt", b"\xff\xfe\x00\x81")(d)], ("UTF-8",)),
    ("bom-only", lambda d: ["--file", *_bytes("e.txt", b"\xef\xbb\xbf")(d)], ("holds no text",)),
    ("empty-file", lambda d: ["--file", *_bytes("e.txt", b"")(d)], ("holds no text",)),
]

BAD = {"image": IMAGE_BAD, "imu": IMU_BAD, "audio": AUDIO_BAD, "text": TEXT_BAD}


@pytest.mark.parametrize(
    ("modality", "make", "words"),
    [
        pytest.param(m, make, words, id=f"{m}-{name}")
        for m, cases in BAD.items()
        for name, make, words in cases
    ],
)
def test_bad_input_is_refused_in_one_line(
    modality: str, make: Make, words: tuple[str, ...], tmp_path: Path, request: Any
) -> None:
    case: Case = request.getfixturevalue(modality)
    _refused(_run_inline(case.bundle, *make(tmp_path)), *words)


def test_the_reported_cases_in_a_real_interpreter(image: Case, imu: Case, tmp_path: Path) -> None:
    """The issue's own examples, run as `python example.py ...`: one line, status 1."""
    floats = _save_npy(tmp_path / "f.npy", image.samples / 255.0)
    _refused(_run(image.bundle, str(floats)), "--scale 255")
    _refused(_run(image.bundle, *_objects("o.npy")(tmp_path)), "Python objects")
    in_g = _window(_times(slice(0, 3), 1 / 9.80665))(tmp_path)
    _refused(_run(imu.bundle, *in_g), "look like g")


# ---- right input is still accepted ---------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        (lambda x: x / 255.0, "255"),  # floats in 0..1
        (lambda x: x.astype(np.uint16) * 257, "255/65535"),  # 16-bit
        (lambda x: x.astype(np.int64), "1"),  # integers in 0..255
        (lambda x: x.astype(np.float32), "1"),  # floats in 0..255
    ],
)
def test_other_pixel_types_with_an_explicit_scale(
    image: Case, tmp_path: Path, values: Callable[[np.ndarray], np.ndarray], scale: str
) -> None:
    array = values(image.samples)
    result = _run_inline(image.bundle, str(_save_npy(tmp_path / "x.npy", array)), "--scale", scale)
    _same_as_chain(result, image, image.samples)  # back to the same uint8 pixels exactly
    assert f"note: took {array.dtype} values times" in result.stderr
    layout = _save_npy(tmp_path / "nhw.npy", image.samples[:, 0])  # [N, H, W], uint8
    _same_as_chain(_run_inline(image.bundle, str(layout)), image, image.samples)


def test_imu_windows_in_their_units_are_accepted(imu: Case, tmp_path: Path) -> None:
    every = imu_windows()  # all 30 windows the fixture's statistics come from
    result = _run_inline(imu.bundle, str(_save_npy(tmp_path / "all.npy", every)))
    _same_as_chain(result, imu, every)
    transposed = _save_npy(tmp_path / "ntc.npy", every[:5].transpose(0, 2, 1))  # [N, T, C]
    _same_as_chain(_run_inline(imu.bundle, str(transposed)), imu, every[:5])
    whole = np.round(every[:2]).astype(np.int32)  # integer readings are numbers too
    _same_as_chain(_run_inline(imu.bundle, str(_save_npy(tmp_path / "i.npy", whole))), imu, whole)


def test_trust_input_skips_the_unit_check_only(imu: Case, tmp_path: Path) -> None:
    in_g = W.copy()
    in_g[:3] /= 9.80665
    path = str(_save_npy(tmp_path / "g.npy", in_g))
    _refused(_run_inline(imu.bundle, path), "accelerometer")
    trusted = _run_inline(imu.bundle, path, "--trust-input")
    _same_as_chain(trusted, imu, in_g[None].astype(np.float32))
    nan = in_g.copy()
    nan[0, 0] = np.nan
    path = str(_save_npy(tmp_path / "n.npy", nan))
    _refused(_run_inline(imu.bundle, path, "--trust-input"), "NaN")


def test_notes_wait_for_accepted_input(imu: Case, tmp_path: Path) -> None:
    """A note ("ignored the columns ['t']") is printed only when the input is accepted."""
    table = _csv_with_nan().replace("nan", "1.5")
    (tmp_path / "ok.csv").write_text(table)
    result = _run_inline(imu.bundle, str(tmp_path / "ok.csv"))
    assert result.returncode == 0 and "note: ignored the columns ['t']" in result.stderr
    (tmp_path / "bad.csv").write_text(_csv_with_nan())
    _refused(_run_inline(imu.bundle, str(tmp_path / "bad.csv")), "NaN")  # one line, no note


# ---- IMU in physical units: a phone in m/s^2 and rad/s, the seglearn watch ------------------


def _bundle_namespace(case: Case) -> dict[str, Any]:
    """The functions of a bundle's example.py (its main() is not run)."""
    return runpy.run_path(str(case.bundle / "example.py"), run_name="bundle_example")


def _refusals(namespace: dict[str, Any], windows: np.ndarray) -> int:
    """How many of ``windows`` [N, C, T] the unit and range checks refuse."""
    refused = 0
    for window in windows.astype(np.float64):
        try:
            for check in ("check_range", "check_accelerometer", "check_gyroscope"):
                namespace[check](window, "w")
        except SystemExit:
            refused += 1
    return refused


def _phone_windows(n: int, seed: int) -> np.ndarray:
    """[n, 6, 50] 1 s at 50 Hz: accelerometer (m/s^2, gravity in a random orientation plus
    motion) and gyroscope (rad/s), as a phone in a pocket records them."""
    rng = np.random.default_rng(seed)
    up = rng.normal(size=(n, 3, 1))
    up /= np.linalg.norm(up, axis=1, keepdims=True)
    accel = 9.80665 * up + rng.normal(0, 2.0, (n, 3, 50))
    gyro = rng.normal(0, 1.5, (n, 3, 50))
    return np.concatenate([accel, gyro], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> Case:
    x = _phone_windows(40, 8)
    spec = imu_input(
        x,
        channels=["ax", "ay", "az", "gx", "gy", "gz"],
        units=["m/s^2"] * 3 + ["rad/s"] * 3,
        sample_rate_hz=50.0,
        window_s=1.0,
        stride_s=0.5,
    )
    return _case(tmp_path_factory.mktemp("phone"), spec, _linear(300, 9), x[:3])


def test_phone_units_checks(phone: Case, tmp_path: Path) -> None:
    ns = _bundle_namespace(phone)
    fresh = _phone_windows(200, 10).astype(np.float64)  # not the training windows
    rest = np.zeros((20, 6, 50))
    rest[:, 2] = 9.80665  # lying flat: gravity only, sensor noise
    rest += np.random.default_rng(11).normal(0, 0.02, rest.shape)
    removed = rest.copy()
    removed[:, 2] -= 9.80665  # a "linear acceleration" stream: gravity removed
    for right in (fresh, rest, removed):
        assert _refusals(ns, right) == 0
    in_g, in_deg = fresh.copy(), fresh.copy()
    in_g[:, :3] /= 9.80665
    in_deg[:, 3:] *= 180 / np.pi
    assert _refusals(ns, in_g) == len(fresh)
    assert _refusals(ns, in_deg) == len(fresh)
    path = str(_save_npy(tmp_path / "deg.npy", in_deg[:2]))
    _refused(_run_inline(phone.bundle, path), "look like deg/s: multiply by pi/180", "window 0")
    accepted = _run_inline(phone.bundle, str(_save_npy(tmp_path / "ok.npy", fresh)))
    _same_as_chain(accepted, phone, fresh)


@pytest.mark.skipif(
    importlib.util.find_spec("seglearn") is None, reason="the watch data ships with seglearn"
)
@pytest.mark.parametrize("gyro_unit", ["rad/s", "deg/s"])
def test_every_seglearn_window_in_its_units_is_accepted(gyro_unit: str, tmp_path: Path) -> None:
    """The real smartwatch set (accelerometer in g, gyroscope as rad/s or converted to deg/s):
    none of its 4,677 windows is refused in the right units; mixed-up units are."""
    from edgedistill.data.imu import load_watch_dataset

    data = load_watch_dataset()
    per_rad = 1.0 if gyro_unit == "rad/s" else 180 / np.pi
    train = data.x_train.astype(np.float64)
    train[:, 3:] *= per_rad
    spec = imu_input(
        train.astype(np.float32),
        channels=list(data.channels),
        units=["g"] * 3 + [gyro_unit] * 3,
        sample_rate_hz=50.0,
        window_s=2.0,
        stride_s=1.0,
    )
    units = np.array([1, 1, 1, per_rad, per_rad, per_rad], np.float32)[:, None]
    case = _case(tmp_path, spec, _linear(600, 12), data.x_test[:2] * units)
    ns = _bundle_namespace(case)
    every = np.concatenate([data.x_train, data.x_test]).astype(np.float64)
    every[:, 3:] *= per_rad
    assert _refusals(ns, every) == 0
    in_ms2 = every.copy()
    in_ms2[:, :3] *= 9.80665
    assert _refusals(ns, in_ms2) == len(every)
    other = every.copy()
    other[:, 3:] *= (180 / np.pi) if gyro_unit == "rad/s" else (np.pi / 180)
    caught = _refusals(ns, other) / len(every)
    if gyro_unit == "rad/s":  # deg/s given: always faster than a gyroscope measures
        assert caught == 1.0
    else:  # rad/s given: refused only where the watch clearly moves (39% measured)
        assert 0.3 < caught < 1.0


def test_audio_and_wav_notes_unchanged(audio: Case, tmp_path: Path) -> None:
    """A stereo 24-bit clip is still read, its notes printed once it is accepted."""
    tone = _tone(TONES[0], RATE, 500)
    _write_wav(tmp_path / "s.wav", np.stack([tone, tone], axis=1), RATE, 3)
    result = _run_inline(audio.bundle, str(tmp_path / "s.wav"))
    _same_as_chain(result, audio, _chain_clip(tmp_path / "s.wav"))
    assert "note: averaged the 2 channels" in result.stderr
