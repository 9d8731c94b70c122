"""Procedurally rendered indoor scenes: the embedded default benchmark.

Why it exists: the paper's datasets (NYUv2, Tiny-Taskonomy) cannot be downloaded at run time, yet the
demo, the tests and the method comparisons need a dense multi-task benchmark that runs anywhere. This
module ray-casts simple indoor scenes with vectorised numpy, so sample ``i`` of a split is a pure function
of ``(seed, split, i)``: no files, no network, identical on every machine, splits disjoint.

What it renders: a box-shaped room (floor, four walls, ceiling, doors and pictures flush with the walls,
so that only their appearance tells them from the wall) with 3-7 objects resting on the floor (spheres,
axis-aligned or rotated boxes, upright cylinders), seen by a pinhole camera (65 degree field of view) at a
random height, position, yaw, pitch and small roll inside the room. Per pixel it produces

* ``input``: RGB with per-class textures (floor checker or planks, striped walls with a skirting board,
  plain ceiling, panelled doors, framed pictures, segmented spheres, crate-like boxes, banded cylinders),
  random per-instance colours (every class draws from the same colour distribution, so colour alone does
  not identify a class), Lambertian shading from a random point light plus ambient, auto-exposure to a
  random mean brightness, and Gaussian noise; normalised as ``(rgb - 0.5) / 0.25``. Texture contrast
  fades where a pattern would alias (cheaper than supersampling).
* ``segment_semantic``: class ids, see ``CLASS_NAMES`` (255 is reserved for ignore, never produced).
* ``depth_zbuffer``: camera-frame z in metres (every ray hits the closed room, so all pixels are valid;
  0 would mean invalid).
* ``normal``: camera-frame unit surface normal facing the camera. Convention: x right, y down,
  z forward (away from the camera), so visible surfaces have a negative z component.
* ``edge_texture`` (5-task variant): 1 on surface boundaries (occlusions, room creases, panel outlines),
  on normal creases and on albedo (texture) edges, soft in between; rescaled from [0, 1] to [-1, 1].
* ``keypoints2d`` (5-task variant): Gaussian blobs at the visible projected corners of the room, the
  boxes, the doors and the pictures; rescaled from [0, 1] to [-1, 1] (like Taskonomy's clipped and rescaled maps).

Augmentation (train split by default) is a pure function of an augmentation seed: horizontal flip with
p = 0.5 (which negates the normal's x component) and a mild brightness/contrast jitter of the input.

Statistics over 100 train samples at 64x64: pixel fractions floor .24, wall .33, ceiling .07, sphere .06,
box .09, cylinder .11, door .08, picture .03; depth mean 2.8 m, std 1.35 m (1.14 m within an image).
A 3-layer CNN trained for 90 s on one core reaches 81% pixel accuracy (majority class: 32%), 22 degrees
mean normal error (mean normal: 54) and 0.54 m depth error (constant: 1.14 m).

Cost, measured on one core of the development box (numpy 2.4, 64x64): about 2.8 ms per sample with the
3 tasks, 3.5 ms with 5 (6 ms at 128x128). ``cache=True`` keeps rendered samples on the dataset in a compact
form (uint8 labels, float16 image and soft maps, about 95 KB per 3-task sample at 64x64); cached and
uncached reads are identical because both go through that form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "ceiling", "sphere", "box", "cylinder", "door", "picture")
FLOOR, WALL, CEILING, SPHERE, BOX, CYLINDER, DOOR, PICTURE = range(len(CLASS_NAMES))
IGNORE_INDEX = 255

TASKS_3 = ("segment_semantic", "normal", "depth_zbuffer")
TASKS_5 = TASKS_3 + ("keypoints2d", "edge_texture")

DEFAULT_LENGTHS: dict[str, int] = {"train": 2000, "val": 200, "test": 200}
STREAM_LENGTH = 2**31 - 1  # ``--train_size 0``: an unbounded stream of fresh scenes (prime: see data/sampler.py)
RGB_MEAN = 0.5
RGB_STD = 0.25

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_AUG_TAG = 0xA9
_HFOV = math.radians(65.0)
_NOISE_STD = 0.02
_INF = np.inf

# Room faces are surface ids 0..5: 2*axis + (0 for the low side, 1 for the high side).
_FACE_CLASS = (WALL, WALL, FLOOR, CEILING, WALL, WALL)


# --------------------------------------------------------------------------------------------- scene


@dataclass
class _Obj:
    kind: int  # SPHERE, BOX or CYLINDER
    centre: np.ndarray  # world (3,), y up; boxes/spheres: geometric centre, cylinders: base centre
    size: np.ndarray  # sphere (r,), box half extents (3,), cylinder (r, height)
    theta: float  # rotation about the vertical axis (boxes), texture phase (others)
    colours: np.ndarray  # (2, 3)
    style: float  # per-instance texture parameter

    @property
    def radius(self) -> float:  # bounding sphere
        if self.kind == SPHERE:
            return float(self.size[0])
        if self.kind == BOX:
            return float(np.linalg.norm(self.size))
        return float(math.hypot(self.size[0], self.size[1] / 2))

    @property
    def bcentre(self) -> np.ndarray:
        if self.kind == CYLINDER:
            return self.centre + np.array([0.0, self.size[1] / 2, 0.0])
        return self.centre


@dataclass
class _Panel:
    """A flat rectangle on a wall (door or picture): same geometry as the wall, different look."""

    kind: int  # DOOR or PICTURE
    face: int  # room face id of the wall (0, 1, 4 or 5)
    u: float  # centre along the wall (z for x-walls, x for z-walls)
    width: float
    y0: float
    y1: float
    colours: np.ndarray
    style: float


@dataclass
class _Scene:
    room: np.ndarray  # (3,) extent: x in [0, W], y in [0, H], z in [0, L]
    cam: np.ndarray  # (3,)
    rot: np.ndarray  # (3, 3) columns = camera right, down, forward in world coordinates
    objects: list[_Obj]
    panels: list[_Panel]
    light: np.ndarray
    ambient: float
    diffuse: float
    tint: np.ndarray
    exposure: float  # mean image brightness before noise and clipping
    floor_style: int  # 0 checker, 1 planks
    floor_period: float
    wall_period: float
    surface_colours: np.ndarray  # (6, 2, 3): per room face


def _colour_pair(rng: np.random.Generator) -> np.ndarray:
    """Base colour and pattern colour from one distribution shared by all classes."""
    hsv = np.stack([rng.uniform(0, 1, 2), rng.uniform(0.1, 0.85, 2), rng.uniform(0.3, 0.95, 2)], axis=1)
    rgb = np.array([_hsv_to_rgb(*c) for c in hsv])
    if rng.random() < 0.5:  # tone-on-tone pattern
        rgb[1] = rgb[0] * rng.uniform(0.45, 0.7)
    return rgb


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    fwd = np.array([math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)])
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    cr, sr = math.cos(roll), math.sin(roll)
    return np.stack([cr * right + sr * down, -sr * right + cr * down, fwd], axis=1)


def _wall_point(room: np.ndarray, cam: np.ndarray, ang: float) -> tuple[int, float]:
    """Wall face id and position along it where a horizontal ray from the camera meets the walls."""
    dx, dz = math.sin(ang), math.cos(ang)
    tx = (room[0] - cam[0]) / dx if dx > 0 else -cam[0] / min(dx, -1e-12)
    tz = (room[2] - cam[2]) / dz if dz > 0 else -cam[2] / min(dz, -1e-12)
    if tx < tz:
        return (1 if dx > 0 else 0), cam[2] + tx * dz
    return (5 if dz > 0 else 4), cam[0] + tz * dx


def _sample_scene(rng: np.random.Generator) -> _Scene:
    room = np.array([rng.uniform(4.0, 8.0), rng.uniform(2.5, 3.2), rng.uniform(4.0, 8.0)])
    margin = 0.5
    cam = np.array([rng.uniform(margin, room[0] - margin), rng.uniform(0.9, 1.8),
                    rng.uniform(margin, room[2] - margin)])
    to_centre = math.atan2(room[0] / 2 - cam[0], room[2] / 2 - cam[2])
    yaw = to_centre + rng.uniform(-1.2, 1.2)
    pitch = rng.uniform(-0.55, 0.1)
    rot = _camera_rotation(yaw, pitch, rng.uniform(-0.08, 0.08))
    objects = _sample_objects(rng, room, cam, yaw)
    panels = _sample_panels(rng, room, cam, yaw)
    light = np.array([rng.uniform(0.1, 0.9) * room[0], room[1] - 0.15, rng.uniform(0.1, 0.9) * room[2]])
    return _Scene(
        room=room, cam=cam, rot=rot, objects=objects, panels=panels, light=light,
        ambient=rng.uniform(0.2, 0.45), diffuse=rng.uniform(0.7, 1.1),
        tint=1.0 + rng.uniform(-0.08, 0.08, 3), exposure=rng.uniform(0.38, 0.55),
        floor_style=int(rng.integers(0, 2)), floor_period=rng.uniform(0.5, 1.4),
        wall_period=rng.uniform(0.25, 0.8),
        surface_colours=np.stack([_colour_pair(rng) for _ in range(6)]),
    )


def _sample_objects(rng: np.random.Generator, room: np.ndarray, cam: np.ndarray, yaw: float) -> list[_Obj]:
    """3-7 furniture objects on the floor, mostly in view, never overlapping each other or the camera."""
    objects: list[_Obj] = []
    footprints: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(3, 8))):
        kind = int(rng.choice([SPHERE, BOX, CYLINDER]))
        if kind == SPHERE:
            size = np.array([rng.uniform(0.2, 0.6)])
            foot, y = size[0], size[0]
        elif kind == BOX:
            size = np.array([rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.7), rng.uniform(0.15, 0.6)])
            foot, y = math.hypot(size[0], size[2]), size[1]
        else:
            size = np.array([rng.uniform(0.15, 0.45), rng.uniform(0.3, 1.6)])
            foot, y = size[0], 0.0
        theta = rng.uniform(0, math.pi / 2) if (kind != BOX or rng.random() < 0.7) else 0.0
        colours, style = _colour_pair(rng), rng.random()
        for _try in range(12):
            # Mostly in front of the camera so that objects are seen, sometimes anywhere.
            if rng.random() < 0.8:
                ang, dist = yaw + rng.uniform(-0.65, 0.65), rng.uniform(1.0, 5.5)
                x, z = cam[0] + dist * math.sin(ang), cam[2] + dist * math.cos(ang)
            else:
                x, z = rng.uniform(0, room[0]), rng.uniform(0, room[2])
            inside = foot + 0.05 <= x <= room[0] - foot - 0.05 and foot + 0.05 <= z <= room[2] - foot - 0.05
            clear_cam = math.hypot(x - cam[0], z - cam[2]) > foot + 0.5
            clear = all(math.hypot(x - fx, z - fz) > foot + fr + 0.05 for fx, fz, fr in footprints)
            if inside and clear_cam and clear:
                footprints.append((x, z, foot))
                objects.append(_Obj(kind, np.array([x, y, z]), size, theta, colours, style))
                break
    return objects


def _sample_panels(rng: np.random.Generator, room: np.ndarray, cam: np.ndarray, yaw: float) -> list[_Panel]:
    """1-2 doors and 2-5 pictures on the walls, mostly in view, never overlapping on one wall."""
    panels: list[_Panel] = []
    for kind in [DOOR] * int(rng.integers(1, 3)) + [PICTURE] * int(rng.integers(2, 6)):
        if kind == DOOR:
            width, y0, y1 = rng.uniform(0.8, 1.3), 0.0, rng.uniform(1.9, 2.3)
        else:
            width, height, mid = rng.uniform(0.5, 1.6), rng.uniform(0.4, 1.1), rng.uniform(1.2, 1.8)
            y0, y1 = mid - height / 2, mid + height / 2
        # Mostly where a horizontal ray inside the view cone meets a wall, so that panels are seen.
        if rng.random() < 0.75:
            face, u = _wall_point(room, cam, yaw + rng.uniform(-0.6, 0.6))
        else:
            face = int(rng.choice([0, 1, 4, 5]))
            u = rng.uniform(0.0, room[2] if face < 2 else room[0])
        wall_len = room[2] if face < 2 else room[0]
        u = min(max(u, width / 2 + 0.1), wall_len - width / 2 - 0.1)
        if all(q.face != face or abs(q.u - u) > (q.width + width) / 2 + 0.1 for q in panels):
            panels.append(_Panel(kind, face, u, width, y0, y1, _colour_pair(rng), rng.random()))
    return panels


# ------------------------------------------------------------------------------------- ray casting


def _hit_room(o: np.ndarray, d: tuple[np.ndarray, ...], room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance of rays starting inside the room box, and the face id hit."""
    ts = []
    for a in range(3):
        da = np.where(np.abs(d[a]) < 1e-12, 1e-12, d[a])
        ts.append(np.where(da > 0, room[a] - o[a], -o[a]) / da)
    t = np.minimum(np.minimum(ts[0], ts[1]), ts[2])
    axis = np.where(ts[0] == t, 0, np.where(ts[1] == t, 1, 2))
    high = np.choose(axis, [d[0] > 0, d[1] > 0, d[2] > 0])
    return t, 2 * axis + high


