"""Tables, reports and merging for ``benchmarks/sim_success.py``.

A report is ``sim_success.json`` (``{"checkpoint", "episodes", "rows": {split: {column: stats}}}``,
every column's stats keep their per-episode ``records``) plus the same table as Markdown.
:func:`merge` combines reports of separate processes: different splits or columns side by side,
and the same split and column run on disjoint seed ranges pooled into one column (recomputed from
the records, so the rates and Wilson intervals are those of the pooled episodes).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

SPLITS = ["train", "unseen_objects", "unseen_backgrounds", "unseen_lighting"]
COLUMNS = ("controller", "hierarchy", "hierarchy_true_mask", "dexvla", "hierarchy_retry", "clear_table")
CAUSES = ("rolled_away", "wrong_object", "missed", "dropped", "refused", "timeout")  # = sim.long_horizon.CAUSES


def render_table(rows: dict) -> str:
    """Markdown table of ``rows`` ({split: {column: stats}}), then the per-column diagnostics."""
    columns = [c for c in COLUMNS if any(c in row for row in rows.values())]
    lines = ["| split | " + " | ".join(f"{c} success (95 % CI)" for c in columns) + " | " +
             " | ".join(f"{c} s/attempt" for c in columns) + " |",
             "|---|" + "---|" * (2 * len(columns))]
    for split, row in rows.items():
        cells = [f"{row[c]['rate'] * 100:.1f} % ({row[c]['wilson95'][0] * 100:.1f}-{row[c]['wilson95'][1] * 100:.1f}, "
                 f"n={row[c]['n']})" if c in row else "-" for c in columns]
        secs = [f"{row[c]['s_per_attempt']:.1f}" if c in row else "-" for c in columns]
        lines.append(f"| {split} | " + " | ".join(cells) + " | " + " | ".join(secs) + " |")
    for column in [c for c in columns if c in ("hierarchy", "hierarchy_true_mask")]:
        lines += ["", f"Diagnostics of `{column}`:", "",
                  "| split | mean box IoU | mean mask IoU (perceived vs true) | planner chose the designated target |"
                  " failure causes |", "|---|---|---|---|---|"]
        for split, row in rows.items():
            if column in row:
                h = row[column]
                causes = ", ".join(f"{k} {v}" for k, v in (h.get("causes") or {}).items() if v) or "-"
                lines.append(f"| {split} | {h['mean_box_iou']:.2f} | {h['mean_mask_iou']:.2f} | "
                             f"{h['designated_chosen']}/{h['n']} | {causes} |")
    if "hierarchy_retry" in columns:
        k_max = max(row["hierarchy_retry"]["attempts"] for row in rows.values() if "hierarchy_retry" in row)
        lines += ["", "Single-object prompts through the runtime (`hierarchy_retry`: \"grasp the <target>\", "
                  "failure recovery, success within k attempts, Wilson 95 %):", "",
                  "| split | " + " | ".join(f"@{k}" for k in range(1, k_max + 1)) +
                  " | attempts per success | failure causes (episodes) |", "|---|" + "---|" * (k_max + 2)]
        for split, row in rows.items():
            if "hierarchy_retry" in row:
                h = row["hierarchy_retry"]
                cells = []
                for k in range(1, k_max + 1):
                    a = h["success_at"].get(str(k))
                    cells.append("-" if a is None else f"{a['successes']}/{h['n']} ({a['rate'] * 100:.1f} %, "
                                 f"{a['wilson95'][0] * 100:.1f}-{a['wilson95'][1] * 100:.1f})")
                aps = "-" if h["attempts_per_success"] is None else f"{h['attempts_per_success']:.2f}"
                causes = ", ".join(f"{c} {v}" for c, v in h["causes"].items() if v) or "-"
                lines.append(f"| {split} | " + " | ".join(cells) + f" | {aps} | {causes} |")
    if "clear_table" in columns:  # success above = full-prompt success
        lines += ["", "Long horizon (`clear_table`, causes of the failed episodes, sim.long_horizon):", "",
                  "| split | objects cleared / asked | full-prompt success | attempts per success | "
                  + " | ".join(CAUSES) + " |", "|---|---|---|---|" + "---|" * len(CAUSES)]
        for split, row in rows.items():
            if "clear_table" in row:
                c = row["clear_table"]
                aps = "-" if c["attempts_per_success"] is None else f"{c['attempts_per_success']:.2f}"
                lines.append(f"| {split} | {c['objects_cleared']}/{c['objects_asked']} "
                             f"({c['cleared_rate'] * 100:.1f} %) | {c['successes']}/{c['n']} | {aps} | "
                             + " | ".join(str(c["causes"][k]) for k in CAUSES) + " |")
    return "\n".join(lines)


def write_report(checkpoint: Optional[str], episodes: int, rows: dict, out_dir: str,
                 dexvla_checkpoint: Optional[str] = None, rolling_friction: bool = False) -> None:
    """Print the table and write ``sim_success.json`` / ``.md`` under ``out_dir``."""
    table = render_table(rows)
    print(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": checkpoint, "episodes": episodes, "rows": rows}
    parts = [f"Checkpoint: `{checkpoint}`"] if checkpoint or not dexvla_checkpoint else []
    if rolling_friction:  # the physics the episodes ran with (sim.collect --rolling-friction data)
        report["rolling_friction"] = True
        parts.append("physics: rolling friction (condim 6)")
    if dexvla_checkpoint:
        report["dexvla_checkpoint"] = dexvla_checkpoint
        parts.append(f"DexVLA checkpoint: `{dexvla_checkpoint}`")
    header = "; ".join(parts)
    (out / "sim_success.json").write_text(json.dumps(report, indent=2))
    (out / "sim_success.md").write_text(f"{header}\n\n{table}\n")
    print(f"written: {out / 'sim_success.json'}, {out / 'sim_success.md'}")


def success_stats(records: list[dict]) -> dict:
    """Successes, n, rate and Wilson 95 % interval of per-episode records (``"success"`` each)."""
    from sim.evaluate import wilson_interval  # noqa: PLC0415

    k, n = sum(bool(r["success"]) for r in records), len(records)
    return {"successes": k, "n": n, "rate": k / n if n else 0.0, "wilson95": list(wilson_interval(k, n)),
            "records": records}


def hierarchy_stats(records: list[dict]) -> dict:
    """:func:`success_stats` plus the diagnostics of a ``hierarchy`` / ``hierarchy_true_mask``
    column (one attempt per scene): mean box and mask IoU, how often the planner chose the designated
    target, attempts per success and the failure causes (an episode that raised counts as
    ``timeout`` with IoU 0)."""
    stats = success_stats(records)
    k, n = stats["successes"], stats["n"]
    stats.update(mean_box_iou=float(np.mean([r.get("box_iou", 0.0) for r in records])),
                 mean_mask_iou=float(np.mean([r.get("mask_iou_mean", 0.0) for r in records])),
                 designated_chosen=int(sum(r.get("chosen") == r.get("designated_target") for r in records)),
                 attempts_per_success=(n / k) if k else None,
                 causes={c: sum(r.get("cause", "timeout") == c for r in records if not r["success"]) for c in CAUSES})
    return stats


def pool_column(column: str, parts: list[dict]) -> dict:
    """One column from runs of the same split on disjoint seeds, recomputed from their records.
    Raises ``ValueError`` when a seed appears twice or a run kept no records."""
    records = [r for p in parts for r in p.get("records") or []]
    if any(not p.get("records") for p in parts):
        raise ValueError(f"column {column}: a report without per-episode records cannot be pooled")
    seeds = [r["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"column {column}: the same scene seed appears in more than one report")
    if column == "clear_table":
        from sim.long_horizon import column_stats  # noqa: PLC0415
        stats = column_stats(records)
    elif column == "hierarchy_retry":
        from sim.long_horizon import single_prompt_stats  # noqa: PLC0415
        if len({p["attempts"] for p in parts}) != 1:
            raise ValueError("column hierarchy_retry: the reports allowed different numbers of attempts")
        stats = single_prompt_stats(records, parts[0]["attempts"])
    else:
        stats = {**parts[0], **(hierarchy_stats if column.startswith("hierarchy") else success_stats)(records)}
    for key in ("temporal_ensemble", "num_samples", "threads", "objects_range"):
        if key in parts[0]:
            stats[key] = parts[0][key]
    if "s_per_attempt" in parts[0]:  # weighted by episodes
        stats["s_per_attempt"] = sum(p["s_per_attempt"] * p["n"] for p in parts) / sum(p["n"] for p in parts)
    return stats


def merge(dirs: list, out_dir: str) -> int:
    """Combine the reports of several runs (same checkpoint; a dexvla-only run has none) into one
    table: other splits and columns side by side, the same split and column pooled (disjoint seeds)."""
    parts: dict = {}
    checkpoint, episodes, dexvla_ckpt, rolling = None, 0, None, set()
    for d in dirs:
        path = Path(d) / "sim_success.json"
        if not path.is_file():
            print(f"error: --merge: no sim_success.json in {d}", file=sys.stderr)
            return 2
        report = json.loads(path.read_text())
        for key, seen in (("checkpoint", checkpoint), ("dexvla_checkpoint", dexvla_ckpt)):
            if report.get(key) is not None and seen not in (None, report[key]):
                print(f"error: --merge: {d} evaluated {report[key]}, not {seen}", file=sys.stderr)
                return 2
        checkpoint = report["checkpoint"] or checkpoint
        episodes = max(episodes, report["episodes"])
        dexvla_ckpt = report.get("dexvla_checkpoint") or dexvla_ckpt
        rolling.add(bool(report.get("rolling_friction")))
        for split, row in report["rows"].items():
            for column, stats in row.items():
                parts.setdefault(split, {}).setdefault(column, []).append(stats)
    if len(rolling) > 1:
        print("error: --merge: some reports ran with rolling friction and some without", file=sys.stderr)
        return 2
    rows: dict = {}
    for split, columns in parts.items():
        for column, stats in columns.items():
            try:
                rows.setdefault(split, {})[column] = stats[0] if len(stats) == 1 else pool_column(column, stats)
            except ValueError as exc:
                print(f"error: --merge: {split}/{exc}", file=sys.stderr)
                return 2
    order = [s for s in SPLITS if s in rows] + [s for s in rows if s not in SPLITS]
    write_report(checkpoint, episodes, {s: rows[s] for s in order}, out_dir, dexvla_checkpoint=dexvla_ckpt,
                 rolling_friction=rolling == {True})
    return 0
