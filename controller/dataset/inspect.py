"""Inspect zarr datasets: ``python -m controller.dataset.inspect PATH [PATH ...]``.

Prints, per store: zarr format, episode and step counts, episode length statistics, every array's
shape / dtype / chunks / compressor, per-dimension ranges of state and action, and flags:

* errors (exit code 1): layout problems (missing keys, wrong shapes or dtypes, bad
  ``episode_ends``, empty dataset -- the same checks the training dataset runs) and NaN/inf values;
* warnings: arm state outside [-1, 1], hand state outside [0, 1], episodes whose mask channel is
  empty, mask values other than 0/1/255, episodes shorter than 2 steps, constant action dims.

``--strict`` turns warnings into a failing exit code too.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from controller.dataset.errors import DEFAULT_KEYS, DatasetError
from controller.dataset.replay_buffer import ZarrReplayBuffer, describe_codecs, open_zarr_group

ARM_DOF = 7
RANGE_TOL = 1e-6


@dataclass
class Report:
    """Everything found about one store."""
    path: str
    zarr_format: Optional[int] = None
    arrays: list = field(default_factory=list)      # (name, shape, dtype, chunks, compressor)
    summary: dict = field(default_factory=dict)
    dim_rows: list = field(default_factory=list)    # (dim, state_min, state_max, act_min, act_max)
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def _fmt_dims(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in dims) + "]"


def _check_masks(rb: ZarrReplayBuffer, report: Report, mask_frames: int) -> None:
    """Flag episodes whose mask channel is empty in every checked frame, and odd mask values."""
    if mask_frames == 0 or "rgbm" not in rb:
        return
    rgbm, empty, odd = rb["rgbm"], [], set()
    for ep, (s, e) in enumerate(zip(rb.episode_starts, rb.episode_ends)):
        n = int(e - s)
        k = n if mask_frames < 0 else min(n, mask_frames)
        steps = np.unique(np.linspace(s, e - 1, k).round().astype(int))
        any_fg = False
        for t in steps:
            m = rgbm[int(t)][..., 3]                       # (H, W) uint8
            any_fg |= bool(m.any())
            vals = np.unique(m)
            odd.update(int(v) for v in vals if v not in (0, 1, 255))
        if not any_fg:
            empty.append(ep)
    if empty:
        report.warnings.append(f"{rb.path}: key 'data/rgbm' mask channel is empty in "
                               f"{len(empty)} episode(s): {empty[:20]}{' ...' if len(empty) > 20 else ''}")
    if odd:
        report.warnings.append(f"{rb.path}: key 'data/rgbm' mask channel has values other than 0/1/255: "
                               f"{sorted(odd)[:10]}")


def _check_low_dim(rb: ZarrReplayBuffer, report: Report) -> None:
    state, action = np.asarray(rb["right_state"]), np.asarray(rb["action"])
    for key, arr in (("right_state", state), ("action", action)):
        bad = ~np.isfinite(arr)
        if bad.any():
            steps = np.nonzero(bad.any(axis=1))[0]
            report.errors.append(f"{rb.path}: key 'data/{key}' has {int(bad.sum())} NaN/inf values in "
                                 f"{len(steps)} step(s) (first at step {int(steps[0])}); expected finite")
    with np.errstate(invalid="ignore"):
        lo_s, hi_s = np.nanmin(state, axis=0), np.nanmax(state, axis=0)
        lo_a, hi_a = np.nanmin(action, axis=0), np.nanmax(action, axis=0)
    report.dim_rows = [(d, lo_s[d], hi_s[d], lo_a[d], hi_a[d]) for d in range(state.shape[1])]
    arm = [d for d in range(min(ARM_DOF, state.shape[1]))
           if lo_s[d] < -1 - RANGE_TOL or hi_s[d] > 1 + RANGE_TOL]
    hand = [d for d in range(ARM_DOF, state.shape[1]) if lo_s[d] < -RANGE_TOL or hi_s[d] > 1 + RANGE_TOL]
    if arm:
        report.warnings.append(f"{rb.path}: key 'data/right_state' arm dims {_fmt_dims(arm)} leave [-1, 1] "
                               f"(expected joints normalised against the limits)")
    if hand:
        report.warnings.append(f"{rb.path}: key 'data/right_state' hand dims {_fmt_dims(hand)} leave [0, 1]")
    const = [d for d in range(action.shape[1]) if hi_a[d] - lo_a[d] < 1e-4]
    if const:
        report.warnings.append(f"{rb.path}: key 'data/action' dims {_fmt_dims(const)} are constant "
                               f"(the normaliser maps them to 0)")


def inspect_store(path: str, mask_frames: int = 8) -> Report:
    """Collect the report for one store (never raises for data problems)."""
    report = Report(path=str(path))
    try:
        root = open_zarr_group(path, mode="r")
    except DatasetError as exc:
        report.errors.append(str(exc))
        return report
    report.zarr_format = int(getattr(root.metadata, "zarr_format", 0))
    for name, node in sorted(root.members(max_depth=None), key=lambda x: x[0]):
        if hasattr(node, "shape") and hasattr(node, "chunks"):
            report.arrays.append((name, tuple(node.shape), str(node.dtype), tuple(node.chunks),
                                  describe_codecs(node)))
    try:
        rb = ZarrReplayBuffer.open(path, keys=DEFAULT_KEYS, check_finite=False)
    except DatasetError as exc:
        report.errors.append(str(exc))
        return report
    lengths = rb.episode_lengths
    report.summary = {"episodes": rb.n_episodes, "steps": rb.n_steps, "length min": int(lengths.min()),
                      "length mean": f"{lengths.mean():.1f}", "length max": int(lengths.max())}
    short = np.nonzero(lengths < 2)[0].tolist()
    if short:
        report.warnings.append(f"{rb.path}: key 'meta/episode_ends' has {len(short)} episode(s) shorter "
                               f"than 2 steps: {short[:20]}")
    _check_low_dim(rb, report)
    _check_masks(rb, report, mask_frames)
    return report


def render(report: Report, console) -> None:
    """Print one report with rich tables."""
    from rich.table import Table

    console.rule(f"[bold]{report.path}")
    if report.zarr_format is not None:
        console.print(f"zarr format: v{report.zarr_format}")
    if report.summary:
        console.print("  ".join(f"{k}: {v}" for k, v in report.summary.items()))
    if report.arrays:
        t = Table(title="arrays", show_lines=False)
        for col in ("key", "shape", "dtype", "chunks", "compressor"):
            t.add_column(col, overflow="fold")
        for name, shape, dtype, chunks, comp in report.arrays:
            t.add_row(name, str(shape), dtype, str(chunks), comp)
        console.print(t)
    if report.dim_rows:
        t = Table(title="per-dimension ranges")
        for col in ("dim", "part", "state min", "state max", "action min", "action max"):
            t.add_column(col, justify="right")
        for d, smin, smax, amin, amax in report.dim_rows:
            t.add_row(str(d), "arm" if d < ARM_DOF else "hand", f"{smin:.4g}", f"{smax:.4g}",
                      f"{amin:.4g}", f"{amax:.4g}")
        console.print(t)
    for msg in report.errors:
        console.print(f"[bold red]ERROR[/] {msg}", highlight=False, soft_wrap=True)
    for msg in report.warnings:
        console.print(f"[yellow]WARNING[/] {msg}", highlight=False, soft_wrap=True)
    if not report.errors and not report.warnings:
        console.print("[green]OK[/]: no problems found")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code (1 if any store has an error)."""
    parser = argparse.ArgumentParser(prog="python -m controller.dataset.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="zarr store(s) to inspect")
    parser.add_argument("--mask-frames", type=int, default=8,
                        help="frames per episode checked for an empty mask (0: skip, -1: all)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    failed = False
    for path in args.paths:
        report = inspect_store(path, mask_frames=args.mask_frames)
        render(report, console)
        failed |= bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
