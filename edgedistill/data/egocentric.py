"""A deterministic generator of paired egocentric video + IMU windows. SYNTHETIC data.

No paired video+IMU recordings install offline, so this module simulates them: a rigid body
carrying a head-mounted camera and an IMU moves through a procedurally textured 3-D scene with
one of seven activities (:data:`ACTIVITIES`). Each clip is one 2-s window; its IMU stream and
its frames come from the SAME trajectory (the camera pose is the body pose composed with a
fixed head offset and a per-subject downward tilt).

* Motion (:mod:`edgedistill.data.egocentric_motion`): per-subject cadence, step bob, camera
  height, sway and walking speed, per-clip variation, confusable cases (slow runs overlap
  fast walks; stair heights vary; walks turn corners; clips may start or end still).
* IMU: noise-free specific force and angular rate from the trajectory
  (:func:`imu_from_trajectory`), then a sensor model (:func:`simulate_imu`): per-subject
  mounting rotation and gain error, per-recording constant bias, white noise, and jittered
  sample times resampled onto a uniform grid by linear interpolation. The default noise and
  bias are well above datasheet values on purpose: they stand in for strap wobble, skin
  motion and vibration, which keep real inertial activity recognition from saturating.
* Video (:mod:`edgedistill.data.egocentric_render`): small RGB frames ray-cast against a
  per-clip random scene (ground texture, walls, boxes, stairs), so appearance is dominated
  by the scene while motion shows in frame-to-frame change.

Every random draw comes from ``numpy.random.default_rng([seed, ...ids])``, so a config
always gives bit-identical arrays (on one platform), whatever the order clips are made in.
"""

from __future__ import annotations

import json
import math
import numbers
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgedistill.artifacts import atomic_path, sha256_json
from edgedistill.data.egocentric_motion import (
    ACTIVITIES,
    SubjectParams,
    Trajectory,
    imu_from_trajectory,
    rotation_zyx,
    simulate_trajectory,
)
from edgedistill.data.egocentric_render import camera_trajectory, make_scene, render_frames
from edgedistill.data.paired import IMU_CHANNELS_6AXIS, IMU_UNITS_6AXIS, PairedWindows
from edgedistill.errors import DataError

__all__ = [
    "ACTIVITIES",
    "EgocentricConfig",
    "SensorErrors",
    "SubjectParams",
    "Trajectory",
    "camera_trajectory",
    "draw_sensor_errors",
    "draw_subject_params",
    "generate_egocentric",
    "imu_from_trajectory",
    "load_or_generate_egocentric",
    "make_scene",
    "render_frames",
    "simulate_imu",
    "simulate_trajectory",
]

