"""Data preparation for the attention-map figures: plain numpy, no matplotlib.

Selecting denoising steps and blocks from command-line specs, mapping token attention onto the head
and wrist token grids, token-part attention masses, and the per-figure data bundles consumed by
the renderers in :mod:`controller.viz.attention` (tested without looking at pixels).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .attention_io import AttentionMaps


_SPEC_RE = re.compile(r"^\s*(all|(first|middle|last|-?\d+|-?\d*:-?\d*(:-?\d+)?)"
                      r"(\s*,\s*(first|middle|last|-?\d+|-?\d*:-?\d*(:-?\d+)?))*)\s*$")


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------
def default_steps(n: int) -> list[int]:
    """First, middle and last denoising step (deduplicated)."""
    return sorted({0, (n - 1) // 2, n - 1})


def select_indices(spec: str | None, n: int, what: str, default: Sequence[int]) -> list[int]:
    """Parse an index selection over ``range(n)``.

    ``spec`` is ``None`` (use ``default``), ``"all"``, or a comma list of integers (negative
    counts from the end), the words ``first``/``middle``/``last``, and Python slices such as
    ``::2`` (every other). Returns sorted unique indices; raises ``ValueError`` naming ``what``.
    """
    if spec is None or not str(spec).strip():
        return sorted(set(int(i) for i in default))
    spec = str(spec).strip().lower()
    if not _SPEC_RE.match(spec):
        raise ValueError(f"--{what}: cannot parse {spec!r}; use e.g. 'all', '0,5,-1', "
                         f"'first,middle,last' or '::2'")
    if spec == "all":
        return list(range(n))
    out: set[int] = set()
    named = {"first": 0, "middle": (n - 1) // 2, "last": n - 1}
    for item in (s.strip() for s in spec.split(",")):
        if item in named:
            out.add(named[item])
        elif ":" in item:
            parts = [int(p) if p else None for p in item.split(":")]
            out.update(range(n)[slice(*parts)])
        else:
            i = int(item)
            if not -n <= i < n:
                raise ValueError(f"--{what}: index {i} out of range; this file has {n} {what} "
                                 f"(0..{n - 1})")
            out.add(i % n)
    if not out:
        raise ValueError(f"--{what}: {spec!r} selects nothing out of {n} {what}")
    return sorted(out)


def _spec_type(what: str):
    def check(value: str) -> str:
        if not _SPEC_RE.match(value.lower()):
            raise argparse.ArgumentTypeError(
                f"cannot parse {value!r} as {what}; use e.g. 'all', '0,5,-1', "
                f"'first,middle,last' or '::2'")
        return value
    return check


# ---------------------------------------------------------------------------------------------
# data preparation (numpy only)
# ---------------------------------------------------------------------------------------------
def tokens_to_grid(values: np.ndarray, maps: AttentionMaps, part: str) -> np.ndarray:
    """Take the tokens of image part ``part`` from the last axis and reshape them row-major
    to that part's (rows, cols) grid: ``(..., N) -> (..., rows, cols)``."""
    rows, cols = maps.grid(part)
    tokens = np.asarray(values)[..., maps.part_slice(part)]
    return tokens.reshape(*tokens.shape[:-1], rows, cols)


def part_masses(values: np.ndarray, maps: AttentionMaps) -> np.ndarray:
    """Total attention on each token part: ``(..., N) -> (..., P)`` in ``token_part_names``
    order."""
    values = np.asarray(values, dtype=np.float32)
    return np.stack([values[..., maps.part_slice(p)].sum(axis=-1)
                     for p in maps.token_part_names], axis=-1)


def _check_sample(maps: AttentionMaps, sample: int) -> int:
    if not -maps.num_samples <= sample < maps.num_samples:
        raise ValueError(f"--sample: index {sample} out of range; the file holds "
                         f"{maps.num_samples} sample(s)")
    return sample % maps.num_samples


def _meta_text(maps: AttentionMaps) -> str:
    return "  ".join(f"{k}={v}" for k, v in maps.meta.items()) if maps.meta else ""


