"""``python -m controller.dataset.inspect`` for datasets that are not zarr stores.

Any format known to :mod:`controller.dataset.formats` (ACT/DexVLA HDF5, LeRobot v3.0, deployment
recordings) is opened as an :class:`~controller.dataset.formats.EpisodeSource` and reported from
its ``describe()`` and the source itself: format, files, episodes and steps, every key with its
shape and dtype, cameras, fps, language examples and the reasoning vocabulary size.

``--verify`` decodes every frame of every episode (``get_episode``); the first failure is narrowed
down to the key and step and reported with the reader's message (which names the file), e.g.::

    data/aloha_h5: key 'rgbm' episode 3 step 17 (global step 312): ... episode_3.hdf5 ...

Non-finite state/action values and keys whose length differs from the step count are errors too.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from controller.dataset.errors import DatasetError

#: Language instructions shown as examples.
N_LANGUAGE_EXAMPLES = 3
#: ``describe()`` entries printed as they are (the rest is summarised elsewhere or too long).
DESCRIBE_SKIP = {"keys", "path", "format", "n_episodes", "n_steps", "episodes", "steps", "language", "reasoning",
                 "reasoning_vocab_size"}


@dataclass
class SourceReport:
    """Everything found about one non-zarr dataset."""
    path: str
    format: str = ""
    summary: dict = field(default_factory=dict)
    keys: list = field(default_factory=list)        # (key, shape, dtype)
    details: dict = field(default_factory=dict)     # describe() entries shown as they are
    text: list = field(default_factory=list)        # lines about language / reasoning
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    verify_summary: str = ""


def _key_rows(source: Any) -> list:
    rows = []
    for key in source.keys():
        arr = source[key]
        shape, dtype = getattr(arr, "shape", None), getattr(arr, "dtype", None)
        if shape is None or dtype is None:
            one = np.asarray(arr[0:1])
            shape, dtype = (len(arr),) + one.shape[1:], one.dtype
        rows.append((key, tuple(int(s) for s in shape), str(np.dtype(dtype))))
    return rows


def text_lines(source: Any) -> list[str]:
    """Language examples and the reasoning vocabulary of any :class:`EpisodeSource`."""
    langs = [source.language(ep) for ep in range(source.n_episodes)]
    have = [s for s in langs if s]
    lines = [f"language: {len(have)} of {len(langs)} episode(s)"]
    examples = list(dict.fromkeys(have))[:N_LANGUAGE_EXAMPLES]
    if examples:
        lines[0] += ", e.g. " + "; ".join(repr(s) for s in examples)
    vocab = {source.reasoning(s) for s in range(source.n_steps)} - {None}
    lines.append(f"reasoning: vocabulary of {len(vocab)} string(s)"
                 + (", e.g. " + "; ".join(repr(s) for s in sorted(vocab)[:4]) if vocab else ""))
    return lines


def _first_bad_step(source: Any, key: str, start: int, end: int) -> tuple[int, BaseException]:
    """The first step of ``[start, end)`` of ``key`` that cannot be read, and its exception."""
    arr = source[key]
    for s in range(start, end):
        try:
            np.asarray(arr[s])
        except Exception as exc:  # noqa: BLE001 - any decoder error names the failure
            return s, exc
    return -1, RuntimeError("no single step fails, the episode read does")


def verify_source(source: Any, path: str, progress: bool = False) -> tuple[list[str], str]:
    """Decode every frame of every episode; (errors, one-line summary). Stops at the first
    undecodable episode (naming key, episode and step) but checks every episode's values."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    t0, errors, done, steps = time.perf_counter(), [], 0, 0
    keys = list(source.keys())
    starts, ends = source.episode_starts, source.episode_ends
    for key in keys:
        n = len(source[key])
        if n != source.n_steps:
            errors.append(f"{path}: key '{key}' has {n} steps but the episodes have {source.n_steps}")
    with tqdm(total=source.n_steps, desc=f"verify {path}", unit="step", disable=None if progress else True,
              delay=0.5, file=sys.stderr) as bar:
        for ep in range(source.n_episodes):
            start, end = int(starts[ep]), int(ends[ep])
            try:
                data = source.get_episode(ep)
            except Exception as exc:  # noqa: BLE001 - narrow it down to a key and a step
                for key in keys:
                    try:
                        np.asarray(source[key][start:end])
                    except Exception:  # noqa: BLE001
                        step, err = _first_bad_step(source, key, start, end)
                        where = f"step {step - start} (global step {step})" if step >= 0 else f"steps {start}..{end - 1}"
                        errors.append(f"{path}: key '{key}' episode {ep} {where}: {type(err).__name__}: {err}")
                        break
                else:
                    errors.append(f"{path}: episode {ep}: {type(exc).__name__}: {exc}")
                break
            for key, arr in data.items():
                arr = np.asarray(arr)
                if len(arr) != end - start:
                    errors.append(f"{path}: key '{key}' episode {ep} has {len(arr)} steps; expected {end - start}")
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    step = int(np.nonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0][0])
                    errors.append(f"{path}: key '{key}' episode {ep} step {step} (global step {start + step}) "
                                  f"has NaN/inf; expected finite")
            bar.update(end - start)
            done, steps = done + 1, steps + end - start
    how = (f"decoded {done} of {source.n_episodes} episode(s) / {steps} of {source.n_steps} step(s) in "
           f"{time.perf_counter() - t0:.2f} s")
    return errors, f"verify: {how}: " + (f"{len(errors)} problem(s)" if errors else "all OK")


