"""Benchmark: how often is the offline grasp verifier right on grasps the runtime really made?

Reads runtime run directories -- the ``summary.json`` + ``images/`` + ``run.log`` that
``benchmarks/sim_success.py --columns hierarchy_retry`` (or ``clear_table``) keeps under
``OUT/*_logs/`` -- and, for the first verification of every attempt, compares three verdicts with
the simulator's truth (the attempt's target >= 5 cm above its rest when the attempt ended,
``sim_truth.end_lift``):

* ``shipped``: the offline planner server's ``verify_grasp`` answer today, asked with the
  attempt's logged instruction, pre-grasp box, head and wrist images (``planner.server.tasks``);
* ``blob only``: the straightforward rule, a non-table region between the fingers of >= 2.5 % of
  the wrist view, colour ignored (``held_object_fraction``);
* ``as logged``: what the verifier of the run said at the time (from ``run.log``).

False refusals ("not held" with the object in the hand) make the runtime drop a good grasp and
retry; false accepts end an attempt that holds nothing. Usage::

    python benchmarks/verifier_accuracy.py results/retry [more dirs ...] [--list-errors] [--out DIR]

Each argument is a benchmark output directory or a single run directory (any folder below it that
holds a ``summary.json`` counts).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LIFT_M = 0.05          # the label: target this far above its rest at the end of the attempt
_SAVED = re.compile(r"saved image \d+_attempt(\d+)_verify(\d+)_wrist\.png")
_VERDICT = re.compile(r"grasp verification: success=(True|False)")


@dataclass
class Attempt:
    """One logged attempt with a verification: where its images are and what was true."""

    run: str
    index: int
    instruction: str
    box: tuple[int, int, int, int]
    head: Path
    wrist: Path
    held: bool                      # simulator truth
    logged: Optional[bool]          # the run's own first verdict, None if run.log lacks it


def logged_verdicts(run_log: Path) -> dict[int, bool]:
    """attempt index -> the first verification's verdict, read from a runtime ``run.log``."""
    verdicts: dict[int, bool] = {}
    current: Optional[tuple[int, int]] = None
    if not run_log.exists():
        return verdicts
    for line in run_log.read_text(errors="replace").splitlines():
        if (m := _SAVED.search(line)):
            current = (int(m.group(1)), int(m.group(2)))
        elif (m := _VERDICT.search(line)) and current is not None:
            if current[1] == 0:
                verdicts.setdefault(current[0], m.group(1) == "True")
            current = None
    return verdicts