GENERATOR_VERSION = "synthetic-egocentric v1"  # bump whenever the output bytes change
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EgocentricConfig:
    """What to generate; every field is part of the cache key.

    Attributes:
        subjects: Number of synthetic subjects.
        clips_per_activity: Clips per subject and activity (default: 10 x 7 x 12 = 840).
        clip_seconds: Length of each clip (= window) in seconds.
        fps: Video frame rate; clip_seconds * fps must be a whole number >= 2.
        imu_rate_hz: Uniform IMU output rate; clip_seconds * imu_rate_hz whole, >= 8.
        frame_size: Frame height = width in pixels.
        fov_deg: Camera field of view in degrees.
        accel_noise_std: Accelerometer white noise per sample (m/s^2).
        gyro_noise_std: Gyroscope white noise per sample (rad/s).
        accel_bias_std: Per-recording constant accelerometer bias, per axis (m/s^2).
        gyro_bias_std: Per-recording constant gyroscope bias, per axis (rad/s).
        scale_error: Per-subject gain error per axis (standard deviation, fraction of 1).
        mount_rotation_deg: Per-subject IMU mounting rotation, uniform in +-this per axis.
        remount_deg: Per-recording change of that mounting (the sensor is put on anew), a
            normal rotation per axis with this standard deviation in degrees.
        timing_jitter: Std of each IMU sample's time error, as a fraction of the period.
        transition_prob: Chance that a walk/run/stairs clip starts or ends still.
        seed: Root seed.
    """

    subjects: int = 10
    clips_per_activity: int = 12
    clip_seconds: float = 2.0
    fps: float = 10.0
    imu_rate_hz: float = 50.0
    frame_size: int = 32
    fov_deg: float = 70.0
    accel_noise_std: float = 0.3
    gyro_noise_std: float = 0.05
    accel_bias_std: float = 0.3
    gyro_bias_std: float = 0.04
    scale_error: float = 0.04
    mount_rotation_deg: float = 25.0
    remount_deg: float = 10.0
    timing_jitter: float = 0.2
    transition_prob: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            want_int = f.type in ("int", int)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise DataError(f"EgocentricConfig.{f.name} must be a number, got {value!r}")
            if want_int and not isinstance(value, numbers.Integral):
                raise DataError(f"EgocentricConfig.{f.name} must be an integer, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise DataError(f"EgocentricConfig.{f.name} must be finite and >= 0, got {value}")
            # Plain int / float, so that equal configs hash (and cache) alike: 10 == 10.0.
            number = cast(float, value)  # a numbers.Real; int() keeps integers exact
            object.__setattr__(self, f.name, int(number) if want_int else float(number))
        ranges = {
            "subjects": (1, 10_000),
            "clips_per_activity": (1, 100_000),
            "clip_seconds": (0.2, 60.0),
            "fps": (1.0, 60.0),
            "imu_rate_hz": (10.0, 1000.0),
            "frame_size": (8, 256),
            "fov_deg": (20.0, 150.0),
            "mount_rotation_deg": (0.0, 90.0),
            "remount_deg": (0.0, 30.0),
            "timing_jitter": (0.0, 0.45),
            "transition_prob": (0.0, 1.0),
        }
        for name, (lo, hi) in ranges.items():
            if not lo <= getattr(self, name) <= hi:
                raise DataError(
                    f"EgocentricConfig.{name} must be in [{lo}, {hi}], got {getattr(self, name)}"
                )
        for rate, least, name in ((self.fps, 2, "fps"), (self.imu_rate_hz, 8, "imu_rate_hz")):
            n = self.clip_seconds * rate
            if abs(n - round(n)) > 1e-6 or round(n) < least:
                raise DataError(
                    f"clip_seconds * {name} = {n:g}; choose values giving a whole number >= {least}"
                )

    @property
    def imu_samples(self) -> int:
        """IMU samples per clip."""
        return round(self.clip_seconds * self.imu_rate_hz)

    @property
    def frames(self) -> int:
        """Video frames per clip."""
        return round(self.clip_seconds * self.fps)

    @property
    def clips(self) -> int:
        """Clips in the whole set."""
        return self.subjects * len(ACTIVITIES) * self.clips_per_activity

    def cache_key(self) -> str:
        """A short hash of the generator version and every field."""
        return sha256_json({"generator": GENERATOR_VERSION, "config": asdict(self)})[:20]


@dataclass(frozen=True)
class SensorErrors:
    """One recording's IMU imperfections.

    Attributes:
        mount: [3, 3] sensor-to-body rotation (sensor reading = mount^T @ body vector).
        accel_scale, gyro_scale: [3] gain per sensor axis.
        accel_bias: [3] m/s^2; gyro_bias: [3] rad/s, constant over the recording.
        accel_noise_std: m/s^2; gyro_noise_std: rad/s, white noise per sample.
        timing_jitter_s: Std of each sample's time error in seconds.
    """

    mount: np.ndarray
    accel_scale: np.ndarray
    gyro_scale: np.ndarray
    accel_bias: np.ndarray
    gyro_bias: np.ndarray
    accel_noise_std: float
    gyro_noise_std: float
    timing_jitter_s: float


def draw_subject_params(config: EgocentricConfig, subject: int) -> SubjectParams:
    """The gait and sensor-wearing parameters of ``subject`` (deterministic in the seed)."""
    rng = np.random.default_rng([config.seed, 0, subject])
    mount = np.radians(config.mount_rotation_deg)
    a_scale = 1.0 + rng.normal(0.0, config.scale_error, 3)
    g_scale = 1.0 + rng.normal(0.0, config.scale_error, 3)
    return SubjectParams(
        subject=subject,
        cadence_hz=float(rng.uniform(1.6, 2.05)),
        step_amplitude_m=float(rng.uniform(0.018, 0.045)),
        eye_height_m=float(rng.uniform(1.45, 1.8)),
        sway_m=float(rng.uniform(0.01, 0.045)),
        walk_speed_mps=float(rng.uniform(1.0, 1.6)),
        mount_angles_rad=tuple(float(v) for v in rng.uniform(-mount, mount, 3)),  # type: ignore[arg-type]
        accel_scale=tuple(float(v) for v in a_scale),  # type: ignore[arg-type]
        gyro_scale=tuple(float(v) for v in g_scale),  # type: ignore[arg-type]
        camera_pitch_rad=float(np.radians(rng.uniform(5.0, 20.0))),
    )


def draw_sensor_errors(
    config: EgocentricConfig, params: SubjectParams, rng: np.random.Generator
) -> SensorErrors:
    """One recording's sensor errors: the subject's mounting and gains, fresh biases."""
    roll, pitch, yaw = params.mount_angles_rad
    mount = rotation_zyx(np.asarray(yaw), np.asarray(pitch), np.asarray(roll))
    if config.remount_deg > 0:
        r, p, y = rng.normal(0.0, np.radians(config.remount_deg), 3)
        mount = mount @ rotation_zyx(np.asarray(y), np.asarray(p), np.asarray(r))
    return SensorErrors(
        mount=mount,
        accel_scale=np.asarray(params.accel_scale),
        gyro_scale=np.asarray(params.gyro_scale),
        accel_bias=rng.normal(0.0, config.accel_bias_std, 3),
        gyro_bias=rng.normal(0.0, config.gyro_bias_std, 3),
        accel_noise_std=config.accel_noise_std,
        gyro_noise_std=config.gyro_noise_std,
        timing_jitter_s=config.timing_jitter / config.imu_rate_hz,
    )


def simulate_imu(
    trajectory: Trajectory, times_s: np.ndarray, errors: SensorErrors, rng: np.random.Generator
) -> np.ndarray:
    """What an imperfect IMU riding the trajectory reports, on a uniform time grid.

    The sensor samples at the nominal instants plus Gaussian jitter (the true instants, kept
    in order), reads the noise-free body signals there (linear interpolation of
    :func:`imu_from_trajectory` on the fine trajectory grid), rotates them into its mounted
    frame, applies gain, bias and white noise, and logs timestamps quantised to 1/20 of a
    period; the output is then linearly resampled onto ``times_s``.

    Args:
        trajectory: Finely sampled body poses covering ``times_s`` plus 3 periods each side.
        times_s: [T] uniform output times in seconds.
        errors: The recording's sensor errors.
        rng: Source of jitter and noise (consumed).

    Returns:
        [T, 6] float64: acc_x, acc_y, acc_z (m/s^2), gyro_x, gyro_y, gyro_z (rad/s).

    Raises:
        DataError: if the trajectory does not cover the output times with that margin.
    """
    dt = float(times_s[1] - times_s[0]) if len(times_s) > 1 else 1.0
    if times_s[0] - 3 * dt < trajectory.times[0] or times_s[-1] + 3 * dt > trajectory.times[-1]:
        raise DataError("simulate the trajectory 3 IMU periods beyond the output times")
    accel, gyro = imu_from_trajectory(trajectory)
    n = len(times_s) + 4
    jitter = np.clip(rng.normal(0.0, errors.timing_jitter_s, n), -0.45 * dt, 0.45 * dt)
    sampled = times_s[0] + (np.arange(n) - 2) * dt + jitter
    body = np.stack(
        [np.interp(sampled, trajectory.times, x[:, i]) for x in (accel, gyro) for i in range(3)],
        axis=1,
    )
    reading = np.concatenate([body[:, :3] @ errors.mount, body[:, 3:] @ errors.mount], axis=1)
    reading *= np.concatenate([errors.accel_scale, errors.gyro_scale])
    reading += np.concatenate([errors.accel_bias, errors.gyro_bias])
    noise = np.repeat([errors.accel_noise_std, errors.gyro_noise_std], 3)
    reading += rng.normal(0.0, 1.0, reading.shape) * noise
    logged = np.round(sampled / (dt / 20)) * (dt / 20)
    return np.stack([np.interp(times_s, logged, reading[:, i]) for i in range(6)], axis=1)


def _fine_grid(config: EgocentricConfig) -> tuple[float, int, int]:
    """(trajectory rate in Hz, samples between frames, margin samples)."""
    per_frame = math.ceil(4 * config.imu_rate_hz / config.fps)
    rate = config.fps * per_frame
    margin = math.ceil(max(0.25, 4.0 / config.imu_rate_hz) * rate)
    return rate, per_frame, margin


def _make_clip(
    config: EgocentricConfig, params: SubjectParams, activity: int, clip: int
) -> tuple[np.ndarray, np.ndarray]:
    """One clip: ([6, T] float32 IMU, [F, H, W, 3] uint8 frames)."""
    rng = np.random.default_rng([config.seed, 1, params.subject, activity, clip])
    rate, per_frame, margin = _fine_grid(config)
    fine_n = round(config.clip_seconds * rate) + 2 * margin
    body = simulate_trajectory(
        ACTIVITIES[activity],
        params,
        fine_n / rate,
        rate,
        rng,
        start_s=-margin / rate,
        transition_prob=config.transition_prob,
    )
    errors = draw_sensor_errors(config, params, rng)
    times = np.arange(config.imu_samples) / config.imu_rate_hz
    imu = simulate_imu(body, times, errors, rng)
    at_frames = body.take(margin + per_frame * np.arange(config.frames))
    scene = make_scene(body, rng)
    frames = render_frames(
        camera_trajectory(at_frames, params), scene, config.frame_size, fov_deg=config.fov_deg
    )
    return imu.T.astype(np.float32), frames


def _subject_clips(
    config: EgocentricConfig, params: SubjectParams
) -> tuple[np.ndarray, np.ndarray]:
    """Every clip of one subject, activity-major: ([K, 6, T], [K, F, H, W, 3])."""
    made = [
        _make_clip(config, params, a, k)
        for a in range(len(ACTIVITIES))
        for k in range(config.clips_per_activity)
    ]
    return np.stack([m[0] for m in made]), np.stack([m[1] for m in made])


def _paired_windows(
    config: EgocentricConfig, arrays: dict[str, Any], source: str, extra: dict[str, object]
) -> PairedWindows:
    """PairedWindows of the :data:`_ARRAYS` in ``arrays``, with the fields ``config`` fixes."""
    return PairedWindows(
        **arrays,
        classes=ACTIVITIES,
        imu_rate_hz=float(config.imu_rate_hz),
        window_s=float(config.clip_seconds),
        stride_s=float(config.clip_seconds),
        fps=float(config.fps),
        imu_channels=IMU_CHANNELS_6AXIS,
        imu_units=IMU_UNITS_6AXIS,
        source=source,
        extra=extra,
    )


def generate_egocentric(
    config: EgocentricConfig | None = None, *, progress: Progress | None = None, workers: int = 1
) -> PairedWindows:
    """Generate the synthetic paired set: one 2-s window per clip.

    Clips are ordered subject-major, then activity, then clip index. ``recordings`` numbers
    the clips (each clip is its own recording, with its own scene and biases) and
    ``start_s`` is 0. ``extra`` holds the config and every subject's parameters.

    Args:
        config: What to generate; default :class:`EgocentricConfig()`.
        progress: Called as ``progress(done, total)`` in clips, after each subject.
        workers: Processes to use (1 = in this process); the result does not depend on it.

    Returns:
        imu [N, 6, T] float32, video [N, F, S, S, 3] uint8, labels/subjects [N] int64.

    Raises:
        DataError: for workers < 1.
    """
    config = config or EgocentricConfig()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be an integer >= 1, got {workers!r}")
    params = [draw_subject_params(config, s) for s in range(config.subjects)]
    per_subject = len(ACTIVITIES) * config.clips_per_activity
    imu = np.empty((config.clips, 6, config.imu_samples), dtype=np.float32)
    size = config.frame_size
    video = np.empty((config.clips, config.frames, size, size, 3), dtype=np.uint8)

    def store(subject: int, result: tuple[np.ndarray, np.ndarray], done: int) -> None:
        rows = slice(subject * per_subject, (subject + 1) * per_subject)
        imu[rows], video[rows] = result
        if progress is not None:
            progress(done * per_subject, config.clips)

    if workers == 1:
        for s, p in enumerate(params):
            store(s, _subject_clips(config, p), s + 1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_subject_clips, config, p) for p in params]
            for s, future in enumerate(futures):
                store(s, future.result(), s + 1)
    labels = np.tile(
        np.repeat(np.arange(len(ACTIVITIES)), config.clips_per_activity), config.subjects
    )
    arrays = {
        "imu": imu,
        "video": video,
        "labels": labels.astype(np.int64),
        "subjects": np.repeat(np.arange(config.subjects, dtype=np.int64), per_subject),
        "recordings": np.arange(config.clips, dtype=np.int64),
        "start_s": np.zeros(config.clips),
    }
    return _paired_windows(
        config,
        arrays,
        f"{GENERATOR_VERSION} (seed {config.seed})",
        json.loads(  # JSON types, so a set read back from the cache compares equal
            json.dumps(
                {
                    "synthetic": True,
                    "config": asdict(config),
                    "subject_params": [asdict(p) for p in params],
                }
            )
        ),
    )