def inspect_source(path: str, fmt: Optional[str] = None, verify: bool = False, progress: bool = False) -> SourceReport:
    """Collect the report for one dataset of any registered format (never raises for data problems)."""
    from controller.dataset.formats import open_source  # noqa: PLC0415

    report = SourceReport(path=str(path), format=fmt or "")
    try:
        source = open_source(path, fmt=fmt)
        report.format = source.format_name
        desc = dict(source.describe())
        report.summary = {"format": source.format_name, "episodes": source.n_episodes, "steps": source.n_steps}
        lengths = np.asarray(source.episode_lengths)
        if len(lengths):
            report.summary.update({"length min": int(lengths.min()), "length mean": f"{lengths.mean():.1f}",
                                   "length max": int(lengths.max())})
        report.details = {k: v for k, v in desc.items() if k not in DESCRIBE_SKIP}
        report.keys = _key_rows(source)
        report.text = text_lines(source)
        if verify:
            report.errors, report.verify_summary = verify_source(source, str(path), progress)
    except DatasetError as exc:
        report.errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a reader's library error is a data problem here
        report.errors.append(f"{path}: {type(exc).__name__}: {exc}")
    return report


def _short(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def render_source(report: SourceReport, console: Any) -> None:
    """Print one report (rich), in the style of the zarr report."""
    from rich.table import Table  # noqa: PLC0415

    console.rule(f"[bold]{report.path}")
    if report.summary:
        console.print("  ".join(f"{k}: {v}" for k, v in report.summary.items()), highlight=False)
    for k, v in report.details.items():
        console.print(f"{k}: {_short(v)}", highlight=False, soft_wrap=True)
    if report.keys:
        t = Table(title="keys (ours)")
        for col in ("key", "shape", "dtype"):
            t.add_column(col)
        for key, shape, dtype in report.keys:
            t.add_row(key, str(shape), dtype)
        console.print(t)
    for line in report.text:
        console.print(line, highlight=False, soft_wrap=True)
    for msg in report.errors:
        console.print(f"[bold red]ERROR[/] {msg}", highlight=False, soft_wrap=True)
    for msg in report.warnings:
        console.print(f"[yellow]WARNING[/] {msg}", highlight=False, soft_wrap=True)
    if report.verify_summary:
        console.print(report.verify_summary, highlight=False)
    if not report.errors and not report.warnings:
        console.print("[green]OK[/]: no problems found")
