"""Synthetic table-top scenes for testing the planner without the simulator.

``make_scene(seed)`` draws a 480x640 BGR head image: a background, a textured table with a
lighting gradient, coloured primitives (boxes, discs, ellipses) with simple shading, and a
grey robot-arm blob entering from the top. Ground truth follows the simulator's
``info['objects']`` layout (name, shape, colour, bbox_head, on_table) plus a ``mask``.
``make_wrist(...)`` draws a wrist-camera view with or without an object in the hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np

from planner.server.vocab import PALETTE_RGB

OBJECT_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
TABLE_COLOURS_RGB = ((150, 110, 70), (185, 180, 170), (95, 95, 100), (200, 170, 120), (120, 135, 110), (70, 60, 55))
SHAPES = ("cube", "ball", "cylinder")


@dataclass
class SyntheticScene:
    """A generated head image with ground-truth objects."""

    image: np.ndarray
    objects: list[dict[str, Any]]
    table_rgb: tuple[int, int, int]
    arm_mask: np.ndarray = field(repr=False, default=None)


def _jitter(rgb, rng, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _object_mask(shape: str, cx: int, cy: int, size: int, angle: float, hw=(480, 640)) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    if shape == "cube":
        box = cv2.boxPoints(((cx, cy), (size, size * 0.9), angle))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    elif shape == "ball":
        cv2.circle(mask, (cx, cy), size // 2, 1, -1)
    else:
        cv2.ellipse(mask, (cx, cy), (int(size * 0.85), int(size * 0.32)), angle, 0, 360, 1, -1)
    return mask


def make_scene(seed: int, n_objects: Optional[int] = None, with_arm: bool = True,
               height: int = 480, width: int = 640) -> SyntheticScene:
    """Generate one scene; deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.array(_jitter((rng.integers(30, 220), rng.integers(30, 220), rng.integers(30, 220)), rng), np.float32)
    img = np.ones((height, width, 3), np.float32) * bg
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    # Table: a trapezoid covering the lower part of the image.
    top = int(rng.integers(50, 120))
    inset = int(rng.integers(0, 90))
    table_poly = np.array([[inset, top], [width - 1 - inset, top], [width - 1, height - 1], [0, height - 1]], np.int32)
    table_mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(table_mask, [table_poly], 1)
    table_rgb = TABLE_COLOURS_RGB[int(rng.integers(len(TABLE_COLOURS_RGB)))]
    table_rgb = _jitter(table_rgb, rng, 15)
    tex = rng.normal(0, 5, (height, width)).astype(np.float32)
    tex += 6 * np.sin(yy / rng.uniform(3, 9) + np.sin(xx / 40.0) * 2).astype(np.float32)
    table = np.ones((height, width, 3), np.float32) * np.array(table_rgb[::-1], np.float32) + tex[..., None]
    img[table_mask > 0] = table[table_mask > 0]
    occupied = np.zeros((height, width), np.uint8)
    objects: list[dict[str, Any]] = []
    n = int(rng.integers(3, 8)) if n_objects is None else n_objects
    for k in range(200):
        if len(objects) >= n:
            break
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = OBJECT_COLOURS[int(rng.integers(len(OBJECT_COLOURS)))]
        size = int(rng.integers(34, 70))
        cx, cy = int(rng.integers(70, width - 70)), int(rng.integers(top + 70, height - 50))
        mask = _object_mask(shape, cx, cy, size, float(rng.uniform(0, 180)), (height, width))
        if (mask & table_mask).sum() < mask.sum() or (cv2.dilate(occupied, np.ones((9, 9), np.uint8)) & mask).any():
            continue
        occupied |= mask
        base = np.array(_jitter(PALETTE_RGB[colour], rng, 15)[::-1], np.float32)
        shade = 0.8 + 0.35 * ((xx - cx + size) / (2.0 * size)).clip(0, 1)[..., None] * 0.6
        obj = (base * shade + rng.normal(0, 3, img.shape).astype(np.float32))
        img[mask > 0] = obj[mask > 0]
        ys, xs = np.nonzero(mask)
        objects.append({
            "name": f"{colour}_{shape}_{len(objects)}", "shape": shape, "colour": colour,
            "bbox_head": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
            "on_table": True, "mask": mask.astype(bool),
        })
    arm = np.zeros((height, width), np.uint8)
    if with_arm:
        x0 = int(rng.integers(width // 2, width))
        pts = np.array([[x0, -10], [x0 - int(rng.integers(20, 120)), int(rng.integers(60, 140))]], np.int32)
        cv2.polylines(arm, [pts], False, 1, int(rng.integers(28, 45)))
        grey = float(rng.integers(50, 170))
        img[arm > 0] = np.array([grey, grey, grey + 5], np.float32) + rng.normal(0, 4, (int(arm.sum()), 3))
        for obj in objects:  # the arm may hide part of an object: recompute its box
            visible = obj["mask"] & (arm == 0)
            obj["mask"] = visible
            ys, xs = np.nonzero(visible)
            if len(xs):
                obj["bbox_head"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    # Lighting gradient.
    gx, gy = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)
    light = 1.0 + gx * (xx / width - 0.5) * 2 + gy * (yy / height - 0.5) * 2
    img = np.clip(img * light[..., None] * rng.uniform(0.85, 1.1), 0, 255).astype(np.uint8)
    return SyntheticScene(img, objects, table_rgb, arm.astype(bool))


def remove_object(scene: SyntheticScene, index: int) -> np.ndarray:
    """Return the head image with object ``index`` painted over by the table colour."""
    img = scene.image.copy()
    mask = scene.objects[index]["mask"]
    colour = np.array(scene.table_rgb[::-1], np.float32)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
    for obj in scene.objects:
        ring &= ~obj["mask"]
    if ring.any():
        colour = np.median(img[ring], axis=0)
    img[mask] = colour.astype(np.uint8)
    return img


def make_wrist(seed: int, table_rgb=(150, 110, 70), held_colour: Optional[str] = None) -> np.ndarray:
    """A wrist-camera view: table far below, grey fingers, optionally an object in the hand."""
    rng = np.random.default_rng(seed)
    img = np.ones((480, 640, 3), np.float32) * np.array(table_rgb[::-1], np.float32)
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    if held_colour is not None:
        base = np.array(PALETTE_RGB[held_colour][::-1], np.float32)
        mask = np.zeros((480, 640), np.uint8)
        cv2.ellipse(mask, (320 + int(rng.integers(-40, 40)), 330), (150, 110), 0, 0, 360, 1, -1)
        img[mask > 0] = base * rng.uniform(0.8, 1.1)
    for fx in (170, 260, 350, 440):
        cv2.rectangle(img, (fx, 380), (fx + 45, 480), (90, 90, 95), -1)
    return np.clip(img, 0, 255).astype(np.uint8)
