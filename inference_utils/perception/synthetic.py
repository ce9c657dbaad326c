"""Synthetic table-top grasp sequences with ground-truth target masks.

Used by the perception tests and by ``benchmarks/perception.py`` when the simulator is not
available. A sequence shows a textured table with several coloured objects; a grey robot hand
enters from the top-right, partially occludes the target, closes on it and lifts it (the target
moves up with the hand and grows slightly, as it gets closer to the head camera). Per-frame
sensor noise and a slow global lighting change are applied.

The ground-truth mask is the *visible* part of the target (the hand is drawn over it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import cv2
import numpy as np

from .masks import mask_to_box

__all__ = ["SyntheticSequence", "make_table_image", "make_grasp_sequence"]

_TABLE_TONES = [(60, 105, 150), (150, 160, 165), (70, 75, 80), (150, 185, 205), (95, 125, 110)]


@dataclass
class SyntheticSequence:
    """Frames (BGR uint8), visible-target masks (bool) and per-frame metadata.

    ``meta['labels0']`` is frame 0's label image (0 table, i + 1 object i, -1 hand).
    """

    frames: List[np.ndarray]
    masks: List[np.ndarray]
    on_table: List[bool]
    object_boxes: List[tuple]  # tight boxes of every object in frame 0 (target first)
    target_box: tuple  # tight box of the target's visible mask in frame 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def make_table_image(rng: np.random.Generator, height: int = 480, width: int = 640) -> np.ndarray:
    """A textured table (wood-like grain, blotches) under a plain back wall, float32 BGR."""
    tone = np.array(_TABLE_TONES[int(rng.integers(len(_TABLE_TONES)))], np.float32)
    tone = tone * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = tone
    blotch = _smooth_noise(rng, height, width, 40) * 12.0
    rows = np.arange(height, dtype=np.float32)[:, None]
    freq = rng.uniform(0.08, 0.2)
    wobble = _smooth_noise(rng, height, width, 60) * 6.0
    grain = np.sin(rows * freq + wobble) * 9.0
    fine = rng.standard_normal((height, width)).astype(np.float32) * 5.0
    img += (blotch + grain + fine)[..., None]
    wall_h = int(height * rng.uniform(0.12, 0.25))
    wall = np.array(rng.uniform(150, 230, 3), np.float32)
    img[:wall_h] = wall + _smooth_noise(rng, wall_h, width, 80)[..., None] * 6.0
    img[wall_h:wall_h + 3] *= 0.6  # table edge
    return img


def _object_sprite(rng: np.random.Generator, size: int, hue: float):
    """A coloured object sprite: (colour float32 (s,s,3), alpha bool (s,s))."""
    s = size
    alpha = np.zeros((s, s), np.uint8)
    kind = int(rng.integers(3))
    c = s // 2
    if kind == 0:
        axes = (int(s * rng.uniform(0.3, 0.48)), int(s * rng.uniform(0.25, 0.48)))
        cv2.ellipse(alpha, (c, c), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        rect = ((c, c), (s * rng.uniform(0.5, 0.9), s * rng.uniform(0.35, 0.7)), float(rng.uniform(0, 180)))
        cv2.fillPoly(alpha, [cv2.boxPoints(rect).astype(np.int32)], 1)
    else:
        n = int(rng.integers(5, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = s * rng.uniform(0.3, 0.47, n)
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(alpha, [pts], 1)
    hsv = np.array([[[hue, rng.uniform(150, 255), rng.uniform(140, 230)]]], np.float32)
    bgr = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    shade = 0.8 + 0.35 * (1.0 - yy) * (0.6 + 0.4 * xx)  # top-left light
    col = bgr[None, None, :] * shade[..., None]
    # printed label stripe / dots so the surface has some texture
    if rng.random() < 0.7:
        y0 = int(s * rng.uniform(0.35, 0.55))
        col[y0:y0 + max(2, s // 12)] *= 0.55
    for _ in range(int(rng.integers(2, 6))):
        p = (int(rng.integers(s // 4, 3 * s // 4)), int(rng.integers(s // 4, 3 * s // 4)))
        cv2.circle(col, p, max(1, s // 20), tuple(float(v) * 1.25 for v in bgr), -1)
    return np.clip(col, 0, 255), alpha.astype(bool)


def _paste(canvas: np.ndarray, label: np.ndarray, sprite, alpha, x: int, y: int, lab: int) -> None:
    """Paste sprite with top-left (x, y) into canvas/label (in place, clipped)."""
    h, w = alpha.shape
    H, W = label.shape
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
    canvas[y0:y1, x0:x1][a] = sprite[y0 - y:y1 - y, x0 - x:x1 - x][a]
    label[y0:y1, x0:x1][a] = lab


def _hand_mask(H: int, W: int, palm: np.ndarray, closing: float, scale: float) -> np.ndarray:
    """Grey hand silhouette: forearm from the top-right corner, palm, 4 fingers and a thumb."""
    m = np.zeros((H, W), np.uint8)
    px, py = int(palm[0]), int(palm[1])
    r = int(38 * scale)
    cv2.line(m, (W + 60, -80), (px, py), 1, int(60 * scale))  # forearm
    cv2.ellipse(m, (px, py), (r, int(r * 0.8)), 20, 0, 360, 1, -1)
    reach = 1.0 - 0.45 * closing  # fingers curl in when closing
    for i in range(4):
        fx = px - int((30 + 4 * i) * scale * reach)
        fy = py - int((22 - 16 * i) * scale)
        cv2.line(m, (px - r // 2, py - int((18 - 12 * i) * scale)), (fx - int(25 * scale * reach), fy), 1,
                 max(3, int(11 * scale)))
    cv2.line(m, (px, py + r // 2), (px - int(45 * scale * reach), py + int(40 * scale)), 1, max(3, int(13 * scale)))
    return m.astype(bool)


def make_grasp_sequence(seed: int = 0, n_frames: int = 70, height: int = 480, width: int = 640,
                        n_objects: int = 4, noise_std: float = 4.0, light_change: float = 0.2,
                        occlusion: float = 0.45, lift_px: Optional[int] = None,
                        target_size: Optional[int] = None) -> SyntheticSequence:
    """Render a synthetic grasp episode (approach ~40 %, close ~15 %, lift ~45 % of frames).

    Args:
        seed: RNG seed (scene layout, colours, noise).
        n_frames: number of frames (the paper's episodes are ~75 steps at 20 Hz).
        n_objects: objects on the table (the first is the target).
        noise_std: per-pixel Gaussian sensor noise.
        light_change: relative global brightness drop (with a slight tint) by the last frame.
        occlusion: how far the palm reaches over the target (0 = beside it, 1 = centred on it).
        lift_px: upward target displacement at the end (default 0.25 * height).
        target_size: target sprite size in pixels (default random 70..110).
    """
    rng = np.random.default_rng(seed)
    H, W = height, width
    table = make_table_image(rng, H, W)
    hues = (rng.uniform(0, 180) + np.arange(n_objects) * 180.0 / n_objects) % 180
    rng.shuffle(hues)
    sprites, positions, placed = [], [], []
    for i in range(n_objects):
        size = int(target_size or rng.integers(70, 111)) if i == 0 else int(rng.integers(50, 100))
        col, alpha = _object_sprite(rng, size, float(hues[i]))
        for _ in range(200):
            if i == 0:
                x = int(rng.uniform(0.3, 0.6) * W)
                y = int(rng.uniform(0.5, 0.7) * H)
            else:
                x = int(rng.uniform(0.03, 0.97) * W - size / 2)
                y = int(rng.uniform(0.35, 0.85) * H)
            box = (x - 12, y - 12, x + size + 12, y + size + 12)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                break
        placed.append(box)
        sprites.append((col, alpha))
        positions.append((x, y))
    lift_px = int(0.25 * H) if lift_px is None else int(lift_px)
    t_approach = max(1, int(0.4 * n_frames))  # frame 0 always shows the hand out of view
    t_close = max(t_approach, int(0.55 * n_frames))
    (tx, ty), tsize = positions[0], sprites[0][1].shape[0]
    centre = np.array([tx + tsize / 2, ty + tsize / 2], np.float64)
    grasp_palm = centre + np.array([0.9 - 0.7 * occlusion, -0.5 + 0.35 * occlusion]) * tsize
    start_palm = np.array([W + 80.0, -60.0])
    tint = 1.0 - light_change * np.array([1.0, 0.85, 0.7])

    yy = np.linspace(0.85, 1.1, H, dtype=np.float32)[:, None, None]
    hand_shade = np.broadcast_to(np.array([118.0, 116.0, 112.0], np.float32) * yy, (H, W, 3))
    frames, masks, on_table = [], [], []
    hand_scale = tsize / 90.0
    for t in range(n_frames):
        if t < t_approach:
            a = 0.5 - 0.5 * np.cos(np.pi * t / t_approach)
            palm, closing, lift = start_palm + a * (grasp_palm - start_palm), 0.0, 0.0
        elif t < t_close:
            palm, closing, lift = grasp_palm, (t - t_approach) / max(1, t_close - t_approach), 0.0
        else:
            a = (t - t_close) / max(1, n_frames - 1 - t_close)
            palm, closing, lift = grasp_palm - np.array([0, a * lift_px]), 1.0, a
        canvas = table.copy()
        label = np.zeros((H, W), np.int16)
        for i in range(n_objects - 1, -1, -1):
            col, alpha = sprites[i]
            x, y = positions[i]
            if i == 0 and lift > 0:
                s = 1.0 + 0.1 * lift
                ns = max(4, int(round(alpha.shape[0] * s)))
                col = cv2.resize(col, (ns, ns), interpolation=cv2.INTER_LINEAR)
                alpha = cv2.resize(alpha.astype(np.uint8), (ns, ns), interpolation=cv2.INTER_NEAREST) > 0
                x, y = int(round(centre[0] - ns / 2)), int(round(centre[1] - ns / 2 - lift * lift_px))
            _paste(canvas, label, col, alpha, x, y, i + 1)
        hand = _hand_mask(H, W, palm, closing, hand_scale)
        canvas[hand] = hand_shade[hand]
        label[hand] = -1
        if t == 0:
            labels0 = label.copy()
        f = t / max(1, n_frames - 1)
        canvas *= (1.0 - f * (1.0 - tint)).astype(np.float32)[None, None, :]
        if noise_std > 0:
            canvas += rng.standard_normal((H, W, 3), dtype=np.float32) * np.float32(noise_std)
        frames.append(np.clip(canvas, 0, 255).astype(np.uint8))
        masks.append(label == 1)
        on_table.append(lift == 0.0)
    boxes = []
    for i, (x, y) in enumerate(positions):
        a = sprites[i][1]
        ys, xs = np.nonzero(a)
        boxes.append((x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1))
    target_box = mask_to_box(masks[0]) or boxes[0]
    return SyntheticSequence(frames, masks, on_table, boxes, target_box,
                             meta={"seed": seed, "t_approach": t_approach, "t_close": t_close,
                                   "labels0": labels0})
