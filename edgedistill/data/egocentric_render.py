"""Procedural 3-D scenes and a vectorised ray caster for the *synthetic* egocentric generator.

A :class:`Scene` is a textured ground plane (z = 0), axis-aligned textured boxes (clutter,
corridor walls, stair steps) and a sky gradient with distance fog. :func:`render_frames` casts
one ray per pixel through a pinhole camera (x forward, y left, z up in the camera frame) and
shades the nearest hit with a procedural texture, Lambert lighting and fog. Textures fade to
their mean colour once a texture cell is smaller than about a pixel (a cheap level of
detail), which keeps small frames from aliasing into flicker.

Rays are cast in float32 (several times faster than float64 here and precise enough for a
few tens of metres) with integer texture hashing and no threads, so a scene and a camera path
always give the same bytes on the same platform. Ray-box intersection is the slab method
(Kay & Kajiya, "Ray tracing complex scenes", SIGGRAPH 1986).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgedistill.data.egocentric_motion import SubjectParams, Trajectory, rotation_zyx
from edgedistill.errors import DataError

KIND_CLUTTER, KIND_WALL, KIND_STEP = 0, 1, 2
GROUND_TILES, GROUND_PLANKS, GROUND_SPECKLE = 0, 1, 2
HEAD_OFFSET_M = np.array([0.08, 0.0, 0.05])  # camera relative to the IMU, body frame (m)


@dataclass(frozen=True)
class Scene:
    """What the camera can see.

    Attributes:
        box_lo: [B, 3] lower corners of the boxes (metres, world frame).
        box_hi: [B, 3] upper corners.
        box_color: [B, 3] base RGB in [0, 1].
        box_cell_m: [B] texture cell size on the box faces (metres).
        box_kind: [B] int, ``KIND_CLUTTER``, ``KIND_WALL`` or ``KIND_STEP``.
        ground_colors: [2, 3] the two RGB colours the ground texture mixes.
        ground_cell_m: Ground texture cell size (metres).
        ground_style: ``GROUND_TILES``, ``GROUND_PLANKS`` or ``GROUND_SPECKLE``.
        sky_horizon: [3] RGB at the horizon (also the fog colour); sky_zenith: [3] overhead.
        sun: [3] unit vector towards the light; ambient: light in shadowed faces, in [0, 1].
        fog_m: Distance at which fog hides 63% of a surface (metres).
        nosing_color: [3] RGB of the stripe on the front edge of every stair tread.
        salt: Integer mixed into every texture hash.
    """

    box_lo: np.ndarray
    box_hi: np.ndarray
    box_color: np.ndarray
    box_cell_m: np.ndarray
    box_kind: np.ndarray
    ground_colors: np.ndarray
    ground_cell_m: float
    ground_style: int
    sky_horizon: np.ndarray
    sky_zenith: np.ndarray
    sun: np.ndarray
    ambient: float
    fog_m: float
    nosing_color: np.ndarray
    salt: int


def camera_trajectory(body: Trajectory, params: SubjectParams) -> Trajectory:
    """Camera poses: the body pose composed with the head offset and the camera tilt."""
    tilt = rotation_zyx(np.zeros(1), np.full(1, params.camera_pitch_rad), np.zeros(1))[0]
    positions = body.positions + body.orientations @ HEAD_OFFSET_M
    return Trajectory(body.times, positions, body.orientations @ tilt, body.stairs)


def _hash(ix: np.ndarray, iy: np.ndarray, salt: int | np.ndarray) -> np.ndarray:
    """Uniform [0, 1] value per integer cell (an integer avalanche hash, platform-exact)."""
    mask = np.uint64(0xFFFFFFFF)
    h = ix.astype(np.int64).astype(np.uint64) * np.uint64(73856093)
    h ^= iy.astype(np.int64).astype(np.uint64) * np.uint64(19349663)
    h ^= (np.asarray(salt, dtype=np.int64).astype(np.uint64) & mask) * np.uint64(83492791)
    h &= mask
    for _ in range(2):
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(0x45D9F3B)) & mask
    h ^= h >> np.uint64(16)
    return h.astype(np.float32) * np.float32(2.0**-32)


def _color(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    return rng.uniform(lo, hi, 3)


def _stair_boxes(trajectory: Trajectory) -> list[tuple[np.ndarray, np.ndarray, int]]:
    stairs = trajectory.stairs
    if stairs is None:
        return []
    x = trajectory.positions[:, 0]
    first = int(np.floor((x.min() - stairs.tread0_x) / stairs.tread_m)) - 3
    last = int(np.ceil((x.max() - stairs.tread0_x) / stairs.tread_m)) + 10
    y0, y1 = stairs.centre_y - stairs.width_m / 2, stairs.centre_y + stairs.width_m / 2
    boxes = []
    top_max = 0.0
    for n in range(first, last + 1):
        top = stairs.base_z + stairs.direction * n * stairs.riser_m
        if top <= 1e-6:
            continue
        top_max = max(top_max, top)
        centre = stairs.tread0_x + n * stairs.tread_m
        lo = np.array([centre - stairs.tread_m / 2, y0, -0.5])
        hi = np.array([centre + stairs.tread_m / 2, y1, top])
        if n in (first, last):  # extend the end steps into landings
            lo[0] -= 12.0 * (n == first)
            hi[0] += 12.0 * (n == last)
        boxes.append((lo, hi, KIND_STEP))
    x_lo, x_hi = stairs.tread0_x + first * stairs.tread_m - 12.0, x.max() + 15.0
    for side in (-1.0, 1.0):
        y = stairs.centre_y + side * (stairs.width_m / 2 + 0.1)
        boxes.append(
            (np.array([x_lo, y - 0.1, -0.5]), np.array([x_hi, y + 0.1, top_max + 2.5]), KIND_WALL)
        )
    return boxes


def _corridor(
    trajectory: Trajectory, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    forward = trajectory.orientations[0][:, 0]
    along = 0 if abs(forward[0]) >= abs(forward[1]) else 1
    across = 1 - along
    p = trajectory.positions
    height = rng.uniform(2.2, 3.5)
    boxes = []
    for side in (-1.0, 1.0):
        edge = p[:, across].max() if side > 0 else p[:, across].min()
        c = edge + side * rng.uniform(0.8, 2.5)
        lo, hi = np.zeros(3), np.zeros(3)
        lo[along], hi[along] = p[:, along].min() - 15.0, p[:, along].max() + 15.0
        lo[across], hi[across] = c - 0.1, c + 0.1
        lo[2], hi[2] = -0.5, height
        boxes.append((lo, hi, KIND_WALL))
    return boxes


def make_scene(trajectory: Trajectory, rng: np.random.Generator) -> Scene:
    """A random scene around a trajectory: stairs if it climbs some, walls and clutter.

    Clutter boxes keep at least 0.7 m (plus their half size) from every body position, so the
    camera never enters one; walls run alongside the path.

    Args:
        trajectory: The body path the camera will follow (world frame).
        rng: Source of the scene's layout and appearance (consumed).
    """
    boxes = _stair_boxes(trajectory)
    if trajectory.stairs is None and rng.uniform() < 0.5:
        boxes += _corridor(trajectory, rng)
    xy = trajectory.positions[:, :2]
    lo_xy, hi_xy = xy.min(0) - 6.0, xy.max(0) + 6.0
    wanted, tries = int(rng.integers(3, 9)), 0
    clutter = 0
    while clutter < wanted and tries < 60:
        tries += 1
        centre = rng.uniform(lo_xy, hi_xy)
        half = rng.uniform(0.15, 1.0, 2)
        if np.min(np.linalg.norm(xy - centre, axis=1)) < np.hypot(*half) + 0.7:
            continue
        height = rng.uniform(0.3, 2.5)
        lo = np.array([centre[0] - half[0], centre[1] - half[1], -0.5])
        hi = np.array([centre[0] + half[0], centre[1] + half[1], height])
        boxes.append((lo, hi, KIND_CLUTTER))
        clutter += 1
    b = len(boxes)
    elevation, azimuth = rng.uniform(0.5, 1.2), rng.uniform(-np.pi, np.pi)
    return Scene(
        box_lo=np.array([x[0] for x in boxes]).reshape(b, 3),
        box_hi=np.array([x[1] for x in boxes]).reshape(b, 3),
        box_color=rng.uniform(0.1, 0.95, (b, 3)),
        box_cell_m=rng.uniform(0.15, 0.8, b),
        box_kind=np.array([x[2] for x in boxes], dtype=np.int64),
        ground_colors=np.stack([_color(rng), _color(rng)]),
        ground_cell_m=float(rng.uniform(0.25, 1.0)),
        ground_style=int(rng.integers(3)),
        sky_horizon=_color(rng, 0.55, 0.95),
        sky_zenith=_color(rng, 0.2, 0.8),
        sun=np.array(
            [
                np.cos(elevation) * np.cos(azimuth),
                np.cos(elevation) * np.sin(azimuth),
                np.sin(elevation),
            ]
        ),
        ambient=float(rng.uniform(0.35, 0.6)),
        fog_m=float(rng.uniform(8.0, 25.0)),
        nosing_color=_color(rng, 0.0, 1.0),
        salt=int(rng.integers(2**31)),
    )


def _pattern(
    u: np.ndarray, w: np.ndarray, cell: np.ndarray, style: int, salt: int | np.ndarray
) -> np.ndarray:
    """Texture value in [0, 1] at face coordinates (u, w) in metres; cells of size ``cell``."""
    if style == GROUND_PLANKS:
        row = np.floor(w / (0.4 * cell))
        cu = np.floor(u / (3.0 * cell) + 0.5 * _hash(row, row, salt + 7))
        value = _hash(cu, row, salt)
        fu, fw = u / (3.0 * cell) % 1.0, w / (0.4 * cell) % 1.0
        grout = (np.minimum(fu, 1 - fu) < 0.02) | (np.minimum(fw, 1 - fw) < 0.06)
        return np.where(grout, 0.15, 0.3 + 0.7 * value)
    if style == GROUND_SPECKLE:
        fine = _hash(np.floor(u / (0.2 * cell)), np.floor(w / (0.2 * cell)), salt)
        coarse = _hash(np.floor(u / cell), np.floor(w / cell), salt + 1)
        return 0.5 * fine + 0.5 * coarse
    cu, cw = np.floor(u / cell), np.floor(w / cell)
    fu, fw = u / cell - cu, w / cell - cw
    grout = (np.minimum(fu, 1 - fu) < 0.05) | (np.minimum(fw, 1 - fw) < 0.05)
    return np.where(grout, 0.1, 0.35 + 0.65 * _hash(cu, cw, salt))


def _lod(value: np.ndarray, footprint: np.ndarray, cell: np.ndarray | float) -> np.ndarray:
    """Fade the texture towards 0.5 where a pixel covers more than about a third of a cell."""
    detail = np.clip(2.0 - 6.0 * footprint / cell, 0.0, 1.0)
    return 0.5 + (value - 0.5) * detail


def render_frames(
    camera: Trajectory, scene: Scene, frame_size: int, *, fov_deg: float = 70.0
) -> np.ndarray:
    """Render the camera's view at each of its poses.

    Args:
        camera: F camera poses (camera x axis = viewing direction, z = image up), world frame.
        scene: The scene to draw.
        frame_size: Frame width and height in pixels.
        fov_deg: Horizontal (= vertical) field of view in degrees.

    Returns:
        [F, frame_size, frame_size, 3] uint8 RGB frames.

    Raises:
        DataError: for a frame size outside 4..512 or a field of view outside (0, 170).
    """
    if not 4 <= frame_size <= 512:
        raise DataError(f"frame_size must be in 4..512 pixels, got {frame_size}")
    if not 0.0 < fov_deg < 170.0:
        raise DataError(f"fov_deg must be in (0, 170) degrees, got {fov_deg}")
    s = frame_size
    focal = (s / 2) / np.tan(np.radians(fov_deg) / 2)
    pix = np.arange(s) + 0.5 - s / 2
    row, col = np.meshgrid(pix, pix, indexing="ij")
    rays = np.stack([np.full_like(row, focal), -col, -row], axis=-1).reshape(-1, 3)
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    # Contiguous float32 per-axis columns [F * P] (frame-major, then pixel): several times
    # faster than [N, 3] float64 rows, and precise enough for a few tens of metres.
    world = (rays @ np.swapaxes(camera.orientations, 1, 2)).astype(np.float32)  # [F, P, 3]
    d = [np.ascontiguousarray(world[..., k]).reshape(-1) for k in range(3)]
    o = [np.repeat(camera.positions[:, k].astype(np.float32), len(rays)) for k in range(3)]
    inv = [1.0 / np.where(np.abs(dk) < 1e-12, 1e-12, dk) for dk in d]
    t_best, hit_box, hit_axis = _cast(o, d, inv, scene)
    image = _shade(o, d, t_best, hit_box, hit_axis, scene, np.radians(fov_deg) / s)
    out = np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)  # [3, F * P]
    return np.ascontiguousarray(out.reshape(3, len(camera.times), s, s).transpose(1, 2, 3, 0))


def _cast(
    o: list[np.ndarray], d: list[np.ndarray], inv: list[np.ndarray], scene: Scene
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of every ray: (distance [N], box index or -1 [N], face axis [N])."""
    n = len(d[0])
    ground = d[2] < -1e-9
    t_best = np.where(ground, -o[2] / np.where(ground, d[2], -1.0), np.inf)
    hit_box = np.full(n, -1)
    hit_axis = np.full(n, 2)
    box_lo, box_hi = scene.box_lo.astype(np.float32), scene.box_hi.astype(np.float32)
    for b in range(len(scene.box_kind)):
        near, far = [], []
        for k in range(3):  # slab test, one axis at a time
            t1 = (box_lo[b, k] - o[k]) * inv[k]
            t2 = (box_hi[b, k] - o[k]) * inv[k]
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
        t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
        hit = (t_near <= t_far) & (t_near > 1e-4) & (t_near < t_best)
        if not hit.any():
            continue
        t_best[hit] = t_near[hit]
        hit_box[hit] = b
        nx, ny, nz = near[0][hit], near[1][hit], near[2][hit]
        hit_axis[hit] = np.where((nx >= ny) & (nx >= nz), 0, np.where(ny >= nz, 1, 2))
    return t_best, hit_box, hit_axis