def attempts_in(run_dir: Path) -> Iterator[Attempt]:
    """The attempts of one run directory that were verified at least once and have sim truth."""
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{summary_path}: not a readable runtime summary ({exc})") from exc
    verdicts = logged_verdicts(run_dir / "run.log")
    for outcome in summary.get("outcomes") or []:
        truth = outcome.get("sim_truth") or {}
        target, box = truth.get("target"), outcome.get("box")
        if target is None or box is None or "end_lift" not in truth:
            continue
        i = int(outcome["index"])
        wrist = sorted((run_dir / "images").glob(f"*_attempt{i:02d}_verify0_wrist.png"))
        head = sorted((run_dir / "images").glob(f"*_attempt{i:02d}_verify0_head.png"))
        if not wrist or not head:
            continue                  # the attempt ended before its first verification
        yield Attempt(run_dir.name, i, str(outcome.get("instruction") or ""),
                      tuple(int(round(v)) for v in box), head[0], wrist[0],
                      held=float(truth["end_lift"][target]) >= LIFT_M, logged=verdicts.get(i))


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory (holding ``summary.json``) at or below the given paths."""
    runs: list[Path] = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such directory")
        runs += [p] if (p / "summary.json").exists() else sorted(s.parent for s in p.rglob("summary.json"))
    return runs


class Tally:
    """Confusion counts of one verifier against the truth."""

    def __init__(self) -> None:
        self.tp = self.fp = self.tn = self.fn = 0

    def add(self, said_held: bool, held: bool) -> None:
        self.tp += said_held and held
        self.fp += said_held and not held
        self.tn += (not said_held) and (not held)
        self.fn += (not said_held) and held

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def row(self) -> dict:
        return {"n": self.n, "right": self.tp + self.tn, "accuracy": round((self.tp + self.tn) / max(self.n, 1), 4),
                "false_refusals": self.fn, "false_accepts": self.fp, "held_accepted": self.tp,
                "empty_refused": self.tn}


def judge(attempt: Attempt) -> tuple[bool, bool, str]:
    """(shipped verdict, blob-only verdict, shipped reasoning) for one attempt's images, from one
    measurement of them (``planner.server.tasks.grasp_evidence``, what ``verify_grasp`` answers from)."""
    import cv2  # noqa: PLC0415 - heavy imports after --help

    from planner.prompts import ImagePart, verify_grasp  # noqa: PLC0415
    from planner.server.tasks import BLOB_HELD, TaskRequest, grasp_evidence  # noqa: PLC0415
    from planner.types import BBox  # noqa: PLC0415

    head, wrist = cv2.imread(str(attempt.head)), cv2.imread(str(attempt.wrist))
    if head is None or wrist is None:
        raise ValueError(f"{attempt.head.parent}: cannot read the verification images of attempt {attempt.index}")
    prompt = verify_grasp(attempt.instruction, head, wrist, BBox(*attempt.box))
    text = "\n".join(p for p in prompt.parts if not isinstance(p, ImagePart))
    evidence = grasp_evidence(TaskRequest("verify_grasp", text, [head, wrist]))
    return evidence.success, evidence.blob_fraction > BLOB_HELD, evidence.reasoning()


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point: prints the table, writes JSON + Markdown with --out."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags

    parser = cli_common.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="benchmark output or run directories")
    parser.add_argument("--list-errors", action="store_true", help="print every misjudged attempt")
    parser.add_argument("--out", type=Path, default=None, help="write verifier_accuracy.{json,md} here")
    args = parser.parse_args(argv)

    from tqdm import tqdm  # noqa: PLC0415

    attempts = [a for run in find_runs(args.dirs) for a in attempts_in(run)]
    if not attempts:
        print("no verified attempts with simulator truth found under: " + " ".join(map(str, args.dirs)),
              file=sys.stderr)
        return 1
    tallies = {"shipped": Tally(), "blob only": Tally(), "as logged": Tally()}
    errors = []
    t0 = time.perf_counter()
    for a in tqdm(attempts, desc="verifying", unit="attempt"):
        shipped, blob, reasoning = judge(a)
        tallies["shipped"].add(shipped, a.held)
        tallies["blob only"].add(blob, a.held)
        if a.logged is not None:
            tallies["as logged"].add(a.logged, a.held)
        if shipped != a.held:
            errors.append({"run": a.run, "attempt": a.index, "held": a.held, "reasoning": reasoning,
                           "wrist": str(a.wrist)})
    seconds = time.perf_counter() - t0
    rows = {name: t.row() for name, t in tallies.items() if t.n}
    lines = ["| verifier | right | accuracy | false refusals | false accepts |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['right']}/{r['n']} | {100 * r['accuracy']:.1f} % | {r['false_refusals']} | "
              f"{r['false_accepts']} |" for name, r in rows.items()]
    base = rows["blob only"]
    ratio = (base["n"] - base["right"]) / max(rows["shipped"]["n"] - rows["shipped"]["right"], 1)
    lines.append(f"\n{len(attempts)} attempts ({sum(a.held for a in attempts)} held), "
                 f"{1000 * seconds / len(attempts):.0f} ms per attempt; blob-only errors / shipped errors = {ratio:.2f}")
    print("\n".join(lines))
    if args.list_errors:
        for e in errors:
            print(f"{'FN' if e['held'] else 'FP'} {e['run']} attempt {e['attempt']}: {e['reasoning']} ({e['wrist']})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "verifier_accuracy.json").write_text(json.dumps(
            {"dirs": [str(d) for d in args.dirs], "attempts": len(attempts), "rows": rows, "errors": errors}, indent=1))
        (args.out / "verifier_accuracy.md").write_text("\n".join(lines) + "\n")
        print(f"results written to {args.out}/verifier_accuracy.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
