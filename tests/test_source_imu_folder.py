"""The ``imu`` folder source: CSV/npy recordings, windows, spans, resampling, group splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedistill.errors import DataError, RecipeError
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.tasks.task import Task

RATE = 10.0


def _csv(path: Path, header: list[str], rows: np.ndarray | list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _signal(seed: int, n: int = 25) -> np.ndarray:
    """[n, 2] values: a recording id in the hundreds plus the sample index, and noise."""
    rng = np.random.default_rng(seed)
    return np.stack([seed * 100.0 + np.arange(n), rng.normal(size=n).round(4)], axis=1)


def _subjects(root: Path) -> dict[str, np.ndarray]:
    """6 recordings (walk/run) of subjects s1..s3, 25 samples each, a decoy column between."""
    recs, rows = {}, []
    for i in range(6):
        name, values = f"rec{i}", _signal(i)
        table = np.column_stack([values[:, 0], np.zeros(25), values[:, 1]])
        _csv(root / "data" / f"{name}.csv", ["ax", "decoy", "ay"], table)
        recs[name] = values
        rows.append([name, "walk" if i % 2 else "run", f"s{i // 2 + 1}"])
    _csv(root / "labels.csv", ["recording", "label", "subject"], rows)
    return recs


def _load(tmp_path: Path, seed: int = 0, **data: Any) -> Task:
    raw = {
        "source": "imu",
        "path": "data",
        "labels_file": "labels.csv",
        "channels": ["ax", "ay"],
        "units": ["m/s^2", "m/s^2"],
        "sample_rate_hz": RATE,
        "window_s": 1.0,
        "stride_s": 0.5,
        **data,
    }
    cfg = parse_data_section(raw, base_dir=tmp_path, source="recipe.yaml")
    return build_task(cfg, cache_dir=tmp_path / "cache", seed=seed)


def test_windows_groups_and_values(tmp_path: Path) -> None:
    recs = _subjects(tmp_path)
    task = _load(tmp_path, group_column="subject", test_groups=["s3"])
    # 25 samples, W = 10, S = 5: windows at 0, 5, 10, 15 -> 4 per recording.
    assert task.x_train.shape == (16, 2, 10) and task.x_test.shape == (8, 2, 10)
    assert task.x_train.dtype == np.float32 and task.groups_train is not None
    assert task.labels == ("run", "walk")
    assert task.groups_train.tolist() == [0] * 8 + [1] * 8  # s1, s2 in sorted order
    assert task.groups_test is not None and set(task.groups_test.tolist()) == {2}
    assert task.y_train.tolist() == [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4
    # Window 1 of rec0 = samples 5..14, channels first, raw values (the decoy is skipped).
    assert np.array_equal(task.x_train[1], recs["rec0"][5:15].T.astype(np.float32))
    assert task.input.raw["units"] == ["m/s^2", "m/s^2"] and task.input.shape == (2, 10)
    assert task.input.raw["stride_samples"] == 5 and task.input.mean is not None
    assert task.input.mean[0] == pytest.approx(float(task.x_train[:, 0].mean()), rel=1e-5)


def test_seeded_split_keeps_groups_and_recordings_whole(tmp_path: Path) -> None:
    _subjects(tmp_path)
    a = _load(tmp_path, group_column="subject", test_fraction=0.34)
    b = _load(tmp_path, group_column="subject", test_fraction=0.34)
    assert a.fingerprint == b.fingerprint
    assert a.groups_train is not None and a.groups_test is not None
    assert not set(a.groups_train.tolist()) & set(a.groups_test.tolist())
    assert len(a.y_test) == 8  # one subject of three, 2 recordings x 4 windows
    # No groups: each recording is its own group, stratified by its label.
    c = _load(tmp_path, test_fraction=0.34)
    assert c.groups_train is not None and c.groups_test is not None
    assert not set(c.groups_train.tolist()) & set(c.groups_test.tolist())
    assert len(c.y_test) == 8 and sorted(set(c.y_test.tolist())) == [0, 1]


def test_spans_and_npy(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    np.save(root / "long.npy", np.arange(200, dtype=np.float64).reshape(100, 2))
    np.save(root / "other.npy", np.ones((40, 2), dtype=np.float32))
    rows = [["long", 0, 4, "walk"], ["long", 4, 10, "run"], ["other", 0.0, 4.0, "sit"]]
    _csv(tmp_path / "labels.csv", ["recording", "start_s", "end_s", "label"], rows)
    task = _load(tmp_path, window_s=2.0, stride_s=1.0, test_fraction=0.5)
    assert task.labels == ("run", "sit", "walk")
    x = np.concatenate([task.x_train, task.x_test])
    y = np.concatenate([task.y_train, task.y_test])
    # long: starts 0..8 s; 0-2 walk, 3 crosses the border (dropped), 4-8 run -> 8 windows;
    # other: starts 0, 1, 2 s in its 0-4 s span -> 3 windows.
    assert len(y) == 11 and sorted(y.tolist()) == [0] * 5 + [1] * 3 + [2] * 3
    starts = sorted(int(w[0, 0]) // 2 for w, k in zip(x, y, strict=True) if k != 1)
    assert starts == [0, 10, 20, 40, 50, 60, 70, 80]  # sample index of each window start


def test_jittered_timestamps_are_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rate, f, starts = 50.0, 0.7, {}
    for i, name in enumerate(["a", "b"]):
        t = (100.25 + np.arange(290) / rate + rng.uniform(-0.004, 0.004, 290)).round(6)
        table = np.column_stack([t, np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t) + i])
        _csv(tmp_path / "data" / f"{name}.csv", ["time", "ax", "ay"], table.round(7))
        starts[name] = t[0]
    _csv(tmp_path / "labels.csv", ["recording", "label"], [["a", "x"], ["b", "y"]])
    task = _load(tmp_path, time_column="time", sample_rate_hz=rate, window_s=2.0, stride_s=2.0)
    x = np.concatenate([task.x_train, task.x_test])
    y = np.concatenate([task.y_train, task.y_test])
    assert x.shape[1:] == (2, 100) and len(x) == 4  # ~5.78 s -> windows at 0 and 2 s each
    # The grid starts at the first timestamp; the second window of a starts 2 s later.
    grid = starts["a"] + 2.0 + np.arange(100) / rate
    window = x[y == 0][1]
    assert np.abs(window[0] - np.sin(2 * np.pi * f * grid)).max() < 2e-3
    assert np.abs(window[1] - np.cos(2 * np.pi * f * grid)).max() < 2e-3
    # Out of order timestamps are refused with the line.
    path = tmp_path / "data/b.csv"
    lines = path.read_text().splitlines()
    lines[3], lines[4] = lines[4], lines[3]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"b\.csv line 5, column 'time': timestamp is not after"):
        _load(tmp_path, time_column="time", sample_rate_hz=rate, window_s=2.0, stride_s=2.0)


def test_missing_declared_column(tmp_path: Path) -> None:
    _subjects(tmp_path)
    with pytest.raises(
        DataError, match=r"rec0\.csv line 1: no column 'gz'.*\['ax', 'decoy', 'ay'\]"
    ):
        _load(tmp_path, channels=["ax", "gz"])


def test_non_numeric_cell(tmp_path: Path) -> None:
    _subjects(tmp_path)
    path = tmp_path / "data/rec3.csv"
    lines = path.read_text().splitlines()
    lines[4] = "7,0,oops"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"rec3\.csv line 5, column 'ay': 'oops' is not a number"):
        _load(tmp_path)


def test_labels_file_names_missing_recording(tmp_path: Path) -> None:
    _subjects(tmp_path)
    with (tmp_path / "labels.csv").open("a") as handle:
        handle.write("ghost,run,s1\n")
    with pytest.raises(
        DataError, match=r"labels\.csv line 8: recording 'ghost' needs .*ghost\.csv"
    ):
        _load(tmp_path)


def test_window_longer_than_every_recording(tmp_path: Path) -> None:
    _subjects(tmp_path)
    with pytest.raises(
        DataError,
        match=r"data: data\.window_s = 3\.0 s \(30 samples\) is longer than every recording",
    ):
        _load(tmp_path, window_s=3.0)


def test_unknown_test_group_and_empty_labels(tmp_path: Path) -> None:
    _subjects(tmp_path)
    with pytest.raises(
        DataError, match=r"labels\.csv: data\.test_groups \['s9'\].*\['s1', 's2', 's3'\]"
    ):
        _load(tmp_path, group_column="subject", test_groups=["s9"])
    (tmp_path / "labels.csv").write_text("recording,label\n")
    with pytest.raises(DataError, match=r"labels\.csv: has no rows"):
        _load(tmp_path)


def test_config_errors(tmp_path: Path) -> None:
    _subjects(tmp_path)
    with pytest.raises(RecipeError, match=r"recipe\.yaml: data\.units = \['g'\]: 1 units for 2"):
        _load(tmp_path, units=["g"])
    with pytest.raises(RecipeError, match=r"data\.test_groups = .*needs group_column"):
        _load(tmp_path, test_groups=["s1"])
    with pytest.raises(RecipeError, match=r"data\.test_fraction = 0\.5: give test_groups or"):
        _load(tmp_path, group_column="subject", test_groups=["s1"], test_fraction=0.5)
    with pytest.raises(
        RecipeError, match=r"data\.stride_s = 0\.25: stride_s=0\.25 s is 2\.5 samples"
    ):
        _load(tmp_path, stride_s=0.25)
