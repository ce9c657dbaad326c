"""Domain-randomisation parameter sets per split.

Every factor (object shapes, colour palette, table/background appearance, lighting) has a
``train`` set and a disjoint held-out set. A split takes all factors from ``train`` except the one
it names, which comes from the held-out set. :func:`factor_sets` returns the sets for a split.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def factor_sets(split: str) -> FactorSets:
    """Parameter sets for ``split`` (raises for an unknown split)."""
    check_split(split)
    return FactorSets(
        shapes=UNSEEN_SHAPES if split == "unseen_objects" else TRAIN_SHAPES,
        palette=UNSEEN_PALETTE if split == "unseen_objects" else TRAIN_PALETTE,
        backgrounds=UNSEEN_BACKGROUNDS if split == "unseen_backgrounds" else TRAIN_BACKGROUNDS,
        lighting=UNSEEN_LIGHTING if split == "unseen_lighting" else TRAIN_LIGHTING,
    )
