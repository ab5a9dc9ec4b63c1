"""Rigid-body motion of a person carrying a camera and an IMU, and what the IMU measures.

Part of the *synthetic* egocentric generator (:mod:`edgedistill.data.egocentric`); nothing here
is recorded data. Conventions:

* World frame: x, y horizontal, z up (metres); gravity is ``(0, 0, -g)``.
* Body frame: x forward, y left, z up when the body is level. An orientation is the 3x3
  rotation taking body-frame vectors to the world frame, ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``
  (a positive pitch tips the nose down).
* The accelerometer measures specific force ``f = R^T (a - g_vec) = R^T (a + (0, 0, g))`` in
  m/s^2, so a still, level body reads ``(0, 0, +g)``; the gyroscope measures the body-frame
  angular rate ``omega`` (``R^T dR/dt = [omega]_x``) in rad/s (strapdown conventions as in
  Titterton & Weston, *Strapdown Inertial Navigation Technology*, 2nd ed., ch. 3).

Each activity is a parametric motion model (gait phase, step bob, lateral sway, lean, head
wander, turns, stair rises, sit-to-stand lean and rise) driven by a subject's
:class:`SubjectParams` and per-clip random variation; clips may begin or end with a short
still period (a transition).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from edgedistill.errors import DataError

ACTIVITIES = ("still", "walk", "run", "stairs_up", "stairs_down", "turn_in_place", "sit_stand")
GRAVITY_MPS2 = 9.81
# A clip's still lead-in or lead-out (when a transition is drawn) spans this many seconds
# from the trajectory's first or last sample, margins included.
_STILL_PERIOD_S = (0.3, 0.9)
_RAMP_S = 0.3


@dataclass(frozen=True)
class SubjectParams:
    """One synthetic subject's gait and sensor-wearing habits.

    Attributes:
        subject: Subject id.
        cadence_hz: Preferred walking cadence (steps per second).
        step_amplitude_m: Vertical head bob per walking step (half peak-to-peak, metres).
        eye_height_m: Height of the head-worn body origin (about eye height) above the floor
            when standing (metres); the camera sits a few cm above and ahead of it.
        sway_m: Lateral sway amplitude while walking (metres).
        walk_speed_mps: Preferred walking speed (m/s).
        mount_angles_rad: (roll, pitch, yaw) of the IMU relative to the body frame (radians).
        accel_scale: [3] accelerometer gain per sensor axis (1 = exact).
        gyro_scale: [3] gyroscope gain per sensor axis (1 = exact).
        camera_pitch_rad: Downward tilt of the camera relative to the body (radians).
    """

    subject: int
    cadence_hz: float
    step_amplitude_m: float
    eye_height_m: float
    sway_m: float
    walk_speed_mps: float
    mount_angles_rad: tuple[float, float, float]
    accel_scale: tuple[float, float, float]
    gyro_scale: tuple[float, float, float]
    camera_pitch_rad: float


@dataclass(frozen=True)
class StairGeometry:
    """A straight staircase along world +x, as built by the stair activities.

    Tread ``n`` (any integer) is centred at ``x = tread0_x + n * tread_m`` and its top is at
    ``z = base_z + direction * n * riser_m``, clipped at the floor (z = 0); it spans
    ``|y - centre_y| <= width_m / 2``.
    """

    tread0_x: float
    centre_y: float
    tread_m: float
    riser_m: float
    base_z: float
    direction: int
    width_m: float


@dataclass(frozen=True)
class Trajectory:
    """Poses of a rigid body over time.

    Attributes:
        times: [T] seconds, strictly increasing (need not be uniform).
        positions: [T, 3] body origin in the world frame, metres, z up.
        orientations: [T, 3, 3] body-to-world rotation matrices.
        stairs: The staircase the body walks on, or None.
    """

    times: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray
    stairs: StairGeometry | None = None

    def __post_init__(self) -> None:
        n = len(self.times)
        if self.times.ndim != 1 or n < 1:
            raise DataError(
                f"trajectory times must be a non-empty [T] array, got {self.times.shape}"
            )
        if self.positions.shape != (n, 3) or self.orientations.shape != (n, 3, 3):
            raise DataError(
                f"trajectory needs positions [T, 3] and orientations [T, 3, 3] for T={n}, got "
                f"{self.positions.shape} and {self.orientations.shape}"
            )
        if n > 1 and not np.all(np.diff(self.times) > 0):
            raise DataError("trajectory times must be strictly increasing; sort them first")

    def take(self, index: np.ndarray) -> Trajectory:
        """The poses at ``index`` (integer array), same staircase."""
        return Trajectory(
            self.times[index], self.positions[index], self.orientations[index], self.stairs
        )


def rotation_zyx(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` for [T] angles in radians -> [T, 3, 3]."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rows = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    shape = np.broadcast(yaw, pitch, roll).shape
    return np.stack([np.stack([np.broadcast_to(v, shape) for v in r], -1) for r in rows], -2)


def log_so3(rotations: np.ndarray) -> np.ndarray:
    """Rotation vectors (axis * angle, radians) of [..., 3, 3] rotations (angle < pi)."""
    r = rotations
    v = 0.5 * np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                        r[..., 1, 0] - r[..., 0, 1]], axis=-1)  # fmt: skip
    sin_angle = np.linalg.norm(v, axis=-1)
    cos_angle = 0.5 * (np.trace(r, axis1=-2, axis2=-1) - 1.0)
    angle = np.arctan2(sin_angle, cos_angle)
    safe = np.where(sin_angle > 1e-12, sin_angle, 1.0)
    factor = np.where(sin_angle > 1e-12, angle / safe, 1.0)
    return v * factor[..., None]


def imu_from_trajectory(
    trajectory: Trajectory, *, gravity: float = GRAVITY_MPS2
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free accelerometer and gyroscope readings in the body frame.

    The world acceleration is the three-point second difference of the positions (exact for
    quadratic motion, also on a non-uniform time grid); the angular rate is the rotation
    vector ``log(R_i^T R_{i+1}) / dt`` of each step, interpolated to the samples. The first
    and last samples copy their neighbours (one-sided differences), so simulate a margin.

    Args:
        trajectory: At least 3 poses.
        gravity: Magnitude of gravity in m/s^2.

    Returns:
        ``(accel, gyro)``: [T, 3] specific force in m/s^2 and [T, 3] angular rate in rad/s,
        both in the body frame.

    Raises:
        DataError: for fewer than 3 poses.
    """
    t, p, rot = trajectory.times, trajectory.positions, trajectory.orientations
    if len(t) < 3:
        raise DataError(f"need at least 3 poses to differentiate a trajectory, got {len(t)}")
    h = np.diff(t)
    velocity = np.diff(p, axis=0) / h[:, None]
    accel_world = np.empty_like(p)
    accel_world[1:-1] = 2.0 * np.diff(velocity, axis=0) / (h[1:] + h[:-1])[:, None]
    accel_world[0], accel_world[-1] = accel_world[1], accel_world[-2]
    specific_world = accel_world + np.array([0.0, 0.0, gravity])
    accel = np.einsum("tji,tj->ti", rot, specific_world)
    step = np.einsum("tji,tjk->tik", rot[:-1], rot[1:])  # R_i^T R_{i+1}
    rate = log_so3(step) / h[:, None]  # at the step midpoints
    gyro = np.empty_like(p)
    gyro[1:-1] = (rate[:-1] * h[1:, None] + rate[1:] * h[:-1, None]) / (h[1:] + h[:-1])[:, None]
    gyro[0], gyro[-1] = gyro[1], gyro[-2]
    return accel, gyro