def _shade(
    o: list[np.ndarray],
    d: list[np.ndarray],
    t_best: np.ndarray,
    hit_box: np.ndarray,
    axis: np.ndarray,
    scene: Scene,
    pixel_angle: float,
) -> np.ndarray:
    """[3, N] RGB in [0, 1] of every ray's hit (sky where it hits nothing)."""
    sky = ~np.isfinite(t_best)
    t = np.where(sky, 0.0, t_best)
    p = [o[k] + t * d[k] for k in range(3)]

    def pick(v: list[np.ndarray], a: np.ndarray) -> np.ndarray:
        return np.where(a == 0, v[0], np.where(a == 1, v[1], v[2]))

    d_axis = pick(d, axis)
    u, w = pick(p, (axis + 1) % 3), pick(p, (axis + 2) % 3)
    footprint = t * pixel_angle / np.maximum(np.abs(d_axis), 0.15)
    on_box = hit_box >= 0
    facing = np.where(on_box, -np.sign(d_axis), 1.0) * scene.sun.astype(np.float32)[axis]
    light = scene.ambient + (1 - scene.ambient) * np.clip(facing, 0.0, 1.0)

    # Colours are channel-first [3, N]: numpy is much faster with the long axis innermost.
    color = np.empty((3, len(t)), dtype=np.float32)
    g = ~on_box
    cell = np.asarray(scene.ground_cell_m, dtype=np.float32)
    value = _lod(_pattern(u[g], w[g], cell, scene.ground_style, scene.salt), footprint[g], cell)
    a, c = scene.ground_colors.astype(np.float32)[:, :, None]
    color[:, g] = a + (c - a) * value
    bi = hit_box[on_box]
    cells = scene.box_cell_m.astype(np.float32)[bi]
    value = _pattern(u[on_box], w[on_box], cells, GROUND_TILES, scene.salt + 101 * (bi + 1))
    value = _lod(value, footprint[on_box], cells)
    kind, face = scene.box_kind[bi], axis[on_box]
    shade = np.where((kind == KIND_STEP) & (face != 2), 0.55, 1.0) * (0.55 + 0.45 * value)
    px = p[0][on_box]
    x_lo, x_hi = scene.box_lo[bi, 0].astype(np.float32), scene.box_hi[bi, 0].astype(np.float32)
    edge = np.minimum(px - x_lo, x_hi - px)
    nosing = (kind == KIND_STEP) & (face == 2) & (edge < 0.04)
    box_color = scene.box_color.astype(np.float32)[bi].T
    nosing_color = scene.nosing_color.astype(np.float32)[:, None]
    color[:, on_box] = np.where(nosing, nosing_color, box_color * shade)

    fog = np.exp(-t / scene.fog_m)
    horizon = scene.sky_horizon.astype(np.float32)[:, None]
    zenith = scene.sky_zenith.astype(np.float32)[:, None]
    image = color * (light * fog) + horizon * (1 - fog)
    up = np.clip(d[2], 0.0, 1.0) ** 0.6
    return np.where(sky, horizon + (zenith - horizon) * up, image)