_ARRAYS = ("imu", "video", "labels", "subjects", "recordings", "start_s")


def egocentric_cache_path(config: EgocentricConfig, cache_dir: Path) -> Path:
    """Where :func:`load_or_generate_egocentric` keeps ``config``'s set."""
    return Path(cache_dir) / f"egocentric-{config.cache_key()}.npz"


def load_or_generate_egocentric(
    config: EgocentricConfig,
    cache_dir: Path,
    *,
    progress: Progress | None = None,
    workers: int = 1,
) -> PairedWindows:
    """The set for ``config``, read from ``cache_dir`` or generated and cached there.

    The cache is one uncompressed ``.npz`` named by a hash of the config, written to a
    temporary file and moved into place (``os.replace``), so a crash never leaves half a
    file; it is read with ``allow_pickle=False``.

    Raises:
        DataError: if a cached file cannot be read or belongs to another config.
    """
    path = egocentric_cache_path(config, cache_dir)
    if path.exists():
        return _load(path, config)
    data = generate_egocentric(config, progress=progress, workers=workers)
    meta = {"key": config.cache_key(), "source": data.source, "extra": data.extra}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **{k: getattr(data, k) for k in _ARRAYS})
    return data


def _load(path: Path, config: EgocentricConfig) -> PairedWindows:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS}
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read cached set {path} ({exc}); delete it to regenerate") from None
    if meta.get("key") != config.cache_key():
        raise DataError(f"cached set {path} belongs to another config; delete it to regenerate")
    return _paired_windows(config, arrays, str(meta["source"]), dict(meta["extra"]))
