"""The synthetic egocentric video + IMU generator: physics, sensor model, frames, cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgedistill.data.egocentric as ego
from edgedistill.data.egocentric import (
    ACTIVITIES,
    EgocentricConfig,
    Trajectory,
    draw_sensor_errors,
    draw_subject_params,
    generate_egocentric,
    imu_from_trajectory,
    load_or_generate_egocentric,
    render_frames,
    simulate_imu,
    simulate_trajectory,
)
from edgedistill.data.egocentric_motion import GRAVITY_MPS2, rotation_zyx
from edgedistill.data.egocentric_render import make_scene
from edgedistill.errors import DataError

TINY = EgocentricConfig(subjects=2, clips_per_activity=1, clip_seconds=1.0, frame_size=16)
SENSOR_OFF: dict[str, Any] = {
    "accel_noise_std": 0.0,
    "gyro_noise_std": 0.0,
    "accel_bias_std": 0.0,
    "gyro_bias_std": 0.0,
    "scale_error": 0.0,
    "mount_rotation_deg": 0.0,
    "remount_deg": 0.0,
    "timing_jitter": 0.0,
}


@pytest.fixture(scope="module")
def tiny() -> Any:
    return generate_egocentric(TINY)


def _still(times: np.ndarray, yaw_rate: float = 0.0) -> Trajectory:
    n = len(times)
    yaw = yaw_rate * times
    rot = rotation_zyx(yaw, np.zeros(n), np.zeros(n))
    return Trajectory(times, np.tile([1.0, -2.0, 1.6], (n, 1)), rot)


def test_still_level_body_reads_plus_g_up_and_zero_rate() -> None:
    accel, gyro = imu_from_trajectory(_still(np.arange(50) / 50.0))
    np.testing.assert_allclose(accel, np.tile([0.0, 0.0, GRAVITY_MPS2], (50, 1)), atol=1e-12)
    np.testing.assert_allclose(gyro, 0.0, atol=1e-12)


@pytest.mark.parametrize("uniform", [True, False])
def test_turning_in_place_reads_the_yaw_rate_on_gyro_z(uniform: bool) -> None:
    rng = np.random.default_rng(0)
    times = np.arange(100) / 100.0
    if not uniform:
        times = np.sort(times + rng.uniform(-0.003, 0.003, 100))
    accel, gyro = imu_from_trajectory(_still(times, yaw_rate=1.3))
    np.testing.assert_allclose(gyro[:, 2], 1.3, rtol=1e-9)
    np.testing.assert_allclose(gyro[:, :2], 0.0, atol=1e-9)
    np.testing.assert_allclose(accel, np.tile([0.0, 0.0, GRAVITY_MPS2], (100, 1)), atol=1e-9)


def test_circling_body_matches_the_analytic_imu() -> None:
    """Facing along a circle of radius r at rate w: a = (0, w^2 r, g) in the body, gyro_z = w."""
    r, w = 2.0, 0.8
    times = np.linspace(0.0, 2.0, 801)
    positions = np.stack([r * np.cos(w * times), r * np.sin(w * times), np.full(801, 1.5)], 1)
    rot = rotation_zyx(w * times + np.pi / 2, np.zeros(801), np.zeros(801))
    accel, gyro = imu_from_trajectory(Trajectory(times, positions, rot))
    inner = slice(1, -1)
    np.testing.assert_allclose(accel[inner], [[0.0, w * w * r, GRAVITY_MPS2]] * 799, atol=1e-4)
    np.testing.assert_allclose(gyro[inner], [[0.0, 0.0, w]] * 799, atol=1e-9)


def test_walk_accelerometer_is_rotated_second_derivative_plus_gravity() -> None:
    params = draw_subject_params(EgocentricConfig(), 3)
    traj = simulate_trajectory("walk", params, 2.0, 200.0, np.random.default_rng(5))
    accel, gyro = imu_from_trajectory(traj)
    t, p, rot = traj.times, traj.positions, traj.orientations
    a_world = np.gradient(np.gradient(p, t, axis=0), t, axis=0)  # independent estimator
    expected = np.einsum("tji,tj->ti", rot, a_world + np.array([0.0, 0.0, GRAVITY_MPS2]))
    inner = slice(4, -4)
    assert np.std(accel[inner, 2]) > 0.5  # the walk does bob
    np.testing.assert_allclose(accel[inner], expected[inner], atol=0.05 * np.ptp(accel))
    # R^T dR/dt is skew-symmetric with the body rate in it.
    w = np.einsum("tji,tjk->tik", rot, np.gradient(rot, t, axis=0))
    rate = np.stack([w[:, 2, 1], w[:, 0, 2], w[:, 1, 0]], axis=1)
    np.testing.assert_allclose(gyro[inner], rate[inner], atol=0.03 * np.ptp(gyro))


@pytest.mark.parametrize("activity", ACTIVITIES)
def test_every_activity_gives_a_valid_rigid_trajectory(activity: str) -> None:
    params = draw_subject_params(EgocentricConfig(), 0)
    traj = simulate_trajectory(activity, params, 1.0, 100.0, np.random.default_rng(1))
    assert traj.positions.shape == (100, 3) and traj.orientations.shape == (100, 3, 3)
    eye = np.einsum("tji,tjk->tik", traj.orientations, traj.orientations)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-12)
    assert np.all(traj.positions[:, 2] > 0.5)


def test_unknown_activity_and_bad_trajectory_raise() -> None:
    params = draw_subject_params(EgocentricConfig(), 0)
    with pytest.raises(DataError, match="unknown activity"):
        simulate_trajectory("jump", params, 1.0, 100.0, np.random.default_rng(0))
    with pytest.raises(DataError, match="strictly increasing"):
        _still(np.array([0.0, 0.2, 0.1]))
    with pytest.raises(DataError, match="at least 3"):
        imu_from_trajectory(_still(np.array([0.0, 0.1])))


def test_sensor_errors_off_give_exact_still_readings() -> None:
    config = EgocentricConfig(**SENSOR_OFF)
    rng = np.random.default_rng(0)
    errors = draw_sensor_errors(config, draw_subject_params(config, 0), rng)
    grid = np.arange(100) / 50.0
    imu = simulate_imu(_still(np.arange(-50, 250) / 100.0), grid, errors, rng)
    np.testing.assert_array_equal(imu, np.tile([0, 0, GRAVITY_MPS2, 0, 0, 0], (100, 1)))


def test_sensor_errors_on_rotate_bias_and_jitter_the_readings() -> None:
    config = EgocentricConfig(**{**SENSOR_OFF, "mount_rotation_deg": 25.0})
    rng = np.random.default_rng(0)
    errors = draw_sensor_errors(config, draw_subject_params(config, 1), rng)
    imu = simulate_imu(_still(np.arange(-50, 250) / 100.0), np.arange(100) / 50.0, errors, rng)
    np.testing.assert_allclose(np.linalg.norm(imu[:, :3], axis=1), GRAVITY_MPS2, rtol=1e-12)
    assert abs(imu[0, 2] - GRAVITY_MPS2) > 1e-3  # gravity leaks into the tilted x/y axes
    noisy = draw_sensor_errors(EgocentricConfig(), draw_subject_params(config, 1), rng)
    imu = simulate_imu(_still(np.arange(-50, 250) / 100.0), np.arange(100) / 50.0, noisy, rng)
    assert imu[:, 3:].std(axis=0).min() > 0.5 * EgocentricConfig().gyro_noise_std
    with pytest.raises(DataError, match="beyond the output times"):
        simulate_imu(_still(np.arange(100) / 100.0), np.arange(50) / 50.0, noisy, rng)


def test_generated_set_has_the_promised_shapes_and_labels(tiny: Any) -> None:
    n = 2 * len(ACTIVITIES)
    assert tiny.imu.shape == (n, 6, 50) and tiny.imu.dtype == np.float32
    assert tiny.video.shape == (n, 10, 16, 16, 3) and tiny.video.dtype == np.uint8
    assert tiny.labels.dtype == np.int64 and set(tiny.labels.tolist()) == set(range(7))
    assert tiny.subjects.tolist() == [0] * 7 + [1] * 7
    assert tiny.classes == ACTIVITIES and tiny.imu_rate_hz == 50.0 and tiny.fps == 10.0
    assert tiny.window_s == 1.0 and "synthetic" in tiny.source and np.isfinite(tiny.imu).all()
    assert len(tiny.extra["subject_params"]) == 2  # type: ignore[arg-type]
    train, test = tiny.split_subjects((1,))
    assert len(train) == len(test) == 7


def test_same_seed_is_bit_identical_and_another_seed_differs(tiny: Any) -> None:
    again = generate_egocentric(TINY)
    np.testing.assert_array_equal(again.imu, tiny.imu)
    np.testing.assert_array_equal(again.video, tiny.video)
    assert again.fingerprint() == tiny.fingerprint()
    other = generate_egocentric(dataclasses.replace(TINY, seed=1))
    assert not np.array_equal(other.imu, tiny.imu)
    assert other.video is not None and not np.array_equal(other.video, tiny.video)


def test_two_workers_give_the_same_bytes_and_report_progress(tiny: Any) -> None:
    calls: list[tuple[int, int]] = []
    pooled = generate_egocentric(TINY, workers=2, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(pooled.imu, tiny.imu)
    np.testing.assert_array_equal(pooled.video, tiny.video)
    assert calls == [(7, 14), (14, 14)]
    with pytest.raises(DataError, match="workers"):
        generate_egocentric(TINY, workers=0)


def test_walk_frames_change_but_still_frames_hardly_do() -> None:
    config = dataclasses.replace(TINY, subjects=3, clips_per_activity=2)
    data = generate_egocentric(config)
    assert data.video is not None
    change = np.abs(np.diff(data.video.astype(np.float32), axis=1)).mean(axis=(1, 2, 3, 4))
    walk = change[data.labels == ACTIVITIES.index("walk")].mean()
    still = change[data.labels == ACTIVITIES.index("still")].mean()
    assert walk > 1.0 and walk > 3 * still, (walk, still)


def test_still_clips_read_gravity_when_the_sensor_is_perfect() -> None:
    data = generate_egocentric(dataclasses.replace(TINY, **SENSOR_OFF))
    still = data.imu[data.labels == ACTIVITIES.index("still")]
    np.testing.assert_allclose(np.linalg.norm(still[:, :3], axis=1), GRAVITY_MPS2, atol=0.3)
    assert np.abs(still[:, 3:]).max() < 0.6


def test_render_frames_shapes_and_validation() -> None:
    params = draw_subject_params(EgocentricConfig(), 0)
    rng = np.random.default_rng(2)
    traj = simulate_trajectory("stairs_up", params, 1.0, 10.0, rng)
    assert traj.stairs is not None
    frames = render_frames(traj, make_scene(traj, rng), 12)
    assert frames.shape == (10, 12, 12, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # a textured view, not a flat colour
    with pytest.raises(DataError, match="frame_size"):
        render_frames(traj, make_scene(traj, rng), 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"subjects": 0},
        {"subjects": True},
        {"clips_per_activity": 1.5},
        {"frame_size": 4},
        {"fps": 0.0},
        {"fps": 7.0, "clip_seconds": 1.1},  # 7.7 frames per clip
        {"imu_rate_hz": float("nan")},
        {"accel_noise_std": -0.1},
        {"mount_rotation_deg": 120.0},
        {"timing_jitter": 0.5},
        {"transition_prob": 1.5},
        {"seed": "zero"},
    ],
)
def test_bad_config_raises_data_error(bad: dict[str, Any]) -> None:
    with pytest.raises(DataError, match=r"EgocentricConfig|clip_seconds"):
        EgocentricConfig(**bad)


def test_config_normalises_number_types() -> None:
    config = EgocentricConfig(subjects=np.int64(3), fps=10, seed=np.int64(4))  # type: ignore[arg-type]
    assert type(config.subjects) is int and type(config.fps) is float
    assert config.cache_key() == EgocentricConfig(subjects=3, fps=10.0, seed=4).cache_key()
    assert config.cache_key() != EgocentricConfig(subjects=3, seed=5).cache_key()


def test_cache_round_trip_and_no_regeneration(
    tmp_path: Path, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_or_generate_egocentric(TINY, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind
    mtime = files[0].stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(ego, "generate_egocentric", boom)
    second = load_or_generate_egocentric(TINY, tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
    for name in ("imu", "video", "labels", "subjects", "recordings", "start_s"):
        np.testing.assert_array_equal(getattr(second, name), getattr(tiny, name))
        assert getattr(second, name).dtype == getattr(first, name).dtype
    assert second.fingerprint() == tiny.fingerprint() and second.extra == first.extra

    files[0].write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="delete it"):
        load_or_generate_egocentric(TINY, tmp_path)
