"""The conversion behind ``python -m controller.dataset.convert`` (see that module for the CLI).

:func:`convert` reads every episode of a source (any format :func:`detect_format` knows) through
:class:`~controller.dataset.formats.EpisodeSource` and writes it through an
:class:`~controller.dataset.formats.EpisodeSink`, with the episode's language instruction and the
per-step reasoning strings. The sink writes to a temporary path that replaces the destination only
when everything succeeded; on any failure :meth:`EpisodeSink.abort` removes it, so nothing is left
at the destination (and an existing destination is untouched unless ``overwrite``).

Destination format (:func:`infer_dest_format`), when not given explicitly:

==================================================  ============
destination name                                    format
==================================================  ============
ends with ``.zarr``                                 ``zarr``
ends with ``.hdf5`` / ``.h5`` / ``_h5`` / ``_hdf5``  ``act_h5``
ends with ``_lerobot`` / ``.lerobot``               ``lerobot``
anything else                                       error: pass ``--to``
==================================================  ============
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping, Optional, Sequence

from controller.dataset.errors import DEFAULT_KEYS, DatasetError

#: Destination name endings and the format they mean (checked in order, case-insensitive).
DEST_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".zarr", "zarr"), (".hdf5", "act_h5"), (".h5", "act_h5"), ("_h5", "act_h5"), ("_hdf5", "act_h5"),
    ("_lerobot", "lerobot"), (".lerobot", "lerobot"))


def infer_dest_format(dst: str, to: Optional[str] = None) -> str:
    """The format to write ``dst`` in: ``to`` if given, else from the name (see module docstring)."""
    if to:
        return to
    name = os.path.basename(os.path.normpath(os.fspath(dst))).lower()
    for suffix, fmt in DEST_SUFFIXES:
        if name.endswith(suffix):
            return fmt
    rules = ", ".join(f"'*{s}' -> {f}" for s, f in DEST_SUFFIXES)
    raise DatasetError(f"{dst}: cannot tell the output format from the name ({rules}); pass --to "
                       f"zarr, act_h5 or lerobot")


def parse_camera_map(items: Optional[Sequence[str]]) -> dict[str, str]:
    """``['head=top', 'wrist=cam_right_wrist']`` -> ``{'head': 'top', 'wrist': 'cam_right_wrist'}``."""
    out: dict[str, str] = {}
    for item in items or ():
        role, sep, name = str(item).partition("=")
        if not sep or not role or not name:
            raise DatasetError(f"--camera-map entries are ROLE=SOURCE_CAMERA (e.g. head=top), got {item!r}")
        if role not in ("head", "wrist"):
            raise DatasetError(f"--camera-map role must be 'head' or 'wrist', got {role!r} in {item!r}")
        out[role] = name
    return out


def _episode_text(source: Any, ep: int, start: int, end: int) -> tuple[Optional[str], Optional[list[str]]]:
    """The language of episode ``ep`` and its reasoning strings (None when the source has none)."""
    language = source.language(ep)
    reasoning = [source.reasoning(s) for s in range(start, end)]
    if all(r is None for r in reasoning):
        return language, None
    return language, ["" if r is None else str(r) for r in reasoning]


def _source_fps(source: Any, fps: Optional[float]) -> float:
    if fps:
        return float(fps)
    try:
        found = source.describe().get("fps")
    except Exception:  # describe() is informational; never fail a conversion on it
        found = None
    return float(found) if found else 20.0


def convert(src: str, dst: str, to: Optional[str] = None, options: Any = None,
            mask_box: Optional[Sequence[float]] = None, fps: Optional[float] = None, overwrite: bool = False,
            episodes: Optional[int] = None, progress: bool = True,
            perception: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Convert the dataset at ``src`` into ``dst``; returns a summary dict.

    Args:
        to: destination format (default: from ``dst``'s name, :func:`infer_dest_format`).
        options: :class:`~controller.dataset.formats.SourceOptions` (camera map, state/action keys,
            mask mode); ``mask='segment'`` computes the mask here (:mod:`.convert_mask`).
        mask_box: fixed head-image box for ``mask='segment'`` (else each episode's language).
        fps: frame rate written to the destination (default: the source's, else 20).
        overwrite: replace an existing ``dst`` (only once the new one is complete).
        episodes: convert only the first N episodes.
        perception: segmenter/tracker config for ``mask='segment'``.

    Raises :class:`DatasetError` naming the file, key and episode on any failure; nothing is left at
    ``dst`` then.
    """
    from controller.dataset.formats import SourceOptions, detect_format, open_sink, open_source  # noqa: PLC0415

    src, dst = os.fspath(src), os.fspath(dst)
    options = options or SourceOptions()
    dst_fmt = infer_dest_format(dst, to)
    if os.path.exists(dst) and not overwrite:
        raise DatasetError(f"{dst} exists; pass --overwrite to replace it")
    if os.path.exists(dst) and os.path.realpath(dst) == os.path.realpath(src):
        raise DatasetError(f"{dst}: the destination is the source; write to another path")
    if mask_box is not None and options.mask != "segment":
        raise DatasetError("--mask-box is only used with --mask segment")
    if episodes is not None and episodes < 1:
        raise DatasetError(f"--episodes must be >= 1, got {episodes}")
    src_fmt = detect_format(src)
    # readers never segment: they read with an empty (or their own) mask, replaced below
    read_options = dataclasses.replace(options, mask="zeros", mask_key=None) if options.mask == "segment" else options
    source = open_source(src, options=read_options, fmt=src_fmt)
    missing = [k for k in DEFAULT_KEYS if k not in source]
    if missing:
        raise DatasetError(f"{src}: the {src_fmt} source has no key(s) {missing}; expected {list(DEFAULT_KEYS)} "
                           f"(see --camera-map, --state-keys, --action-keys)")
    segmenter = None
    if options.mask == "segment":
        from controller.dataset.convert_mask import EpisodeSegmenter  # noqa: PLC0415
        segmenter = EpisodeSegmenter(mask_box, perception)
    n_eps = source.n_episodes if episodes is None else min(int(episodes), source.n_episodes)
    starts, ends = source.episode_starts, source.episode_ends
    n_steps = int(ends[n_eps - 1]) - int(starts[0]) if n_eps else 0
    out_fps = _source_fps(source, fps)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm  # noqa: PLC0415

    sink = open_sink(dst, dst_fmt, fps=out_fps, overwrite=overwrite)
    n_lang = n_reason = 0
    try:
        with tqdm(total=n_steps, desc=f"convert -> {dst_fmt}", unit="step", disable=not progress,
                  dynamic_ncols=True) as bar:
            for ep in range(n_eps):
                start, end = int(starts[ep]), int(ends[ep])
                where = f"{src} episode {ep}"
                try:
                    data = source.get_episode(ep, keys=list(DEFAULT_KEYS))
                    language, reasoning = _episode_text(source, ep, start, end)
                except DatasetError:
                    raise
                except Exception as exc:  # a reader's library error: name where it happened
                    raise DatasetError(f"{where} (steps {start}..{end - 1}): {type(exc).__name__}: {exc}") from exc
                if segmenter is not None:
                    data = segmenter.apply(data, language, where)
                sink.add_episode(data, language=language, reasoning=reasoning)
                n_lang += language is not None
                n_reason += reasoning is not None
                bar.set_postfix(episode=f"{ep + 1}/{n_eps}", refresh=False)
                bar.update(end - start)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return {"src": src, "src_format": src_fmt, "dst": dst, "dst_format": dst_fmt, "episodes": n_eps,
            "steps": n_steps, "fps": out_fps, "with_language": n_lang, "with_reasoning": n_reason,
            "mask": options.mask, "seconds": time.perf_counter() - t0,
            "boxes": list(segmenter.boxes) if segmenter is not None else []}
