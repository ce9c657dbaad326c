"""Seeded scene sampling: which objects, where, what they look like, and how the scene is lit.

:func:`sample_scene` is a pure function of ``(seed, split, config)``; the MJCF builder turns the
resulting :class:`SceneSpec` into a model. Objects are placed without overlap in stable resting
poses (elongated primitives lie flat) and the target gets a free ring around it wide enough for
the hand's fingers.

The ``dense`` split (issue 24 point 5) draws 12 objects with the ``dense`` packing from the training
factor sets on its own seed stream, and adds two look-alike distractors of the target: one of the
same colour and another shape, one of the same shape and the nearest other palette colour. No other
object shares the target's colour and shape, so "grasp the <colour> <shape>" stays unambiguous.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.config import SimConfig, SimConfigError, check_split
from sim.randomization import TRAIN_BACKGROUNDS, BackgroundPreset, factor_sets, near_colour, procedural_background

#: Workspace on the table (world metres) and gaps between objects per clutter level.
WORKSPACE_X = (0.34, 0.66)
WORKSPACE_Y = (-0.29, 0.29)
CLUTTER_GAP = {"sparse": 0.04, "normal": 0.015, "dense": 0.004}
CLUTTER_SCALE = {"sparse": 1.0, "normal": 0.9, "dense": 0.75}
#: Radius around the target's centre kept free of other objects (finger clearance).
TARGET_FREE_RADIUS = 0.085
#: The ``dense`` split: object count (training scenes have at most 10) and the salt of its seed
#: stream (its scenes differ from every training scene of the same seed).
DENSE_N_OBJECTS = 12
DENSE_STREAM = 0xD3E5E


@dataclass
class ObjectSpec:
    """One graspable object.

    ``size`` holds shape-specific dimensions (metres); ``grasp_yaw`` is the world yaw of the
    object's narrow horizontal axis (the hand closes along it), ``grasp_width`` the object's width
    along that axis and ``height`` its full vertical extent when resting.
    """

    name: str
    shape: str
    colour_name: str
    rgb: tuple[float, float, float]
    size: dict
    mass: float
    friction: float
    pos: tuple[float, float, float]
    yaw: float
    footprint: float
    grasp_yaw: float
    grasp_width: float
    height: float

    def describe(self) -> str:
        """Human-readable label such as ``"red box"``."""
        return f"{self.colour_name} {self.shape.replace('_', ' ')}"


@dataclass
class LightSpec:
    """A directional light."""

    direction: tuple[float, float, float]
    diffuse: tuple[float, float, float]


@dataclass
class SceneSpec:
    """A complete, seeded description of one scene."""

    seed: int
    split: str
    objects: list[ObjectSpec]
    target: int
    background: BackgroundPreset
    lights: list[LightSpec]
    ambient: float
    head_cam_offset: tuple[float, ...] = field(default=(0.0,) * 6)  # dx, dy, dz, dyaw, dpitch, droll
    #: indices of the look-alike distractors (``dense`` split): (same colour, other shape),
    #: (same shape, near colour); empty for the other splits
    lookalikes: tuple[int, ...] = ()


def _shape_geometry(shape: str, rng: np.random.Generator) -> tuple[dict, float, float, float, float]:
    """Sample dimensions for ``shape``: (size, footprint radius, height, width, grasp-yaw offset)."""
    u = rng.uniform
    if shape == "box":
        hx = u(0.016, 0.028); hy = u(hx + 0.004, 0.045); hz = u(0.022, 0.042)
        return {"half": (hx, hy, hz)}, math.hypot(hx, hy), 2 * hz, 2 * hx, 0.0
    if shape == "cylinder":
        r = u(0.018, 0.028); hh = u(0.025, 0.045)
        return {"radius": r, "half_height": hh}, r, 2 * hh, 2 * r, 0.0
    if shape == "sphere":
        r = u(0.022, 0.029)
        return {"radius": r}, r, 2 * r, 2 * r, 0.0
    if shape == "capsule":
        r = u(0.016, 0.024); hl = u(0.02, 0.04)
        return {"radius": r, "half_length": hl}, hl + r, 2 * r, 2 * r, math.pi / 2
    if shape == "ellipsoid":
        a = u(0.036, 0.05); b = u(0.018, 0.027); c = u(0.018, b)
        return {"axes": (a, b, c)}, a, 2 * c, 2 * b, math.pi / 2
    if shape == "hex_prism":
        rad = u(0.02, 0.03); hh = u(0.025, 0.042)
        return {"radius": rad, "half_height": hh}, rad, 2 * hh, 2 * rad * math.cos(math.pi / 6), math.pi / 2
    if shape == "tri_prism":  # upright triangular prism; the hand closes along an altitude
        side = u(0.04, 0.052); hh = u(0.025, 0.042)
        return ({"side": side, "half_height": hh}, side / math.sqrt(3), 2 * hh,
                side * math.sqrt(3) / 2, math.pi / 2)
    if shape == "frustum":
        b = u(0.02, 0.028); hh = u(0.025, 0.04)
        return {"bottom": b, "top": 0.6 * b, "half_height": hh}, b * math.sqrt(2), 2 * hh, 2 * b, 0.0
    if shape == "dumbbell":
        rb = u(0.012, 0.016); hl = u(0.05, 0.06); rs = u(0.021, 0.026)
        return ({"bar_radius": rb, "half_length": hl, "end_radius": rs}, hl + rs, 2 * rs, 2 * rs,
                math.pi / 2)
    raise SimConfigError(f"unknown shape {shape!r}")


def _place(rng: np.random.Generator, footprints: list[float], target: int, gap: float,
           scale: float, tries: int = 400) -> list[tuple[float, float]] | None:
    """Rejection-sample non-overlapping xy positions; the target is placed first."""
    cx, cy = np.mean(WORKSPACE_X), np.mean(WORKSPACE_Y)
    hx, hy = (WORKSPACE_X[1] - cx) * scale, (WORKSPACE_Y[1] - cy) * scale
    order = [target] + [i for i in range(len(footprints)) if i != target]
    placed: dict[int, tuple[float, float]] = {}
    for i in order:
        r = footprints[i]
        # the target stays away from the workspace rim so the arm reaches it comfortably
        shrink = 0.6 if i == target else 1.0
        for _ in range(tries):
            ax, ay = max(hx * shrink - r, 0.0), max(hy * shrink - r, 0.0)
            x = cx + rng.uniform(-ax, ax)
            y = cy + rng.uniform(-ay, ay)
            ok = True
            for j, (px, py) in placed.items():
                need = footprints[j] + r + gap
                if j == target or i == target:
                    need = max(need, TARGET_FREE_RADIUS + (r if i != target else footprints[j]))
                if (x - px) ** 2 + (y - py) ** 2 < need ** 2:
                    ok = False
                    break
            if ok:
                placed[i] = (x, y)
                break
        else:
            return None
    return [placed[i] for i in range(len(footprints))]


def sample_scene(seed: int, split: str, config: SimConfig) -> SceneSpec:
    """Sample a scene deterministically from ``seed`` for ``split`` under ``config``."""
    check_split(split)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimConfigError(f"seed must be a non-negative int, got {seed!r}")
    sets = factor_sets(split)
    dense = split == "dense"
    rng = np.random.default_rng([int(seed), 0x5EED, DENSE_STREAM] if dense else [int(seed), 0x5EED])
    lo, hi = config.n_objects
    n = DENSE_N_OBJECTS if dense else int(rng.integers(lo, hi + 1))
    palette_names = sorted(sets.palette)
    clutter = "dense" if dense else config.clutter
    gap, scale = CLUTTER_GAP[clutter], CLUTTER_SCALE[clutter]
    lookalikes: tuple[int, ...] = ()

    for attempt in range(80):
        # if the packing is infeasible, gradually loosen it (wider area, smaller gaps)
        scale_k = min(scale * (1.0 + 0.02 * attempt), 1.05)
        gap_k = gap * max(0.0, 1.0 - attempt / 40)
        geo, shapes = [], []
        if dense:
            shapes, target, lookalikes = _dense_shapes(rng, sets.shapes, n)
            geo = [_shape_geometry(shape, rng) for shape in shapes]
        else:
            for _ in range(n):
                shape = sets.shapes[int(rng.integers(len(sets.shapes)))]
                shapes.append(shape)
                geo.append(_shape_geometry(shape, rng))
            target = int(rng.integers(n))
        xy = _place(rng, [g[1] for g in geo], target, gap_k, scale_k)
        if xy is not None:
            break
    else:  # pragma: no cover - only with absurd n for the table size
        raise SimConfigError(f"could not place {n} objects without overlap; lower n_objects")

    names = [palette_names[int(rng.integers(len(palette_names)))] for _ in shapes] if dense else None
    if dense:
        names = _dense_colours(rng, names, shapes, target, lookalikes, sets.palette)
    objects = []
    for i, (shape, (size, fp, height, width, gyaw)) in enumerate(zip(shapes, geo)):
        cname = names[i] if dense else palette_names[int(rng.integers(len(palette_names)))]
        base = np.asarray(sets.palette[cname])
        rgb = tuple(float(v) for v in np.clip(base + rng.uniform(-0.04, 0.04, 3), 0, 1))
        yaw = float(rng.uniform(-math.pi, math.pi))
        z = height / 2 + 0.0005
        objects.append(ObjectSpec(
            name=f"obj{i}", shape=shape, colour_name=cname, rgb=rgb, size=size,
            mass=float(rng.uniform(0.04, 0.2)), friction=float(rng.uniform(0.8, 1.2)),
            pos=(float(xy[i][0]), float(xy[i][1]), float(z)), yaw=yaw, footprint=float(fp),
            grasp_yaw=float(yaw + gyaw), grasp_width=float(width), height=float(height)))

    bg = sets.backgrounds[int(rng.integers(len(sets.backgrounds)))]
    if config.table_appearance == "procedural" and sets.backgrounds == TRAIN_BACKGROUNDS:
        # own stream: every other factor of the scene is the same as with the presets
        bg = procedural_background(np.random.default_rng([int(seed), 0x7AB1E]))
    ls = sets.lighting
    lights = []
    for _ in range(int(rng.integers(ls.count[0], ls.count[1] + 1))):
        band = ls.intensity[int(rng.integers(len(ls.intensity)))]
        level = rng.uniform(*band)
        tint = np.asarray(ls.tints[int(rng.integers(len(ls.tints)))])
        az = rng.uniform(-math.pi, math.pi)
        el = math.radians(rng.uniform(*ls.elevation_deg))
        d = (-math.cos(el) * math.cos(az), -math.cos(el) * math.sin(az), -math.sin(el))
        lights.append(LightSpec(direction=tuple(float(v) for v in d),
                                diffuse=tuple(float(v) for v in level * tint)))
    ambient = float(rng.uniform(*ls.ambient))
    jitter = tuple(float(v) for v in np.concatenate([rng.uniform(-0.01, 0.01, 3),
                                                     np.radians(rng.uniform(-1.5, 1.5, 3))]))
    if not config.camera_jitter:
        jitter = (0.0,) * 6
    return SceneSpec(seed=int(seed), split=split, objects=objects, target=target, background=bg,
                     lights=lights, ambient=ambient, head_cam_offset=jitter, lookalikes=lookalikes)


def _dense_shapes(rng: np.random.Generator, shapes: tuple[str, ...], n: int) -> tuple[list[str], int, tuple[int, int]]:
    """Shapes of a ``dense`` scene, the target index and the two look-alike indices: ``a`` gets
    another shape than the target (it will get the target's colour), ``b`` the target's shape."""
    out = [shapes[int(rng.integers(len(shapes)))] for _ in range(n)]
    target = int(rng.integers(n))
    a, b = (int(v) for v in rng.choice([i for i in range(n) if i != target], size=2, replace=False))
    if out[a] == out[target]:
        others = [s for s in shapes if s != out[target]]
        out[a] = others[int(rng.integers(len(others)))]
    out[b] = out[target]
    return out, target, (a, b)


def _dense_colours(rng: np.random.Generator, names: list[str], shapes: list[str], target: int,
                   lookalikes: tuple[int, int], palette: dict) -> list[str]:
    """Colour names of a ``dense`` scene: look-alike ``a`` takes the target's colour, ``b`` the
    nearest other colour; any other object of the target's colour and shape is recoloured."""
    names = list(names)
    a, b = lookalikes
    names[a] = names[target]
    names[b] = near_colour(names[target], palette)
    others = [c for c in sorted(palette) if c != names[target]]
    for i in range(len(names)):
        if i != target and names[i] == names[target] and shapes[i] == shapes[target]:
            names[i] = others[int(rng.integers(len(others)))]
    return names