@dataclass
class _Motion:
    """Per-sample motion channels assembled into a :class:`Trajectory` (all [T])."""

    speed: np.ndarray  # m/s along the path heading
    heading: np.ndarray  # path direction (rad)
    lateral: np.ndarray  # left offset from the path (m)
    height: np.ndarray  # body z (m)
    yaw: np.ndarray  # body yaw relative to the path heading (rad)
    pitch: np.ndarray
    roll: np.ndarray
    stairs: StairGeometry | None = None


def _cumtrapz(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.zeros_like(y)
    out[1:] = np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(t))
    return out


def _smooth(x: np.ndarray) -> np.ndarray:
    """Quintic smoothstep on [0, 1] (C2 continuous), clipped outside."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def _smooth_rate(x: np.ndarray) -> np.ndarray:
    """d/dx of :func:`_smooth`."""
    x = np.clip(x, 0.0, 1.0)
    return 30.0 * x * x * (1.0 - x) ** 2


def _staircase(u: np.ndarray) -> np.ndarray:
    """Smooth stairs: rises by 1 per unit of ``u``, flat at integers."""
    return u - np.sin(2.0 * np.pi * u) / (2.0 * np.pi)


def _wander(t: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Slow head wander: two random sinusoids of 0.1-0.7 Hz with peak <= ``amplitude``."""
    out = np.zeros_like(t)
    for _ in range(2):
        a = 0.5 * amplitude * rng.uniform(0.3, 1.0)
        out += a * np.sin(2 * np.pi * rng.uniform(0.1, 0.7) * t + rng.uniform(0, 2 * np.pi))
    return out


