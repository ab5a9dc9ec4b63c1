"""Loading time-synchronised video + IMU (+ audio) folders into PairedWindows."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedistill.data.paired import IMU_CHANNELS_6AXIS
from edgedistill.data.paired_io import PairedRecording, load_paired_folder, write_paired_folder
from edgedistill.errors import DataError, MissingDependencyError

# Recordings: IMU at ~100 Hz over [0, 3.99] s with jitter, frames at 20 fps over [0, 3.95] s.
# Loaded with window 1 s, stride 0.5 s at 50 Hz / 10 fps: the last start is 3.0 s -> 7 windows.
WINDOWS_PER_RECORDING = 7
LOAD: dict[str, Any] = {"window_s": 1.0, "stride_s": 0.5, "imu_rate_hz": 50.0, "fps": 10.0}
AUDIO_RATE = 8000.0


def ramp(times: np.ndarray, channels: int = 6) -> np.ndarray:
    """[T, C] linear ramps (c + 1) * t + c: linear interpolation reproduces them exactly."""
    c = np.arange(channels)
    return (c + 1) * times[:, None] + c


def recording(
    name: str,
    subject: int | str = 1,
    *,
    label: str | None = "walk",
    channels: int = 6,
    audio: bool = False,
    seed: int = 0,
) -> PairedRecording:
    rng = np.random.default_rng(seed)
    imu_times = np.arange(400) / 100.0
    imu_times[1:-1] += rng.uniform(-0.004, 0.004, 398)  # jitter, still strictly increasing
    frame_times = np.arange(80) / 20.0
    frame_times[1:-1] += rng.uniform(-0.01, 0.01, 78)  # the nearest frame stays the same
    frames = np.repeat(np.arange(80, dtype=np.uint8), 8 * 8 * 3).reshape(80, 8, 8, 3)
    wave = (np.arange(int(4 * AUDIO_RATE)) % 30000).astype(np.int16) if audio else None
    imu = ramp(imu_times, channels)
    return PairedRecording(
        name, subject, imu_times, imu, frame_times, frames, label, wave, AUDIO_RATE
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    recs = [recording("a", 1, label="walk"), recording("b", 2, label="run", seed=1)]
    return write_paired_folder(tmp_path / "data", recs)


def test_round_trip_windows_frames_and_imu(folder: Path) -> None:
    calls: list[str | None] = []
    data = load_paired_folder(
        folder, **LOAD, progress=lambda n=1, description=None: calls.append(description)
    )
    n = WINDOWS_PER_RECORDING
    assert len(data) == 2 * n and calls == ["a", "b"]
    assert data.classes == ("run", "walk") and data.imu_channels == IMU_CHANNELS_6AXIS
    assert data.labels.tolist() == [1] * n + [0] * n
    assert data.subjects.tolist() == [1] * n + [2] * n
    assert data.recordings.tolist() == [0] * n + [1] * n
    assert data.extra["recording_names"] == ["a", "b"]
    np.testing.assert_allclose(data.start_s[:n], np.arange(n) * 0.5)
    assert data.imu.shape == (2 * n, 6, 50) and data.imu.dtype == np.float32
    assert data.video is not None and data.video.shape == (2 * n, 10, 8, 8, 3)
    assert data.audio is None and data.fps == 10.0 and data.audio_rate_hz == 0.0
    # Frame index is the pixel value: window k at 0.5 k s takes source frames 10 k + 2 j.
    chosen = data.video[:n, :, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(chosen, 10 * np.arange(n)[:, None] + 2 * np.arange(10))
    # The jittered ramps are resampled exactly onto the 50 Hz grid.
    grid = data.start_s[:, None] + np.arange(50) / 50.0
    expected = ramp(grid.reshape(-1)).reshape(2 * n, 50, 6).transpose(0, 2, 1)
    np.testing.assert_allclose(data.imu, expected, rtol=1e-6, atol=1e-6)
    train, test = data.split_subjects((2,))
    assert set(train.subjects.tolist()) == {1} and set(test.subjects.tolist()) == {2}
    assert len(train) == len(test) == n and test.video is not None
    assert test.extra["recording_names"] == ["a", "b"]


def test_frame_size_and_classes(folder: Path) -> None:
    data = load_paired_folder(folder, **LOAD, frame_size=4, classes=("walk", "run", "idle"))
    assert data.video is not None and data.video.shape[2:] == (4, 4, 3)
    assert data.video[1, 3, 2, 2, 0] == 10 + 6  # uniform frames keep their value
    assert data.classes == ("walk", "run", "idle")
    assert data.labels.tolist() == [0] * 7 + [1] * 7


@pytest.mark.parametrize(
    ("header", "scale"),
    [
        ("timestamp_ms,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z", 1000.0),
        ("timestamp_s,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z", 1.0),
        (
            "component_idx,component_timestamp_ms,canonical_timestamp_ms,"
            "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z",
            1000.0,
        ),
    ],
)
def test_imu_csv_timestamps(folder: Path, header: str, scale: float) -> None:
    reference = load_paired_folder(folder, **LOAD)
    for name in ("a", "b"):
        table = np.load(folder / "imu" / f"{name}.npy")
        (folder / "imu" / f"{name}.npy").unlink()
        extra = header.count(",") - 6  # component_idx, component_timestamp_ms (nonsense here)
        lines = [header]
        for row in table:
            cells = (
                ["7"] * extra + [repr(float(row[0] * scale))] + [repr(float(v)) for v in row[1:]]
            )
            lines.append(",".join(cells))
        (folder / "imu" / f"{name}.csv").write_text("\n".join(lines) + "\n")
    data = load_paired_folder(folder, **LOAD)
    assert data.imu_channels == IMU_CHANNELS_6AXIS
    np.testing.assert_allclose(data.imu, reference.imu, rtol=1e-6, atol=1e-6)
    picked = load_paired_folder(folder, **LOAD, channels=("gyro_z", "acc_x"))
    np.testing.assert_array_equal(picked.imu, reference.imu[:, [5, 0]])


def test_segment_annotations(tmp_path: Path) -> None:
    segments = [("a", 0.0, 2.0, "sit"), ("a", 2.0, 4.0, "stand"), ("b", 1.0, 1.8, "sit")]
    recs = [recording("a", label=None), recording("b", 2, label=None)]
    data = load_paired_folder(write_paired_folder(tmp_path, recs, annotations=segments), **LOAD)
    assert data.classes == ("sit", "stand")
    # Starts 0, 0.5, 1 fit in [0, 2]; 1.5 straddles both segments; 2, 2.5, 3 fit in [2, 4].
    assert data.labels.tolist() == [0, 0, 0, -1, 1, 1, 1] + [-1] * 7


def test_audio_windows(tmp_path: Path) -> None:
    recs = [recording("a", audio=True), recording("b", 2, audio=True)]
    root = write_paired_folder(tmp_path, recs)
    data = load_paired_folder(root, **LOAD, with_audio=True, audio_rate_hz=AUDIO_RATE)
    assert data.audio is not None and data.audio.shape == (14, 8000)
    assert data.audio.dtype == np.float32 and data.audio_rate_hz == AUDIO_RATE
    first_sample = np.round(data.audio[:, 0] * 32768).astype(int)
    np.testing.assert_array_equal(first_sample, np.tile(np.arange(7) * 4000, 2))
    with pytest.raises(DataError, match=r"a\.wav: .* at 8000 Hz; convert it .* 16000 Hz"):
        load_paired_folder(root, **LOAD, with_audio=True, audio_rate_hz=16000.0)
    (root / "audio" / "b.wav").unlink()
    with pytest.raises(DataError, match=r"b\.wav is missing"):
        load_paired_folder(root, **LOAD, with_audio=True, audio_rate_hz=AUDIO_RATE)


def test_string_subjects_and_short_recordings(tmp_path: Path) -> None:
    short = recording("c", "P03")
    short = PairedRecording(
        "c", "P03", short.imu_times[:60], short.imu[:60], short.frame_times, short.frames
    )
    recs = [recording("a", "P07"), recording("b", "P01"), short]
    data = load_paired_folder(write_paired_folder(tmp_path, recs), **LOAD)
    assert data.extra["subject_names"] == ["P01", "P03", "P07"]
    assert data.subjects.tolist() == [2] * 7 + [0] * 7
    assert data.extra["skipped_recordings"] == ["c"]
    with pytest.raises(DataError, match=r"no recording has a 5\.0 s span"):
        load_paired_folder(tmp_path, **{**LOAD, "window_s": 5.0})


def test_backwards_and_duplicate_timestamps(folder: Path) -> None:
    table = np.load(folder / "imu" / "b.npy")
    table[5, 0] = table[3, 0]
    np.save(folder / "imu" / "b.npy", table)
    with pytest.raises(
        DataError, match=r"b\.npy \(recording b\): timestamp 5 .* strictly increase"
    ):
        load_paired_folder(folder, **LOAD)
    np.save(folder / "imu" / "b.npy", np.load(folder / "imu" / "a.npy"))
    stamps = folder / "frames" / "a" / "timestamps.csv"
    lines = stamps.read_text().splitlines()
    lines[4] = "3," + lines[3].split(",")[1]  # frame 3 repeats the timestamp of frame 2
    stamps.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"frames/a/timestamps\.csv: timestamp 3 "):
        load_paired_folder(folder, **LOAD)


def test_missing_files(folder: Path) -> None:
    (folder / "imu" / "b.npy").unlink()
    with pytest.raises(DataError, match=r"recording b needs imu/b\.npy or \.csv \(neither"):
        load_paired_folder(folder, **LOAD)
    shutil.copy(folder / "imu" / "a.npy", folder / "imu" / "b.npy")
    (folder / "frames" / "a" / "frame_000012.png").unlink()
    with pytest.raises(DataError, match=r"frame_000012\.png/\.jpg is listed .* but missing"):
        load_paired_folder(folder, **LOAD)
    shutil.rmtree(folder / "frames" / "a")
    with pytest.raises(DataError, match=r"needs video/a\.mp4 or frames/a/ \(neither"):
        load_paired_folder(folder, **LOAD)
    (folder / "recordings.csv").unlink()
    with pytest.raises(DataError, match=r"recordings\.csv is missing"):
        load_paired_folder(folder, **LOAD)


@pytest.mark.parametrize(
    ("window_s", "stride_s", "match"),
    [
        (1.01, 0.5, r"window_s \(imu\)=1.01 s is 50.5 samples at 50 Hz"),
        (1.0, 0.02, r"stride_s \(video\)=0.02 s is 0.2 samples at 10 Hz"),
        (0.0, 0.5, "positive number of seconds"),
    ],
)
def test_window_not_whole_at_rate(
    folder: Path, window_s: float, stride_s: float, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        load_paired_folder(folder, window_s=window_s, stride_s=stride_s)


def test_channel_mismatch(tmp_path: Path) -> None:
    recs = [recording("a"), recording("b", 2, channels=5)]
    with pytest.raises(DataError, match=r"recording b has IMU channels .* same channels"):
        load_paired_folder(write_paired_folder(tmp_path, recs), **LOAD)
    with pytest.raises(DataError, match=r"b\.npy: has 5 channels but channels names 6"):
        load_paired_folder(tmp_path, **LOAD, channels=IMU_CHANNELS_6AXIS)


def test_gap_in_frames(tmp_path: Path) -> None:
    full = recording("a")
    keep = np.r_[0:20, 30:80]  # frames 1.0 .. 1.45 s are missing
    gap = PairedRecording(
        "a", 1, full.imu_times, full.imu, full.frame_times[keep], full.frames[keep], "walk"
    )
    with pytest.raises(DataError, match=r"a: gap in the frames: none within .* t=1\.2000 s"):
        load_paired_folder(write_paired_folder(tmp_path, [gap]), **LOAD)


def test_unknown_labels_and_bad_annotations(folder: Path) -> None:
    with pytest.raises(DataError, match=r"labels \['run'\] are not in classes \['walk'\]"):
        load_paired_folder(folder, **LOAD, classes=("walk",))
    (folder / "annotations.csv").write_text("recording,start_s,end_s,label\na,0,1,sit\n")
    with pytest.raises(
        DataError, match=r"annotations\.csv line 2: 'a' also has a label in recordings\.csv"
    ):
        load_paired_folder(folder, **LOAD)
    (folder / "annotations.csv").write_text("recording,start_s,end_s,label\nzz,0,1,sit\n")
    with pytest.raises(DataError, match=r"'zz' is not in recordings\.csv"):
        load_paired_folder(folder, **LOAD)


def test_malformed_files(folder: Path) -> None:
    np.save(folder / "imu" / "a.npy", np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match=r"a\.npy: cannot read as a \.npy array"):
        load_paired_folder(folder, **LOAD)
    (folder / "imu" / "a.npy").unlink()
    (folder / "imu" / "a.csv").write_text("time,acc_x\n0,1\n")
    with pytest.raises(DataError, match=r"a\.csv: need a timestamp column"):
        load_paired_folder(folder, **LOAD)
    (folder / "recordings.csv").write_text("recording,subject\n../a,1\n")
    with pytest.raises(DataError, match=r"line 2: recording name '../a' must be a plain"):
        load_paired_folder(folder, **LOAD)
    with pytest.raises(DataError, match="empty folder"):
        write_paired_folder(folder, [recording("x")])


def test_missing_pyav_names_pip_install(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(folder / "frames" / "a")
    (folder / "video").mkdir()
    (folder / "video" / "a.mp4").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(
        MissingDependencyError, match=r"'av' package: pip install 'edgedistill\[video\]'"
    ):
        load_paired_folder(folder, **LOAD)


def test_mp4_with_pyav(folder: Path) -> None:
    av = pytest.importorskip("av", reason="PyAV is not installed (pip install av)")
    shutil.rmtree(folder / "frames" / "a")
    (folder / "video").mkdir()
    with av.open(str(folder / "video" / "a.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(80):
            picture = np.full((32, 32, 3), 3 * i, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = load_paired_folder(folder, **LOAD, frame_size=8)
    assert data.video is not None and data.video.shape == (14, 10, 8, 8, 3)
    chosen = data.video[:7, :, 4, 4].mean(axis=-1)  # lossy codec: the value, roughly
    expected = 3 * (10 * np.arange(7)[:, None] + 2 * np.arange(10))
    np.testing.assert_allclose(chosen, expected, atol=6)
    (folder / "video" / "a.mp4").write_bytes(b"not a video")
    with pytest.raises(DataError, match=r"a\.mp4: cannot read a video stream"):
        load_paired_folder(folder, **LOAD)
