"""Domain-randomisation parameter sets per split.

Every factor (object shapes, colour palette, table/background appearance, lighting) has a
``train`` set and a disjoint held-out set. A split takes all factors from ``train`` except the one
it names, which comes from the held-out set. :func:`factor_sets` returns the sets for a split.
The ``dense`` split keeps the training factor sets; what it holds out is the layout: 12 objects
(training scenes have at most 10), look-alike distractors of the target and its own seed stream
(``sim.scene``).

For data collection, ``SimConfig(table_appearance="procedural")`` replaces the four training tables
with :func:`procedural_background`: random colours, textures and contrasts, every colour at least
:data:`HELD_OUT_MARGIN` away from every colour of the held-out tables, so ``unseen_backgrounds``
stays unseen. Evaluation always uses the presets.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from sim.config import check_split

#: Shape families. Training shapes are the MuJoCo primitives; held-out shapes are inline convex
#: meshes and a compound body, so no unseen shape appears in training.
TRAIN_SHAPES = ("box", "cylinder", "sphere", "capsule", "ellipsoid")
UNSEEN_SHAPES = ("hex_prism", "tri_prism", "frustum", "dumbbell")

#: Named object colours (RGB in [0, 1]); the two palettes share no name and no value.
TRAIN_PALETTE = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (0.98, 0.50, 0.05),
    "purple": (0.50, 0.18, 0.70),
    "white": (0.92, 0.92, 0.92),
}
UNSEEN_PALETTE = {
    "pink": (0.98, 0.55, 0.75),
    "cyan": (0.10, 0.85, 0.90),
    "brown": (0.45, 0.28, 0.12),
    "lime": (0.65, 0.95, 0.25),
    "navy": (0.05, 0.08, 0.40),
    "magenta": (0.85, 0.10, 0.65),
    "grey": (0.45, 0.45, 0.48),
}


@dataclass(frozen=True)
class BackgroundPreset:
    """Table texture and floor colour."""

    name: str
    texture: str  # MuJoCo builtin: flat | checker | gradient
    rgb1: tuple[float, float, float]
    rgb2: tuple[float, float, float]
    floor: tuple[float, float, float]
    texrepeat: float = 4.0


TRAIN_BACKGROUNDS = (
    BackgroundPreset("wood", "flat", (0.62, 0.48, 0.32), (0.55, 0.42, 0.28), (0.30, 0.30, 0.32)),
    BackgroundPreset("light_grey", "flat", (0.78, 0.78, 0.76), (0.70, 0.70, 0.70), (0.25, 0.22, 0.20)),
    BackgroundPreset("beige_check", "checker", (0.80, 0.74, 0.62), (0.74, 0.68, 0.56), (0.35, 0.35, 0.40), 10.0),
    BackgroundPreset("slate", "flat", (0.40, 0.42, 0.45), (0.38, 0.40, 0.43), (0.50, 0.48, 0.45)),
)
UNSEEN_BACKGROUNDS = (
    BackgroundPreset("green_felt", "gradient", (0.10, 0.40, 0.18), (0.05, 0.25, 0.10), (0.15, 0.12, 0.10)),
    BackgroundPreset("bw_check", "checker", (0.95, 0.95, 0.95), (0.10, 0.10, 0.10), (0.60, 0.55, 0.50), 6.0),
    BackgroundPreset("blue_mat", "gradient", (0.20, 0.35, 0.65), (0.10, 0.18, 0.40), (0.70, 0.70, 0.65)),
    BackgroundPreset("dark_walnut", "checker", (0.28, 0.16, 0.08), (0.22, 0.12, 0.06), (0.80, 0.80, 0.82), 3.0),
)


#: Minimum RGB (Euclidean, [0, 1] units) distance between any colour of a procedural table and any
#: colour of a held-out table (``UNSEEN_BACKGROUNDS`` rgb1/rgb2).
HELD_OUT_MARGIN = 0.2


def held_out_table_colours() -> np.ndarray:
    """(2 * len(UNSEEN_BACKGROUNDS), 3) table colours of the held-out presets."""
    return np.asarray([c for p in UNSEEN_BACKGROUNDS for c in (p.rgb1, p.rgb2)], dtype=np.float64)


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def procedural_background(rng: np.random.Generator, max_tries: int = 1000) -> BackgroundPreset:
    """A random training table: flat, checker or gradient texture in a random hue, saturation and
    brightness, with a low to high contrast second colour (sometimes of another hue), and the floor
    of a training preset. Rejects draws with a colour closer than :data:`HELD_OUT_MARGIN` to a
    held-out table colour."""
    held_out = held_out_table_colours()
    for _ in range(max_tries):
        texture = ("flat", "checker", "gradient")[int(rng.integers(3))]
        hue, sat, val = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.85), rng.uniform(0.2, 0.95)
        rgb1 = _hsv(hue, sat, val)
        if texture == "flat":
            rgb2 = tuple(float(c * rng.uniform(0.88, 1.0)) for c in rgb1)
        elif rng.uniform() < 0.3:
            rgb2 = _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.85), rng.uniform(0.2, 0.95))
        else:
            rgb2 = _hsv(hue + rng.normal(0.0, 0.04), sat * rng.uniform(0.6, 1.2), val * (1.0 - rng.uniform(0.05, 0.8)))
        colours = np.asarray([rgb1, rgb2])
        if np.linalg.norm(colours[:, None] - held_out[None], axis=-1).min() < HELD_OUT_MARGIN:
            continue
        floor = TRAIN_BACKGROUNDS[int(rng.integers(len(TRAIN_BACKGROUNDS)))].floor
        texrepeat = float(rng.uniform(3.0, 12.0)) if texture == "checker" else 4.0
        return BackgroundPreset("procedural", texture, rgb1, rgb2, floor, texrepeat)
    raise RuntimeError(f"no procedural table clear of the held-out colours in {max_tries} draws")


@dataclass(frozen=True)
class LightingSet:
    """Ranges for the scene lights."""

    name: str
    count: tuple[int, int]
    intensity: tuple[tuple[float, float], ...]  # one or more disjoint ranges (diffuse level)
    tints: tuple[tuple[float, float, float], ...]
    ambient: tuple[float, float]
    elevation_deg: tuple[float, float]


TRAIN_LIGHTING = LightingSet(
    "train", count=(1, 2), intensity=((0.45, 0.75),),
    tints=((1.0, 1.0, 1.0), (1.0, 0.96, 0.90), (0.94, 0.97, 1.0)),
    ambient=(0.25, 0.35), elevation_deg=(55.0, 85.0))
UNSEEN_LIGHTING = LightingSet(
    "unseen", count=(3, 4), intensity=((0.15, 0.28), (0.85, 1.05)),
    tints=((1.0, 0.70, 0.45), (0.55, 0.70, 1.0), (0.70, 1.0, 0.65)),
    ambient=(0.08, 0.18), elevation_deg=(25.0, 50.0))


@dataclass(frozen=True)
class FactorSets:
    """The parameter sets a split samples from."""

    shapes: tuple[str, ...]
    palette: dict
    backgrounds: tuple[BackgroundPreset, ...]
    lighting: LightingSet


def near_colour(name: str, palette: dict) -> str:
    """The other colour of ``palette`` nearest to colour ``name`` (RGB distance): the colour of a
    "same shape, near colour" look-alike distractor (red -> orange, blue -> purple, ...)."""
    ref = np.asarray(palette[name])
    others = sorted((n for n in palette if n != name), key=lambda n: (float(np.linalg.norm(np.asarray(palette[n]) - ref)), n))
    return others[0]


def factor_sets(split: str) -> FactorSets:
    """Parameter sets for ``split`` (raises for an unknown split); ``dense`` uses the training sets."""
    check_split(split)
    return FactorSets(
        shapes=UNSEEN_SHAPES if split == "unseen_objects" else TRAIN_SHAPES,
        palette=UNSEEN_PALETTE if split == "unseen_objects" else TRAIN_PALETTE,
        backgrounds=UNSEEN_BACKGROUNDS if split == "unseen_backgrounds" else TRAIN_BACKGROUNDS,
        lighting=UNSEEN_LIGHTING if split == "unseen_lighting" else TRAIN_LIGHTING,
    )