def _duration(rng: np.random.Generator, lo: float, hi: float, span: float) -> float:
    """A random duration in [lo, hi] seconds, shrunk to fit in ``span``."""
    return float(rng.uniform(min(lo, 0.9 * span), min(hi, span)))


def _envelope(t: np.ndarray, rng: np.random.Generator, transition_prob: float) -> np.ndarray:
    """Activity intensity in [0, 1]: 1, or a still lead-in / lead-out with a smooth ramp."""
    if rng.uniform() >= transition_prob:
        return np.ones_like(t)
    still = rng.uniform(*_STILL_PERIOD_S)
    if rng.uniform() < 0.5:
        return _smooth((t - t[0] - still) / _RAMP_S)
    return 1.0 - _smooth((t - (t[-1] - still - _RAMP_S)) / _RAMP_S)


def _head(
    t: np.ndarray, rng: np.random.Generator, yaw: float, pitch: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yaw, pitch, roll) head wander with the given peak yaw and pitch (radians)."""
    return _wander(t, rng, yaw), _wander(t, rng, pitch), _wander(t, rng, 0.3 * pitch)


def _still(t: np.ndarray, p: SubjectParams, rng: np.random.Generator, tp: float) -> _Motion:
    fore = _wander(t, rng, rng.uniform(0.005, 0.03))
    sitting = rng.uniform() < 0.3
    height = p.eye_height_m - (rng.uniform(0.4, 0.6) if sitting else 0.0)
    yaw, pitch, roll = _head(t, rng, rng.uniform(0.01, 0.12), rng.uniform(0.01, 0.06))
    return _Motion(
        speed=np.gradient(fore, t),
        heading=np.full_like(t, rng.uniform(-np.pi, np.pi)),
        lateral=_wander(t, rng, rng.uniform(0.005, 0.03)),
        height=height + _wander(t, rng, 0.004),
        yaw=yaw,
        pitch=pitch + rng.uniform(-0.1, 0.3),
        roll=roll,
    )


def _gait(
    t: np.ndarray, p: SubjectParams, rng: np.random.Generator, tp: float, *, running: bool
) -> _Motion:
    e = _envelope(t, rng, tp)
    active = _cumtrapz(e, t)
    if running:  # slow runs overlap fast walks in cadence, speed and bob
        cadence = rng.uniform(2.1, 3.0) * np.sqrt(p.cadence_hz / 1.8)
        speed = rng.uniform(1.7, 3.6)
        bob, lean = rng.uniform(0.025, 0.08), rng.uniform(0.03, 0.25)
        harmonic, sway = rng.uniform(0.1, 0.45), p.sway_m * rng.uniform(0.4, 1.0)
    else:
        cadence = p.cadence_hz * rng.uniform(0.85, 1.25)
        speed = p.walk_speed_mps * rng.uniform(0.8, 1.2) * np.sqrt(cadence / p.cadence_hz)
        bob, lean = p.step_amplitude_m * rng.uniform(0.75, 1.3), rng.uniform(-0.05, 0.15)
        harmonic, sway = rng.uniform(0.0, 0.3), p.sway_m * rng.uniform(0.7, 1.3)
    curvature = rng.normal(0.0, 0.15)
    if rng.uniform() < 0.2:  # walking around a corner
        curvature = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.8)
    phase = 2 * np.pi * cadence * active + rng.uniform(0, 2 * np.pi)
    beta = rng.uniform(0, 2 * np.pi)
    yaw, pitch, roll = _head(t, rng, rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.1))
    heading0 = rng.integers(4) * np.pi / 2 + rng.normal(0.0, 0.15)
    swing = np.sin(phase / 2)
    return _Motion(
        speed=speed * e * (1.0 + 0.06 * np.cos(phase)),
        heading=heading0 + curvature * active,
        lateral=sway * e * swing,
        height=p.eye_height_m + bob * e * (np.cos(phase) + harmonic * np.cos(2 * phase + beta)),
        yaw=yaw + rng.uniform(0.01, 0.06) * e * np.sin(phase / 2 + 0.7),
        pitch=pitch + lean * e + rng.uniform(0.005, 0.03) * e * np.cos(phase + beta),
        roll=roll + rng.uniform(0.01, 0.05) * e * swing,
    )


def _stairs(
    t: np.ndarray, p: SubjectParams, rng: np.random.Generator, tp: float, up: bool
) -> _Motion:
    e = _envelope(t, rng, tp)
    active = _cumtrapz(e, t)
    cadence = p.cadence_hz * (rng.uniform(0.65, 0.95) if up else rng.uniform(0.75, 1.05))
    tread, riser = rng.uniform(0.25, 0.34), rng.uniform(0.11, 0.20)
    u = cadence * active + rng.uniform(0.0, 1.0)  # treads climbed (fractional)
    direction = 1 if up else -1
    flights = int(np.ceil(u[-1])) + 6
    base_z = 0.0 if up else flights * riser
    rise = base_z + direction * riser * _staircase(u)
    bob = p.step_amplitude_m * rng.uniform(0.3, 0.8) * e * np.cos(2 * np.pi * u)
    yaw, pitch, roll = _head(t, rng, rng.uniform(0.02, 0.15), rng.uniform(0.02, 0.08))
    centre_y = rng.normal(0.0, 0.1)
    stairs = StairGeometry(
        tread0_x=-(u[0] * tread) + 0.0,
        centre_y=centre_y,
        tread_m=tread,
        riser_m=riser,
        base_z=base_z,
        direction=direction,
        width_m=rng.uniform(1.0, 1.8),
    )
    swing = np.sin(np.pi * u)
    return _Motion(
        speed=tread * cadence * e,
        heading=np.zeros_like(t),
        lateral=centre_y + p.sway_m * rng.uniform(0.5, 1.2) * e * swing,
        height=p.eye_height_m + rise + bob,
        yaw=yaw + rng.uniform(0.01, 0.05) * e * np.sin(np.pi * u + 0.7),
        pitch=pitch + rng.uniform(0.1, 0.4) * (1 if up else 1.2),
        roll=roll + rng.uniform(0.01, 0.05) * e * swing,
        stairs=stairs,
    )


def _turn(t: np.ndarray, p: SubjectParams, rng: np.random.Generator, tp: float) -> _Motion:
    span = t[-1] - t[0]
    duration = _duration(rng, 0.7, 1.8, span)
    start = t[0] + rng.uniform(0.0, span - duration)
    angle = rng.choice([-1.0, 1.0]) * min(rng.uniform(0.8, 3.2), 2.0 * duration)  # <= 4 rad/s
    w = (t - start) / duration
    drift = rng.normal(0.0, 0.05) * np.sin(np.pi * np.clip(w, 0.0, 1.0)) ** 2  # shuffling
    stepping = _smooth((w + 0.3) / 0.3) * (1.0 - _smooth((w - 1.0) / 0.3))
    cadence = p.cadence_hz * rng.uniform(0.6, 0.95)
    phase = 2 * np.pi * cadence * (t - t[0]) + rng.uniform(0, 2 * np.pi)
    bob = p.step_amplitude_m * rng.uniform(0.15, 0.5)
    yaw, pitch, roll = _head(t, rng, rng.uniform(0.02, 0.15), rng.uniform(0.02, 0.1))
    return _Motion(
        speed=drift,
        heading=rng.uniform(-np.pi, np.pi) + angle * _staircase(np.clip(w, 0.0, 1.0)),
        lateral=p.sway_m * 0.4 * stepping * np.sin(phase / 2),
        height=p.eye_height_m + bob * stepping * np.cos(phase),
        yaw=yaw,
        pitch=pitch + rng.uniform(-0.05, 0.2),
        roll=roll + 0.02 * stepping * np.sin(phase / 2),
    )


def _sit_stand(t: np.ndarray, p: SubjectParams, rng: np.random.Generator, tp: float) -> _Motion:
    span = t[-1] - t[0]
    duration = _duration(rng, 1.0, 1.8, span)
    start = t[0] + rng.uniform(-0.3 * duration, span - 0.6 * duration)
    w = (t - start) / duration
    standing_up = rng.uniform() < 0.5
    if not standing_up:
        w = 1.0 - w  # sitting down is standing up played backwards
    drop, shift = rng.uniform(0.4, 0.6), rng.uniform(0.1, 0.3)
    lean = rng.uniform(0.35, 0.75) * np.sin(np.pi * np.clip(w, 0.0, 1.0)) ** 2
    rate = shift * _smooth_rate(w) / duration * (1.0 if standing_up else -1.0)
    yaw, pitch, roll = _head(t, rng, rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.08))
    return _Motion(
        speed=rate,
        heading=np.full_like(t, rng.uniform(-np.pi, np.pi)),
        lateral=_wander(t, rng, 0.01),
        height=p.eye_height_m - drop * (1.0 - _smooth((w - 0.25) / 0.75)),
        yaw=yaw,
        pitch=pitch + lean + rng.uniform(-0.05, 0.15),
        roll=roll,
    )


_MotionModel = Callable[[np.ndarray, SubjectParams, np.random.Generator, float], _Motion]
_MODELS: dict[str, _MotionModel] = {
    "still": _still,
    "walk": partial(_gait, running=False),
    "run": partial(_gait, running=True),
    "stairs_up": partial(_stairs, up=True),
    "stairs_down": partial(_stairs, up=False),
    "turn_in_place": _turn,
    "sit_stand": _sit_stand,
}


def simulate_trajectory(
    activity: str,
    subject_params: SubjectParams,
    seconds: float,
    rate_hz: float,
    rng: np.random.Generator,
    *,
    start_s: float = 0.0,
    transition_prob: float = 0.0,
) -> Trajectory:
    """Sample one activity's body trajectory on a uniform time grid.

    Args:
        activity: One of :data:`ACTIVITIES`.
        subject_params: The subject's gait parameters.
        seconds: Duration; the grid has ``round(seconds * rate_hz)`` samples.
        rate_hz: Sample rate of the grid (use >= 100 Hz before differentiating).
        rng: Source of the per-clip variation (consumed).
        start_s: Time of the first sample.
        transition_prob: Probability of a still lead-in or lead-out (walk, run, stairs).

    Returns:
        The trajectory: times [T] s, positions [T, 3] m, orientations [T, 3, 3].

    Raises:
        DataError: for an unknown activity or fewer than 3 samples.
    """
    if activity not in _MODELS:
        raise DataError(f"unknown activity {activity!r}; choose one of {', '.join(ACTIVITIES)}")
    n = round(seconds * rate_hz)
    if not np.isfinite(seconds * rate_hz) or n < 3:
        raise DataError(f"need >= 3 samples, got seconds={seconds} at rate_hz={rate_hz}")
    t = start_s + np.arange(n) / rate_hz
    m = _MODELS[activity](t, subject_params, rng, transition_prob)
    x = _cumtrapz(m.speed * np.cos(m.heading), t)
    y = _cumtrapz(m.speed * np.sin(m.heading), t)
    positions = np.stack(
        [x - m.lateral * np.sin(m.heading), y + m.lateral * np.cos(m.heading), m.height], axis=1
    )
    orientations = rotation_zyx(m.heading + m.yaw, m.pitch, m.roll)
    return Trajectory(t, positions, orientations, m.stairs)