@dataclass
class OverviewData:
    """Head-averaged maps for chosen blocks (rows) and steps (columns) of one sample."""

    sample: int
    steps: list[int]
    blocks: list[int]
    timesteps: list[int]
    head: np.ndarray    # (n_blocks, n_steps, gh, gw)
    wrist: np.ndarray   # (n_blocks, n_steps, wh, ww)
    mass: np.ndarray    # (n_blocks, n_steps, P)
    vmax: float         # shared colour-scale maximum over ``head`` and ``wrist``


def prepare_overview(maps: AttentionMaps, sample: int = 0, steps: Sequence[int] | None = None,
                     blocks: Sequence[int] | None = None) -> OverviewData:
    sample = _check_sample(maps, sample)
    steps = list(default_steps(maps.num_steps) if steps is None else steps)
    blocks = list(range(maps.num_blocks) if blocks is None else blocks)
    a = maps.attn[np.ix_(steps, blocks)][:, :, sample].astype(np.float32)  # (ns, nb, Hh, N)
    a = a.mean(axis=2).transpose(1, 0, 2)                                    # (nb, ns, N)
    head, wrist = tokens_to_grid(a, maps, "head"), tokens_to_grid(a, maps, "wrist")
    vmax = float(max(head.max(), wrist.max()))
    return OverviewData(sample, steps, blocks, [int(maps.timesteps[s]) for s in steps],
                        head, wrist, part_masses(a, maps), vmax)


@dataclass
class ImageData:
    """Images of one sample and the attention (mean over all blocks and heads) over them."""

    sample: int
    step: int
    timestep: int
    head_rgb: np.ndarray      # (H, W, 3) uint8 RGB
    mask: np.ndarray          # (H, W) bool
    wrist_rgb: np.ndarray     # (H2, W2, 3) uint8 RGB
    head_grid: np.ndarray     # (gh, gw)
    wrist_grid: np.ndarray    # (wh, ww)
    head_up: np.ndarray       # (H, W) float32, head_grid upsampled to the image
    wrist_up: np.ndarray      # (H2, W2) float32
    mass: np.ndarray          # (P,)
    vmax: float


def upsample(grid: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a token grid to an image size (the grid covers the whole image)."""
    h, w = int(hw[0]), int(hw[1])
    up = cv2.resize(np.asarray(grid, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return up.reshape(h, w)


def bgr_to_rgb(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., 2::-1])


def prepare_images(maps: AttentionMaps, sample: int = 0, step: int = -1) -> ImageData:
    sample = _check_sample(maps, sample)
    step = select_indices(str(step), maps.num_steps, "steps", [])[0]
    a = maps.attn[step, :, sample].astype(np.float32).mean(axis=(0, 1))       # (N,)
    head, wrist = tokens_to_grid(a, maps, "head"), tokens_to_grid(a, maps, "wrist")
    rgbm, wimg = maps.rgbm[sample], maps.right_cam_img[sample]
    return ImageData(sample, step, int(maps.timesteps[step]), bgr_to_rgb(rgbm[..., :3]),
                     rgbm[..., 3] > 0, bgr_to_rgb(wimg), head, wrist,
                     upsample(head, rgbm.shape[:2]), upsample(wrist, wimg.shape[:2]),
                     part_masses(a, maps), float(max(head.max(), wrist.max())))


@dataclass
class PerHeadData:
    sample: int
    step: int
    timestep: int
    blocks: list[int]
    head: np.ndarray    # (n_blocks, Hh, gh, gw)
    wrist: np.ndarray   # (n_blocks, Hh, wh, ww)
    mass: np.ndarray    # (n_blocks, Hh, P)


def prepare_per_head(maps: AttentionMaps, sample: int = 0, step: int = -1,
                     blocks: Sequence[int] | None = None) -> PerHeadData:
    sample = _check_sample(maps, sample)
    step = select_indices(str(step), maps.num_steps, "steps", [])[0]
    blocks = list(range(maps.num_blocks) if blocks is None else blocks)
    a = maps.attn[step, blocks, sample].astype(np.float32)                   # (nb, Hh, N)
    return PerHeadData(sample, step, int(maps.timesteps[step]), blocks,
                       tokens_to_grid(a, maps, "head"), tokens_to_grid(a, maps, "wrist"),
                       part_masses(a, maps))
