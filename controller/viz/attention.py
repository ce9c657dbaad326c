"""Figures of the controller's cross-attention maps (``attention_map_visualizer.py``).

Each attention-map file (see :mod:`controller.viz.attention_io`) holds, per denoising step,
DiT block, sample and head, the attention of the first action token over the condition tokens
(head-camera patches, wrist-camera patches, state, diffusion time). For every file and chosen
sample this module writes:

``<stem>_sample<b>_overview.png``
    rows = blocks, columns = chosen denoising steps x {head grid, wrist grid} (mean over heads,
    one colour scale), plus a column of stacked bars with the attention mass on each token part.
``<stem>_sample<b>_images.png``
    head image, its mask, head attention (mean over all blocks and heads at the last chosen
    step) upsampled over the image, wrist image and overlay, and the token-part masses.
``<stem>_sample<b>_perhead_step<s>_{head,wrist,mass}.png`` (``--per-head``)
    blocks x heads grids at one step, and per-head token-part masses.

The data preparation (``prepare_*``) is plain numpy and separate from the drawing (``render_*``)
so it can be tested without looking at pixels. Drawing uses ``matplotlib.figure.Figure``
directly (Agg canvas, no pyplot state, no display needed).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.patches
import matplotlib.ticker
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from .attention_io import AttentionMaps, load_attention_maps

__all__ = [
    "ImageData", "OverviewData", "PerHeadData", "default_steps", "find_attention_files",
    "main", "overlay_heat", "part_masses", "prepare_images", "prepare_overview",
    "prepare_per_head", "render_images", "render_overview", "render_per_head",
    "render_per_head_mass", "select_indices",
    "tokens_to_grid", "upsample", "visualize_file",
]

CMAP = "inferno"
PART_COLOURS = {"head": "#1f77b4", "wrist": "#ff7f0e", "state": "#2ca02c", "time": "#d62728"}
_EXTRA_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
PART_LABELS = {"head": "head cam", "wrist": "wrist cam"}
from .attention_data import (ImageData, OverviewData, PerHeadData, _SPEC_RE, _check_sample, _meta_text, _spec_type, bgr_to_rgb, default_steps, part_masses, prepare_images, prepare_overview, prepare_per_head, select_indices, tokens_to_grid, upsample)  # noqa: F401


def overlay_heat(rgb: np.ndarray, heat: np.ndarray, norm: mcolors.Normalize,
                 cmap: str = CMAP, alpha: tuple[float, float] = (0.25, 0.9)) -> np.ndarray:
    """Blend a colour-mapped heat map (same H, W) over an RGB uint8 image.

    The blend weight grows with the normalised heat from ``alpha[0]`` to ``alpha[1]``, so the
    image stays visible where attention is low and the peaks stand out.
    """
    h = np.clip(np.ma.filled(norm(heat), 0.0), 0.0, 1.0)[..., None]
    coloured = matplotlib.colormaps[cmap](h[..., 0])[..., :3]
    a = alpha[0] + (alpha[1] - alpha[0]) * h
    out = (1.0 - a) * (rgb.astype(np.float32) / 255.0) + a * coloured
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------
def _norm(vmax: float, log: bool) -> mcolors.Normalize:
    vmax = max(float(vmax), 1e-12)
    if log:
        return mcolors.LogNorm(vmin=vmax * 1e-3, vmax=vmax, clip=True)
    return mcolors.Normalize(vmin=0.0, vmax=vmax)


def _part_colour(name: str, i: int) -> str:
    return PART_COLOURS.get(name, _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)])


def _heat(ax, grid: np.ndarray, norm, title: str, fontsize: float = 7.0):
    im = ax.imshow(grid, cmap=CMAP, norm=norm, interpolation="nearest", aspect="equal")
    ax.set_title(title, fontsize=fontsize, pad=2.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _mass_bars(ax, mass: np.ndarray, labels: list[str], names: Sequence[str], *,
               fontsize: float = 6.5) -> None:
    """Horizontal stacked bars (one per row of ``mass``), segments = token parts."""
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for j, name in enumerate(names):
        ax.barh(y, mass[:, j], left=left, height=0.72, color=_part_colour(name, j),
                edgecolor="white", linewidth=0.5)
        for k in range(len(labels)):
            if mass[k, j] >= 0.12:
                ax.text(left[k] + mass[k, j] / 2, y[k], f"{mass[k, j]:.0%}", ha="center",
                        va="center", fontsize=fontsize, color="white")
        left += mass[:, j]
    ax.set_xlim(0, max(1.0, float(left.max())))
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.tick_params(axis="x", labelsize=fontsize)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(fig: Figure, names: Sequence[str], y: float) -> None:
    handles = [matplotlib.patches.Patch(color=_part_colour(n, i), label=PART_LABELS.get(n, n))
               for i, n in enumerate(names)]
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.995, y), ncol=len(names),
               fontsize=8, frameon=False, title="token parts", title_fontsize=8)


def render_overview(maps: AttentionMaps, data: OverviewData, *, log_scale: bool = False,
                    title: str = "") -> Figure:
    nb, ns = len(data.blocks), len(data.steps)
    gh, gw = maps.head_grid
    wh, ww = maps.wrist_grid
    cell = 1.6                                    # inches per heat-map cell
    w_head, w_wrist = (cell * min(1.6, max(0.6, c / r)) for r, c in ((gh, gw), (wh, ww)))
    w_mass, w_cbar, gap, step_gap, mass_gap = 2.3, 0.95, 0.18, 0.22, 0.75
    left, right, top, bottom = 0.55, 0.15, 1.25, 0.55
    # columns: [head, wrist, spacer] * ns, wider spacer, mass; spacers separate the step pairs
    widths: list[float] = []
    for c in range(ns):
        widths += [w_head, w_wrist, step_gap if c < ns - 1 else mass_gap]
    widths.append(w_mass)
    fig_w = left + sum(widths) + gap * (len(widths) - 1) + w_cbar + right
    fig_h = top + bottom + nb * (cell + 0.42)
    fig = Figure(figsize=(fig_w, fig_h))
    gs = fig.add_gridspec(nb, len(widths), width_ratios=widths, left=left / fig_w,
                          right=1 - (w_cbar + right) / fig_w, top=1 - top / fig_h,
                          bottom=bottom / fig_h, wspace=gap / np.mean(widths), hspace=0.42 / cell)
    norm = _norm(data.vmax, log_scale)
    names = maps.token_part_names
    i_head, i_wrist = names.index("head"), names.index("wrist")
    im = None
    for r, b in enumerate(data.blocks):
        for c, (s, t) in enumerate(zip(data.steps, data.timesteps)):
            for k, (part, grids, ip) in enumerate((("head", data.head, i_head),
                                                   ("wrist", data.wrist, i_wrist))):
                ax = fig.add_subplot(gs[r, 3 * c + k])
                im = _heat(ax, grids[r, c], norm,
                           f"block {b} · step {s} (t={t})\n{PART_LABELS[part]} · "
                           f"mass {data.mass[r, c, ip]:.1%}", fontsize=6.5)
                if c == 0 and k == 0:
                    ax.set_ylabel(f"block {b}", fontsize=9, fontweight="bold")
        ax = fig.add_subplot(gs[r, -1])
        _mass_bars(ax, data.mass[r], [f"s{s} t={t}" for s, t in zip(data.steps, data.timesteps)],
                   names)
        ax.set_title(f"block {b} · attention mass per part", fontsize=6.5, pad=2.5)
        if r != nb - 1:
            ax.set_xticklabels([])
    cax = fig.add_axes([1 - (w_cbar + right - 0.25) / fig_w, bottom / fig_h, 0.16 / fig_w,
                        1 - (top + bottom) / fig_h])
    fig.colorbar(im, cax=cax).set_label("attention weight (mean over heads)", fontsize=8)
    cax.tick_params(labelsize=7)
    s_txt = ", ".join(f"{s} (t={t})" for s, t in zip(data.steps, data.timesteps))
    fig.suptitle(
        f"{title}\nsample {data.sample} · first action token → condition tokens · "
        f"{maps.num_heads} heads averaged · denoising steps {s_txt} of {maps.num_steps}\n"
        f"head grid {gh}×{gw}, wrist grid {wh}×{ww} · one colour scale for all maps"
        f"{' (log)' if log_scale else ''}", x=left / fig_w, ha="left",
        y=1 - 0.08 / fig_h, va="top", fontsize=9)
    _legend(fig, names, 1 - 0.08 / fig_h)
    return fig


def render_images(maps: AttentionMaps, data: ImageData, *, log_scale: bool = False,
                  title: str = "") -> Figure:
    fig = Figure(figsize=(13.0, 8.8))
    gs = fig.add_gridspec(2, 3, left=0.03, right=0.9, top=0.84, bottom=0.05, wspace=0.12,
                          hspace=0.3)
    norm = _norm(data.vmax, log_scale)
    names = maps.token_part_names
    m_head, m_wrist = (data.mass[names.index(p)] for p in ("head", "wrist"))
    where = f"step {data.step} (t={data.timestep}) · mean of {maps.num_blocks} blocks × " \
            f"{maps.num_heads} heads"

    def show(pos, img, ttl, **kw):
        ax = fig.add_subplot(pos)
        ax.imshow(img, **kw)
        ax.set_title(ttl, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    show(gs[0, 0], data.head_rgb, "head camera (RGB)")
    show(gs[0, 1], data.mask, f"target mask ({data.mask.mean():.1%} of pixels)", cmap="gray",
         vmin=0, vmax=1, interpolation="nearest")
    ax = show(gs[0, 2], overlay_heat(data.head_rgb, data.head_up, norm),
              f"head attention: {m_head:.1%} of total, grid {maps.head_grid[0]}×"
              f"{maps.head_grid[1]}\n{where}\n(white line = mask outline)")
    if data.mask.any() and not data.mask.all():
        ax.contour(data.mask.astype(np.float32), levels=[0.5], colors="white", linewidths=1.0)
    show(gs[1, 0], data.wrist_rgb, "wrist camera (RGB)")
    show(gs[1, 1], overlay_heat(data.wrist_rgb, data.wrist_up, norm),
         f"wrist attention: {m_wrist:.1%} of total, grid {maps.wrist_grid[0]}×"
         f"{maps.wrist_grid[1]}\n{where}")
    ax = fig.add_subplot(gs[1, 2])
    pos = ax.get_position()        # leave room for the tick labels left of the bars
    ax.set_position([pos.x0 + 0.08, pos.y0, pos.width - 0.08, pos.height * 0.9])
    labels = [f"{PART_LABELS.get(n, n)} ({s} tok)" for n, s in zip(names, maps.token_part_sizes)]
    y = np.arange(len(names))[::-1]
    ax.barh(y, data.mass, color=[_part_colour(n, i) for i, n in enumerate(names)])
    for yi, m in zip(y, data.mass):
        ax.text(m + 0.01, yi, f"{m:.1%}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.tick_params(labelsize=8)
    ax.set_title(f"attention mass per token part\n{where}", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    cax = fig.add_axes([0.925, 0.05, 0.013, 0.79])
    fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=cax).set_label(
        "attention weight (overlays)", fontsize=8)
    cax.tick_params(labelsize=7)
    state = np.array2string(maps.right_state[data.sample], precision=2, max_line_width=200,
                            floatmode="fixed")
    fig.suptitle(f"{title}\nsample {data.sample} · state {state}", fontsize=9, x=0.03,
                 ha="left", y=0.985, va="top")
    return fig


def render_per_head(maps: AttentionMaps, data: PerHeadData, part: str, *,
                    log_scale: bool = False, title: str = "") -> Figure:
    """Blocks x heads grid of one image part (``'head'`` or ``'wrist'``) at one step."""
    grids = data.head if part == "head" else data.wrist
    nb, nh = grids.shape[:2]
    rows, cols = maps.grid(part)
    cell = 1.35
    cw = cell * min(1.6, max(0.6, cols / rows))
    left, right, top, bottom, gap, vgap = 0.55, 1.1, 1.15, 0.25, 0.12, 0.38
    right += max(0.0, 5.0 - (left + nh * cw + (nh - 1) * gap + right))  # room for the title
    fig_w = left + nh * cw + (nh - 1) * gap + right
    fig_h = top + bottom + nb * (cell + vgap)
    fig = Figure(figsize=(fig_w, fig_h))
    gs = fig.add_gridspec(nb, nh, left=left / fig_w, right=1 - right / fig_w,
                          top=1 - top / fig_h, bottom=bottom / fig_h, wspace=gap / cw,
                          hspace=vgap / cell)
    norm = _norm(float(grids.max()), log_scale)
    ip = maps.token_part_names.index(part)
    im = None
    for r, b in enumerate(data.blocks):
        for h in range(nh):
            ax = fig.add_subplot(gs[r, h])
            im = _heat(ax, grids[r, h], norm,
                       f"block {b} · head {h}\nmass {data.mass[r, h, ip]:.1%}", fontsize=6.5)
            if h == 0:
                ax.set_ylabel(f"block {b}", fontsize=8, fontweight="bold")
    x_grid_end = (left + nh * cw + (nh - 1) * gap) / fig_w
    cax = fig.add_axes([x_grid_end + 0.25 / fig_w, bottom / fig_h, 0.15 / fig_w,
                        1 - (top + bottom) / fig_h])
    fig.colorbar(im, cax=cax).set_label("attention weight", fontsize=8)
    cax.tick_params(labelsize=7)
    fig.suptitle(f"{title}\nsample {data.sample} · {PART_LABELS[part]} grid {rows}×{cols} · "
                 f"per head\nstep {data.step} (t={data.timestep}) · one colour scale",
                 fontsize=9, x=left / fig_w, ha="left", y=1 - 0.08 / fig_h, va="top")
    return fig


def render_per_head_mass(maps: AttentionMaps, data: PerHeadData, *, title: str = "") -> Figure:
    """One (blocks x heads) matrix per token part: share of attention on that part."""
    names = maps.token_part_names
    nb, nh = data.mass.shape[:2]
    pw = max(2.2, 0.42 * nh + 0.9)
    fig_w, fig_h = len(names) * (pw + 0.35) + 1.0, 1.5 + 0.32 * nb + 0.6
    fig = Figure(figsize=(fig_w, fig_h))
    gs = fig.add_gridspec(1, len(names), left=0.6 / fig_w, right=1 - 0.95 / fig_w,
                          top=1 - 1.1 / fig_h, bottom=0.5 / fig_h, wspace=0.12)
    norm = mcolors.Normalize(0.0, 1.0)
    im = None
    for j, name in enumerate(names):
        ax = fig.add_subplot(gs[0, j])
        m = data.mass[:, :, j]
        im = ax.imshow(m, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
        if nb * nh <= 160:
            for (r, h), v in np.ndenumerate(m):
                ax.text(h, r, f"{v * 100:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 else "black")
        ax.set_title(f"{PART_LABELS.get(name, name)}\n(mean {m.mean():.1%})", fontsize=8)
        ax.set_xticks(range(nh))
        ax.set_xticklabels(range(nh), fontsize=7)
        ax.set_xlabel("head", fontsize=8)
        ax.set_yticks(range(nb))
        ax.set_yticklabels(data.blocks if j == 0 else [], fontsize=7)
        if j == 0:
            ax.set_ylabel("block", fontsize=8)
    cax = fig.add_axes([1 - 0.75 / fig_w, 0.5 / fig_h, 0.14 / fig_w, 1 - 1.6 / fig_h])
    fig.colorbar(im, cax=cax).set_label("share of attention (numbers in %)", fontsize=8)
    cax.tick_params(labelsize=7)
    fig.suptitle(f"{title}\nsample {data.sample} · attention mass per token part and head · "
                 f"step {data.step} (t={data.timestep})", fontsize=9, x=0.6 / fig_w, ha="left",
                 y=1 - 0.08 / fig_h, va="top")
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def find_attention_files(attn_dir: str | Path) -> list[Path]:
    """The ``*.npz`` files directly in ``attn_dir``, in natural order (2 before 10)."""
    d = Path(attn_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"attention-map directory not found: {d}")
    files = sorted((p for p in d.glob("*.npz") if p.is_file()), key=_natural_key)
    if not files:
        raise FileNotFoundError(f"no .npz attention-map files in {d} (looked for {d}/*.npz; "
                                f"files are written by the policy when attention maps are on)")
    return files


def visualize_file(path: str | Path, out_dir: str | Path, *, steps: str | None = None,
                   blocks: str | None = None, sample: str | int = 0, per_head: bool = False,
                   per_head_step: int = -1, log_scale: bool = False,
                   dpi: int = 110) -> list[Path]:
    """Write the figures of one attention-map file; returns the PNG paths."""
    path, out_dir = Path(path), Path(out_dir)
    maps = load_attention_maps(path)
    step_ix = select_indices(steps, maps.num_steps, "steps", default_steps(maps.num_steps))
    block_ix = select_indices(blocks, maps.num_blocks, "blocks", range(maps.num_blocks))
    samples = (list(range(maps.num_samples)) if str(sample).lower() == "all"
               else [_check_sample(maps, int(sample))])
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{path.name}   {_meta_text(maps)}".rstrip()
    written: list[Path] = []
    for b in samples:
        stem = out_dir / f"{path.stem}_sample{b}"
        fig = render_overview(maps, prepare_overview(maps, b, step_ix, block_ix),
                              log_scale=log_scale, title=title)
        written.append(_save(fig, Path(f"{stem}_overview.png"), dpi))
        fig = render_images(maps, prepare_images(maps, b, step_ix[-1]), log_scale=log_scale,
                            title=title)
        written.append(_save(fig, Path(f"{stem}_images.png"), dpi))
        if per_head:
            ph = prepare_per_head(maps, b, per_head_step, block_ix)
            for part in ("head", "wrist"):
                fig = render_per_head(maps, ph, part, log_scale=log_scale, title=title)
                written.append(_save(fig, Path(f"{stem}_perhead_step{ph.step}_{part}.png"), dpi))
            fig = render_per_head_mass(maps, ph, title=title)
            written.append(_save(fig, Path(f"{stem}_perhead_step{ph.step}_mass.png"), dpi))
    return written


def build_parser() -> argparse.ArgumentParser:
    from inference_utils.cli_common import ArgumentParser  # noqa: PLC0415 - kebab flags, old spellings

    p = ArgumentParser(
        prog="attention_map_visualizer.py",
        description="Render the controller's cross-attention maps (.npz files written by the "
                    "policy) as PNG figures: an overview per file and sample (blocks x denoising "
                    "steps, head-averaged heat maps over the head and wrist token grids, token-"
                    "part masses), the attention over the camera images, and optionally "
                    "per-head detail.")
    p.add_argument("--attn-maps-dir", required=True, help="directory holding the *.npz files")
    p.add_argument("--out-dir", default=None, help="where to write PNGs "
                   "(default: ATTN_MAPS_DIR/visualizations)")
    p.add_argument("--steps", type=_spec_type("steps"), default=None,
                   help="denoising steps to show: 'all', indices like '0,7,-1', "
                        "'first,middle,last' (default) or a slice like '::4'")
    p.add_argument("--blocks", type=_spec_type("blocks"), default=None,
                   help="DiT blocks to show (default all); e.g. '::2' for every other block")
    p.add_argument("--sample", default="0", help="sample index within each file, or 'all' "
                   "(default 0)")
    p.add_argument("--per-head", action="store_true",
                   help="also write blocks x heads figures for one step")
    p.add_argument("--per-head-step", type=int, default=-1,
                   help="denoising step index for --per-head (default -1, the last)")
    p.add_argument("--log-scale", action="store_true",
                   help="logarithmic colour scale (3 decades below the maximum)")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution (default 110)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 some files failed,
    2 nothing to do)."""
    from rich.console import Console
    from rich.markup import escape
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if str(args.sample).lower() != "all" and not re.fullmatch(r"-?\d+", str(args.sample)):
        console.print("[red]error:[/] --sample must be an integer or 'all', "
                      f"got {escape(repr(args.sample))}")
        return 2
    try:
        files = find_attention_files(args.attn_maps_dir)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.attn_maps_dir) / "visualizations"
    written, failed = [], []
    for f in tqdm(files, desc="attention maps", unit="file", disable=args.quiet, file=sys.stderr):
        try:
            written += visualize_file(f, out_dir, steps=args.steps, blocks=args.blocks,
                                      sample=args.sample, per_head=args.per_head,
                                      per_head_step=args.per_head_step,
                                      log_scale=args.log_scale, dpi=args.dpi)
        except (ValueError, OSError, KeyError) as exc:
            failed.append((f, exc))
            console.print(f"[red]error:[/] {escape(f.name)}: {escape(str(exc))}")
    if not args.quiet:
        console.print(f"wrote {len(written)} PNG(s) for {len(files) - len(failed)} file(s) "
                      f"to {escape(str(out_dir))}")
    if failed:
        console.print(f"[red]{len(failed)} of {len(files)} file(s) failed:[/] "
                      + escape(", ".join(f.name for f, _ in failed)))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