def _hit_sphere(o: np.ndarray, d: tuple[np.ndarray, ...], ob: _Obj) -> np.ndarray:
    ox, oy, oz = o - ob.centre
    dx, dy, dz = d
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    disc = b * b - a * (ox * ox + oy * oy + oz * oz - ob.size[0] ** 2)
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc > 0) & (t > 0), t, _INF)


def _to_box_frame(x: np.ndarray, z: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    return c * x + s * z, -s * x + c * z


def _hit_box(o: np.ndarray, d: tuple[np.ndarray, ...], ob: _Obj) -> np.ndarray:
    ox, oy, oz = o - ob.centre
    lox, loz = _to_box_frame(ox, oz, ob.theta)
    ldx, ldz = _to_box_frame(d[0], d[2], ob.theta)
    near, far = None, None
    for oa, da, h in ((lox, ldx, ob.size[0]), (oy, d[1], ob.size[1]), (loz, ldz, ob.size[2])):
        inv = 1.0 / np.where(np.abs(da) < 1e-12, 1e-12, da)
        t1, t2 = (-h - oa) * inv, (h - oa) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        near = lo if near is None else np.maximum(near, lo)
        far = hi if far is None else np.minimum(far, hi)
    return np.where((near <= far) & (near > 0), near, _INF)


def _hit_cylinder(o: np.ndarray, d: tuple[np.ndarray, ...], ob: _Obj) -> np.ndarray:
    ox, oy, oz = o - ob.centre
    dx, dy, dz = d
    r, h = ob.size
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        ys = oy + ts * dy
        side = np.where((disc > 0) & (ts > 0) & (ys >= 0) & (ys <= h), ts, _INF)
        tc = (h - oy) / dy
        cx, cz = ox + tc * dx, oz + tc * dz
    cap = np.where((tc > 0) & (cx * cx + cz * cz <= r * r), tc, _INF)
    return np.minimum(side, cap)


_HITS = {SPHERE: _hit_sphere, BOX: _hit_box, CYLINDER: _hit_cylinder}


def _screen_window(sc: _Scene, ob: _Obj, f: float, size: int) -> tuple[slice, slice] | None:
    """Conservative pixel rectangle covering the object's bounding sphere (None: not visible)."""
    p = (ob.bcentre - sc.cam) @ sc.rot
    r = ob.radius * 1.02 + 1e-3
    if p[2] + r <= 0:
        return None
    if p[2] - r < 0.05:
        return slice(0, size), slice(0, size)
    lim = []
    for a in (0, 1):
        lo = min((p[a] - r) / (p[2] - r), (p[a] - r) / (p[2] + r))
        hi = max((p[a] + r) / (p[2] - r), (p[a] + r) / (p[2] + r))
        i0 = max(int(math.floor(size / 2 + f * lo - 0.5)), 0)
        i1 = min(int(math.ceil(size / 2 + f * hi - 0.5)) + 1, size)
        if i0 >= i1:
            return None
        lim.append(slice(i0, i1))
    return lim[1], lim[0]


# ---------------------------------------------------------------------------------------- textures


def _hash2(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (no RNG state involved)."""
    v = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return v - np.floor(v)


def _square(x: np.ndarray, duty: float = 0.5) -> np.ndarray:
    return ((x - np.floor(x)) < duty).astype(np.float64)


def _fade(v: np.ndarray, mean: float, period: float, foot: np.ndarray) -> np.ndarray:
    """Blend a pattern toward its mean where a period spans too few pixels (cheap anti-aliasing)."""
    return mean + (v - mean) * np.clip((period / foot - 3.0) / 4.0, 0.0, 1.0)


def _frame(u: np.ndarray, v: np.ndarray, hu: float, hv: float, band: float) -> np.ndarray:
    """1 within `band` metres of the border of the rectangle |u| <= hu, |v| <= hv."""
    return ((hu - np.abs(u) < band) | (hv - np.abs(v) < band)).astype(np.float64)


def _room_pattern(sc: _Scene, face: int, px, py, pz, foot) -> np.ndarray:
    if face == 2:  # floor
        p = sc.floor_period
        if sc.floor_style == 0:
            v = _square(np.floor(px / (p / 2)) / 2 + np.floor(pz / (p / 2)) / 2)
            return _fade(v, 0.5, p, foot)
        w = p / 4  # planks: rows of width w along x, joints staggered per row
        row = np.floor(pz / w)
        plank = np.floor(px / (4 * w) + _hash2(row, 1.0))
        v = 0.55 * _hash2(row, plank) + 0.45 * _square(pz / w, 0.1)
        return _fade(v, 0.3, w, foot)
    if face == 3:  # ceiling
        return np.zeros_like(px)
    u = pz if face < 2 else px
    v = _fade(_square(u / sc.wall_period + 0.25 * face), 0.5, sc.wall_period, foot)
    return np.where(py < 0.12, 1.0, v)


def _object_pattern(ob: _Obj, px, py, pz, foot) -> np.ndarray:
    x, y, z = px - ob.centre[0], py - ob.centre[1], pz - ob.centre[2]
    if ob.kind == SPHERE:
        k = 2 + int(ob.style * 3)  # segments like a beach ball
        v = _square((np.arctan2(z, x) + ob.theta) * k / (2 * math.pi))
        return _fade(v, 0.5, 2 * math.pi * ob.size[0] / k, foot)
    if ob.kind == BOX:  # crate: frame around every face plus horizontal slats
        lx, lz = _to_box_frame(x, z, ob.theta)
        h = ob.size
        q = np.abs(np.stack([lx / h[0], y / h[1], lz / h[2]]))
        axis = np.argmax(q, axis=0)
        band = 0.05 + 0.05 * ob.style
        near_edge = ((h[0] - np.abs(lx) < band).astype(int) + (h[1] - np.abs(y) < band)
                     + (h[2] - np.abs(lz) < band))
        slat = 0.12 + 0.15 * ob.style
        slats = np.where(axis == 1, 0.0, _fade(_square(y / slat, 0.2), 0.2, slat, foot))
        return np.maximum(_fade((near_edge >= 2).astype(np.float64), 0.3, 3 * band, foot), slats)
    r, hgt = ob.size  # cylinder: horizontal bands on the side, rings on the top
    period = 0.15 + 0.3 * ob.style
    top = py > ob.centre[1] + hgt - 1e-6
    rad = np.sqrt(x * x + z * z)
    v = np.where(top, _square(rad / (r / 2.5), 0.3), _square(y / period + ob.theta, 0.3))
    return _fade(v, 0.3, min(period, r / 2.5), foot)


def _panel_pattern(pn: _Panel, u: np.ndarray, py: np.ndarray) -> np.ndarray:
    hw, hh = pn.width / 2, (pn.y1 - pn.y0) / 2
    y = py - (pn.y0 + pn.y1) / 2
    if pn.kind == PICTURE:  # frame around an abstract motif: diagonal bands or concentric rings
        period = 0.08 + 0.12 * pn.style
        motif = np.sqrt(u * u + y * y) if pn.style < 0.5 else (u + y) * 0.7
        return np.maximum(_frame(u, y, hw, hh, 0.05), _square(motif / period, 0.4))
    outer = _frame(u, y, hw, hh, 0.09)
    panel_w, panel_h = hw - 0.18, (hh - 0.3) / 2  # two inset panels, outlined
    top = _frame(u, y - (panel_h + 0.08), panel_w, panel_h, 0.035) * (np.abs(y - panel_h - 0.08) <= panel_h)
    bot = _frame(u, y + (panel_h + 0.08), panel_w, panel_h, 0.035) * (np.abs(y + panel_h + 0.08) <= panel_h)
    inset = (np.abs(u) <= panel_w) * (top + bot)
    knob = ((u - (0.75 if pn.style < 0.5 else -0.75) * hw) ** 2 + (py - 1.0) ** 2) < 0.045**2
    return np.clip(outer + inset + knob, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ render


def _normals(sc: _Scene, sid: np.ndarray, px, py, pz) -> np.ndarray:
    n = np.zeros(sid.shape + (3,))
    for face in range(6):
        n[sid == face, face // 2] = 1.0 if face % 2 == 0 else -1.0  # room normals point inward
    for k, ob in enumerate(sc.objects):
        m = sid == 6 + k
        if not m.any():
            continue
        x, y, z = px[m] - ob.centre[0], py[m] - ob.centre[1], pz[m] - ob.centre[2]
        if ob.kind == SPHERE:
            nm = np.stack([x, y, z], axis=-1) / ob.size[0]
        elif ob.kind == CYLINDER:
            top = y > ob.size[1] - 1e-6
            rad = np.sqrt(x * x + z * z)
            nm = np.where(top[:, None], [0.0, 1.0, 0.0], np.stack([x / rad, 0 * x, z / rad], axis=-1))
        else:
            lx, lz = _to_box_frame(x, z, ob.theta)
            q = np.stack([lx / ob.size[0], y / ob.size[1], lz / ob.size[2]], axis=-1)
            axis = np.argmax(np.abs(q), axis=-1)
            local = np.zeros_like(q)
            local[np.arange(len(q)), axis] = np.sign(q[np.arange(len(q)), axis])
            c, s = math.cos(ob.theta), math.sin(ob.theta)  # back to world: inverse of _to_box_frame
            nm = np.stack([c * local[:, 0] - s * local[:, 2], local[:, 1], s * local[:, 0] + c * local[:, 2]],
                          axis=-1)
        n[m] = nm
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _edges(sid: np.ndarray, normal: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Symmetric (flip-equivariant) edge strength in [0, 1]."""
    edge = np.zeros(sid.shape)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        a, b = tuple(a), tuple(b)
        jump = (sid[a] != sid[b]) | ((normal[a] * normal[b]).sum(-1) < 0.8)
        tex = np.clip((np.abs(albedo[a] - albedo[b]).max(-1) - 0.05) / 0.25, 0.0, 1.0)
        e = np.maximum(jump.astype(np.float64), tex)
        edge[a] = np.maximum(edge[a], e)
        edge[b] = np.maximum(edge[b], e)
    return edge


def _corners(sc: _Scene) -> np.ndarray:
    pts = [np.array([x, y, z]) for x in (0, sc.room[0]) for y in (0, sc.room[1]) for z in (0, sc.room[2])]
    for ob in sc.objects:
        if ob.kind == BOX:
            c, s = math.cos(ob.theta), math.sin(ob.theta)
            for lx in (-1, 1):
                for ly in (-1, 1):
                    for lz in (-1, 1):
                        x, z = lx * ob.size[0], lz * ob.size[2]
                        pts.append(ob.centre + [c * x - s * z, ly * ob.size[1], s * x + c * z])
    for pn in sc.panels:
        fixed = 0.0 if pn.face % 2 == 0 else sc.room[pn.face // 2]
        for du in (-pn.width / 2, pn.width / 2):
            for y in (pn.y0, pn.y1):
                u = pn.u + du
                pts.append(np.array([fixed, y, u]) if pn.face < 2 else np.array([u, y, fixed]))
    return np.stack(pts)


def _keypoints(sc: _Scene, depth: np.ndarray, f: float) -> np.ndarray:
    size = depth.shape[0]
    p = (_corners(sc) - sc.cam) @ sc.rot
    z = p[:, 2]
    ok = z > 0.05
    j = f * p[ok, 0] / z[ok] + size / 2 - 0.5  # continuous pixel-index coordinates
    i = f * p[ok, 1] / z[ok] + size / 2 - 0.5
    z = z[ok]
    ji, ii = np.rint(j).astype(int), np.rint(i).astype(int)
    inside = (ji >= 0) & (ji < size) & (ii >= 0) & (ii < size)
    vis = np.zeros(len(z), bool)
    vis[inside] = depth[ii[inside], ji[inside]] >= z[inside] * 0.96  # not hidden behind something nearer
    if not vis.any():
        return np.zeros_like(depth)
    sigma = 1.2 * size / 64
    grid = np.arange(size)
    gx = np.exp(-((grid[None, :] - j[vis, None]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((grid[None, :] - i[vis, None]) ** 2) / (2 * sigma**2))
    return (gy[:, :, None] * gx[:, None, :]).max(0)


def render_scene(rng: np.random.Generator, size: int = 64, extras: bool = False) -> dict[str, np.ndarray]:
    """Sample a scene from `rng` and render it at `size` x `size`.

    Returns float32 arrays ``rgb`` (H,W,3) in [0,1], ``normal`` (H,W,3) camera frame, ``depth`` (H,W),
    uint8 ``label`` (H,W); with ``extras`` also ``edge`` and ``keypoints`` (H,W) in [0,1].
    """
    sc = _sample_scene(rng)
    f = (size / 2) / math.tan(_HFOV / 2)
    grid = (np.arange(size) + 0.5 - size / 2) / f
    xc, yc = grid[None, :], grid[:, None]
    r = sc.rot  # world ray = r @ (xc, yc, 1): with camera z = 1 the ray parameter t IS the z-depth
    d = tuple(r[a, 0] * xc + r[a, 1] * yc + r[a, 2] for a in range(3))

    t, sid = _cast(sc, d, f, size)
    px, py, pz = (sc.cam[a] + t * d[a] for a in range(3))
    label = np.asarray(_FACE_CLASS + tuple(ob.kind for ob in sc.objects))[sid]
    panel_id = np.full(sid.shape, -1)
    for j, pn in enumerate(sc.panels):
        u = pz if pn.face < 2 else px
        m = (sid == pn.face) & (np.abs(u - pn.u) <= pn.width / 2) & (py >= pn.y0) & (py <= pn.y1)
        panel_id[m] = j
        label[m] = pn.kind
    normal_w = _normals(sc, sid, px, py, pz)
    cos_view = np.abs(normal_w[..., 0] * d[0] + normal_w[..., 1] * d[1] + normal_w[..., 2] * d[2])
    cos_view /= np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    foot = t / f / np.maximum(cos_view, 0.2)  # world size of one pixel on the surface
    albedo = _albedo(sc, sid, panel_id, (px, py, pz), foot)
    rgb = _shade(sc, albedo, normal_w, (px, py, pz))
    rgb += rng.normal(0.0, _NOISE_STD, rgb.shape)
    out = {
        "rgb": np.clip(rgb, 0.0, 1.0).astype(np.float32),
        "normal": (normal_w @ r).astype(np.float32),  # world -> camera: n_cam = R^T n_world
        "depth": t.astype(np.float32),
        "label": label.astype(np.uint8),
    }
    if extras:
        surf = np.where(panel_id >= 0, 1000 + panel_id, sid)
        out["edge"] = _edges(surf, normal_w, albedo).astype(np.float32)
        out["keypoints"] = _keypoints(sc, t, f).astype(np.float32)
    return out


def _cast(sc: _Scene, d: tuple[np.ndarray, ...], f: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: ray parameter (= z-depth) of the nearest hit and its surface id (0-5 room faces, 6+k object k)."""
    t, sid = _hit_room(sc.cam, d, sc.room)
    for k, ob in enumerate(sc.objects):
        win = _screen_window(sc, ob, f, size)
        if win is None:
            continue
        tk = _HITS[ob.kind](sc.cam, tuple(c[win] for c in d), ob)
        closer = tk < t[win]
        t[win] = np.where(closer, tk, t[win])
        sid[win] = np.where(closer, 6 + k, sid[win])
    return t, sid


def _albedo(sc: _Scene, sid: np.ndarray, panel_id: np.ndarray, points: tuple[np.ndarray, ...],
            foot: np.ndarray) -> np.ndarray:
    """Surface colour per pixel: each surface's pattern between its two colours, panels over walls."""
    px, py, pz = points
    albedo = np.empty(sid.shape + (3,))
    for s in np.unique(sid):
        m = (sid == s) & (panel_id < 0)
        if not m.any():
            continue
        if s < 6:
            v, cols = _room_pattern(sc, int(s), px[m], py[m], pz[m], foot[m]), sc.surface_colours[s]
        else:
            ob = sc.objects[s - 6]
            v, cols = _object_pattern(ob, px[m], py[m], pz[m], foot[m]), ob.colours
        albedo[m] = cols[0] + (cols[1] - cols[0]) * v[:, None]
    for j, pn in enumerate(sc.panels):
        m = panel_id == j
        if m.any():
            u = (pz if pn.face < 2 else px)[m] - pn.u
            v = _fade(_panel_pattern(pn, u, py[m]), 0.4, 0.14, foot[m])
            albedo[m] = pn.colours[0] + (pn.colours[1] - pn.colours[0]) * v[:, None]
    return albedo


def _shade(sc: _Scene, albedo: np.ndarray, normal_w: np.ndarray, points: tuple[np.ndarray, ...]) -> np.ndarray:
    """Ambient + Lambertian light from the ceiling lamp, tinted, auto-exposed (noise is added by the caller)."""
    px, py, pz = points
    lx, ly, lz = sc.light[0] - px, sc.light[1] - py, sc.light[2] - pz
    dist2 = lx * lx + ly * ly + lz * lz
    lam = (normal_w[..., 0] * lx + normal_w[..., 1] * ly + normal_w[..., 2] * lz) / np.sqrt(dist2)
    shade = sc.ambient + sc.diffuse * np.maximum(lam, 0.0) * (2 * 9.0 / (9.0 + dist2))
    rgb = albedo * shade[..., None] * sc.tint
    rgb *= sc.exposure / rgb.mean()  # auto-exposure: dark rooms stay readable, brightness still varies
    return rgb


# ----------------------------------------------------------------------------------------- dataset


class SyntheticScenes(Dataset):
    """Map-style dataset of rendered scenes; ``ds[i]`` or ``ds[i, aug_seed]`` -> dict of tensors."""

    def __init__(self, split: str, tasks: Sequence[str] = TASKS_3, size: int = 64, length: int | None = None,
                 seed: int = 0, augment: bool | None = None, cache: bool = True, *, jitter: float = 0.1,
                 stream: bool = False):
        if split not in _SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(_SPLIT_IDS)}")
        unknown = [t for t in tasks if t not in TASKS_5]
        if unknown or not tasks:
            raise ValueError(f"unknown or empty tasks {list(tasks)!r}; synthetic scenes provide {TASKS_5}")
        if size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.num_classes: int = len(CLASS_NAMES)
        # stream: an unbounded supply of fresh scenes (ResumableBatchSampler walks it without shuffling); a scene
        # is seen once, so nothing is cached
        self.stream = bool(stream)
        self.length = STREAM_LENGTH if stream else DEFAULT_LENGTHS[split] if length is None else int(length)
        cache = cache and not stream
        if self.length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.augment = split == "train" if augment is None else bool(augment)
        self.jitter = float(jitter)
        self.cache: dict[int, dict[str, torch.Tensor]] | None = {} if cache else None
        self._extras = any(t in self.tasks for t in ("keypoints2d", "edge_texture"))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, aug_seed = (key if isinstance(key, tuple) else (key, None))
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {key!r} out of range for {self.split} split of length {self.length}")
        sample = self._sample(i)
        if not self.augment:
            return dict(sample)
        if aug_seed is None:
            aug_seed = int(np.random.SeedSequence([self.seed, _SPLIT_IDS[self.split], i, _AUG_TAG])
                           .generate_state(1, np.uint64)[0])
        return _augment(sample, int(aug_seed), self.jitter)

    def _sample(self, i: int) -> dict[str, torch.Tensor]:
        if self.cache is not None and i in self.cache:
            return _expand(self.cache[i])
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_IDS[self.split], i]))
        r = render_scene(rng, self.size, extras=self._extras)
        # Compact on purpose (uint8 labels, float16 image and soft maps) so that a cached train split
        # stays small; cached and uncached reads go through the same conversion and are identical.
        s = {"input": torch.from_numpy((r["rgb"] - RGB_MEAN) / RGB_STD).permute(2, 0, 1).half()}
        if "segment_semantic" in self.tasks:
            s["segment_semantic"] = torch.from_numpy(r["label"])[None]
        if "normal" in self.tasks:
            s["normal"] = torch.from_numpy(r["normal"]).permute(2, 0, 1).contiguous()
        if "depth_zbuffer" in self.tasks:
            s["depth_zbuffer"] = torch.from_numpy(r["depth"])[None]
        if "keypoints2d" in self.tasks:
            s["keypoints2d"] = torch.from_numpy(r["keypoints"] * 2 - 1)[None].half()
        if "edge_texture" in self.tasks:
            s["edge_texture"] = torch.from_numpy(r["edge"] * 2 - 1)[None].half()
        if self.cache is not None:
            self.cache[i] = s
        return _expand(s)


def _expand(s: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.long() if k == "segment_semantic" else v.float() for k, v in s.items()}


def _augment(sample: dict[str, torch.Tensor], aug_seed: int, jitter: float) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(np.random.SeedSequence([_AUG_TAG, aug_seed % 2**64]))
    flip = bool(rng.random() < 0.5)
    contrast, shift = 1.0 + jitter * rng.uniform(-1, 1), jitter * rng.uniform(-1, 1)
    out = {}
    for k, v in sample.items():
        if flip:
            v = v.flip(-1)
            if k == "normal":
                v = v * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        if k == "input" and jitter:
            v = v * contrast + shift / RGB_STD  # rgb' = (rgb - 0.5) * contrast + 0.5 + shift
        out[k] = v
    return out
