"""Inspect datasets: ``python -m controller.dataset.inspect PATH [PATH ...]``.

Any format of :mod:`controller.dataset.formats` is accepted; datasets that are not zarr stores
(ACT/DexVLA HDF5, LeRobot v3.0, deployment recordings) are reported by
:mod:`controller.dataset.inspect_sources` (format, episodes, steps, keys, cameras, fps, language
and reasoning; ``--verify`` decodes every frame). The rest of this docstring is the zarr report.

Prints, per store: zarr format, episode and step counts, episode length statistics, every array's
shape / dtype / chunks / compressor, per-dimension ranges of state and action, and flags:

* errors (exit code 1): layout problems (missing keys, wrong shapes or dtypes, bad
  ``episode_ends``, empty dataset -- the same checks the training dataset runs) and NaN/inf values;
* warnings: arm state outside [-1, 1], hand state outside [0, 1], episodes whose mask channel is
  empty, mask values other than 0/1/255, episodes shorter than 2 steps, constant action dims.

``--strict`` turns warnings into a failing exit code too.

Chunks: every run stats every chunk file of every array (cheap). Missing files (zarr would silently
read them as the fill value, i.e. zeros), empty files and sizes no valid chunk can have are errors.
``--verify`` also reads each blosc header and decodes every chunk: truncated, overwritten and
otherwise undecodable chunks are errors too, as is a ``data/`` array whose length differs from
``meta/episode_ends[-1]``. Each problem names the array, the chunk (grid coordinates, e.g.
``data/rgbm chunk 3.0.0.0``) and its file, with what was expected; a tqdm bar shows progress on a
terminal and a summary line ends the output.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from controller.dataset.errors import DATA_GROUP, DEFAULT_KEYS, EPISODE_ENDS_KEY, ChunkError, DatasetError
from controller.dataset.replay_buffer import (BLOSC_HEADER, ChunkLayout, StoreFiles, ZarrReplayBuffer,
                                              blosc_header_problem, chunk_error, chunk_file_problems,
                                              chunk_size_problem, describe_codecs, guard_blosc_chunks,
                                              open_zarr_group)

ARM_DOF = 7
RANGE_TOL = 1e-6
#: Bad chunks listed per array (the rest are counted).
MAX_LISTED_CHUNKS = 20
#: Decoded bytes read at once by ``--verify`` (a failing batch is re-read chunk by chunk).
VERIFY_BATCH_BYTES = 32 << 20


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
    chunk_summary: str = ""                         # one line: chunks checked, how, problems found
    bad_chunks: set = field(default_factory=set)    # (array, chunk label) already reported
    text: list = field(default_factory=list)        # language examples / reasoning vocabulary lines


@dataclass
class ChunkCheck:
    """Result of checking the chunks of a store's arrays."""
    problems: list = field(default_factory=list)    # ChunkError, in array and chunk order
    n_arrays: int = 0
    n_chunks: int = 0
    seconds: float = 0.0
    decoded: bool = False

    def summary(self) -> str:
        """One line: what was checked, how, in how long, and the problems by kind."""
        how = "stat + blosc header + decode" if self.decoded else "stat only; --verify also decodes"
        kinds = Counter(p.kind or "bad" for p in self.problems)
        found = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        result = f"{len(self.problems)} bad ({found})" if self.problems else "all OK"
        return (f"chunks: {self.n_chunks} chunk file(s) of {self.n_arrays} array(s) checked ({how}) in "
                f"{self.seconds:.2f} s: {result}")


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


def _decode_problem(path: str, arr: Any, layout: ChunkLayout, coords: tuple, files: StoreFiles) -> Optional[ChunkError]:
    """Decode one chunk; the codec's error (any type) as a :class:`ChunkError`, or None."""
    try:
        arr[layout.region(coords)]
    except ChunkError as exc:
        return exc
    except Exception as exc:  # blosc raises RuntimeError, other codecs ValueError, ...
        return chunk_error(path, layout, coords, files, "undecodable",
                           f"could not be decoded ({type(exc).__name__}: {exc})",
                           f"{layout.expected_size()} that decodes")
    return None


def _verify_array(path: str, arr: Any, files: StoreFiles, bar: Any) -> list:
    """Stat, header-check and decode every chunk of one array (batches along the first axis)."""
    layout = ChunkLayout(guard_blosc_chunks(arr))
    if layout.n_chunks == 0:
        return []
    per_row = max(layout.n_chunks // layout.grid[0], 1) if layout.grid else 1   # chunks per axis-0 index
    row_bytes = (layout.nbytes or 1 << 20) * per_row
    step = max(1, min(256, VERIFY_BATCH_BYTES // max(row_bytes, 1)))
    problems: list = []
    rows = layout.grid[0] if layout.grid else 1
    for a in range(0, rows, step):
        batch = list(layout.coords(range(a, a + step)))
        bad = set()
        for coords in batch:
            key = layout.key(coords)
            size = files.size(key)
            problem = chunk_size_problem(path, layout, coords, files, size)
            if problem is None and layout.blosc:
                head = files.read(key, BLOSC_HEADER)
                found = blosc_header_problem(head, size, layout.nbytes)
                if found is not None:
                    problem = chunk_error(path, layout, coords, files, *found)
            if problem is not None:
                problems.append(problem)
                bad.add(coords)
        one_by_one = bool(bad) or not layout.shape   # known-bad chunks are not decoded again
        if not one_by_one:
            try:
                arr[a * layout.chunk_shape[0]:min((a + step) * layout.chunk_shape[0], layout.shape[0])]
            except Exception:  # some chunk of the batch fails: find which one(s)
                one_by_one = True
        if one_by_one:
            for coords in batch:
                problem = None if coords in bad else _decode_problem(path, arr, layout, coords, files)
                if problem is not None:
                    problems.append(problem)
        bar.update(len(batch))
    problems.sort(key=lambda p: tuple(int(c) for c in p.chunk.split(".")))
    return problems


def check_chunks(path: str, root: Any, decode: bool = False, progress: bool = False) -> ChunkCheck:
    """Check every chunk of every array in the store at ``path`` (``root``: its open group).

    Without ``decode`` only the chunk files' sizes are checked (one ``stat`` each); with it, each
    blosc chunk's header is compared with its file and every chunk is decoded (the slow, complete
    check of ``--verify``). Never raises for data problems.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    arrays = [node for _, node in sorted(root.members(max_depth=None), key=lambda x: x[0])
              if hasattr(node, "chunks")]
    result = ChunkCheck(n_arrays=len(arrays), n_chunks=sum(ChunkLayout(a).n_chunks for a in arrays),
                        decoded=decode)
    files = StoreFiles(path)
    with tqdm(total=result.n_chunks, desc=f"{'verify' if decode else 'stat'} {path}", unit="chunk",
              disable=None if progress else True, delay=0.5, file=sys.stderr) as bar:
        for arr in arrays:
            if decode:
                result.problems += _verify_array(path, arr, files, bar)
            else:
                result.problems += chunk_file_problems(path, [arr], files, progress=bar)
    result.seconds = time.perf_counter() - t0
    return result


def _add_chunk_errors(report: Report, check: ChunkCheck) -> None:
    """Add a check's problems to the report, at most MAX_LISTED_CHUNKS listed per array."""
    per_array: Counter = Counter()
    for p in check.problems:
        per_array[p.array] += 1
        report.bad_chunks.add((p.array, p.chunk))
        if per_array[p.array] <= MAX_LISTED_CHUNKS:
            report.errors.append(str(p))
    for name, n in per_array.items():
        if n > MAX_LISTED_CHUNKS:
            report.errors.append(f"{report.path}: key '{name}' has {n - MAX_LISTED_CHUNKS} more bad chunk(s) "
                                 f"not listed ({n} in all)")
    report.chunk_summary = check.summary()


def _add_error(report: Report, exc: DatasetError) -> None:
    """Add a data-layer error unless it is a chunk problem already reported by the chunk check."""
    if isinstance(exc, ChunkError) and (exc.array, exc.chunk) in report.bad_chunks:
        return
    report.errors.append(str(exc))


def _check_step_counts(root: Any, rb: ZarrReplayBuffer, report: Report) -> None:
    """Every array under ``data/`` (not only the default keys) must have ``episode_ends[-1]`` steps."""
    for name, node in sorted(root.members(max_depth=None), key=lambda x: x[0]):
        if not name.startswith(f"{DATA_GROUP}/") or not hasattr(node, "chunks"):
            continue
        n = int(node.shape[0]) if len(node.shape) else -1
        if n != rb.n_steps:
            report.errors.append(f"{rb.path}: key '{name}' has shape {tuple(node.shape)} ({n} steps) but "
                                 f"'{EPISODE_ENDS_KEY}'[-1] is {rb.n_steps}; expected them to match")


def inspect_store(path: str, mask_frames: int = 8, verify: bool = False, progress: bool = False) -> Report:
    """Collect the report for one store (never raises for data problems).

    Every chunk file is stat-ed; ``verify`` also decodes every chunk (see :func:`check_chunks`).
    ``progress`` shows a tqdm bar for the chunk check on a terminal.
    """
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
    _add_chunk_errors(report, check_chunks(str(path), root, decode=verify, progress=progress))
    try:
        rb = ZarrReplayBuffer.open(path, keys=DEFAULT_KEYS, check_finite=False, verify_chunks=False)
    except DatasetError as exc:
        _add_error(report, exc)
        return report
    if verify:
        _check_step_counts(root, rb, report)
    lengths = rb.episode_lengths
    report.summary = {"episodes": rb.n_episodes, "steps": rb.n_steps, "length min": int(lengths.min()),
                      "length mean": f"{lengths.mean():.1f}", "length max": int(lengths.max())}
    short = np.nonzero(lengths < 2)[0].tolist()
    if short:
        report.warnings.append(f"{rb.path}: key 'meta/episode_ends' has {len(short)} episode(s) shorter "
                               f"than 2 steps: {short[:20]}")
    _check_low_dim(rb, report)
    if hasattr(rb, "language"):  # text of the store (meta.attrs language, data/reasoning_id)
        from controller.dataset.inspect_sources import text_lines  # noqa: PLC0415
        try:
            report.text = text_lines(rb)
        except DatasetError as exc:
            _add_error(report, exc)
    try:
        _check_masks(rb, report, mask_frames)
    except DatasetError as exc:  # a damaged image chunk
        _add_error(report, exc)
    return report


def render(report: Report, console) -> None:
    """Print one report with rich tables."""
    from rich.table import Table

    console.rule(f"[bold]{report.path}")
    if report.zarr_format is not None:
        console.print(f"zarr format: v{report.zarr_format}")
    if report.summary:
        console.print("  ".join(f"{k}: {v}" for k, v in report.summary.items()))
    for line in report.text:
        console.print(line, highlight=False, soft_wrap=True)
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
    if report.chunk_summary:
        console.print(report.chunk_summary, highlight=False, soft_wrap=True)
    if not report.errors and not report.warnings:
        console.print("[green]OK[/]: no problems found")


def _format_of(path: str) -> str:
    """The dataset format of ``path``; ``zarr`` when none is recognised (the zarr report names the problem)."""
    from controller.dataset.formats import detect_format  # noqa: PLC0415
    try:
        return detect_format(path)
    except DatasetError:
        return "zarr"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code (1 if any store has an error)."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    parser = cli_common.ArgumentParser(prog="python -m controller.dataset.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="dataset(s) to inspect (any format; detected)")
    parser.add_argument("--mask-frames", type=int, default=8,
                        help="frames per episode checked for an empty mask (0: skip, -1: all)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    parser.add_argument("--verify", action="store_true",
                        help="decode every chunk of every array (slow; without it chunk files are only stat-ed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for the chunk check")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    failed = []
    for path in args.paths:
        fmt = _format_of(path)
        if fmt != "zarr":
            from controller.dataset.inspect_sources import inspect_source, render_source  # noqa: PLC0415
            report = inspect_source(path, fmt, verify=args.verify, progress=not args.no_progress)
            render_source(report, console)
        else:
            report = inspect_store(path, mask_frames=args.mask_frames, verify=args.verify,
                                   progress=not args.no_progress)
            render(report, console)
        if report.errors or (args.strict and report.warnings):
            failed.append(path)
    n = len(args.paths)
    if failed:
        console.print(f"[bold red]FAILED[/]: {len(failed)} of {n} store(s) have "
                      f"{'problems' if args.strict else 'errors'}: {', '.join(map(str, failed))}",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"[green]PASSED[/]: {n} store(s) inspected{' and verified' if args.verify else ''}, "
                      f"no errors", highlight=False, soft_wrap=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
