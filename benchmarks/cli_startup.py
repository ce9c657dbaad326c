#!/usr/bin/env python
"""Start-up time of every command-line tool: the wall time of ``<cli> --help`` in a fresh process.

    python benchmarks/cli_startup.py [--runs 5] [--only sim.evaluate inference.py] [--json FILE]

Each CLI is run ``--runs`` times (median reported, plus min and max) with the repository's
interpreter, from the repository root, output discarded. The target is 1 s for every CLI
(``python -m sim.evaluate --help`` and ``python inference.py --help`` in particular: nothing heavy
-- torch, mujoco, hydra -- may be imported before the arguments are parsed). This is a benchmark,
not a timed unit test; ``tests/test_cli.py`` checks that every ``--help`` runs and uses one flag
style. Exit code 1 when a CLI fails or a *required* CLI misses the target.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 1.0

#: (name, argv after the interpreter, must meet the 1 s target). The one list of the project's CLIs
#: (tests/test_cli.py uses it too). train.py is a Hydra app (``--help`` is Hydra's) and is not here.
CLIS: list[tuple[str, list[str], bool]] = [
    ("inference.py", ["inference.py"], True),
    ("sim.evaluate", ["-m", "sim.evaluate"], True),
    ("sim.collect", ["-m", "sim.collect"], False),
    ("sim.make_gif", ["-m", "sim.make_gif"], False),
    ("attention_map_visualizer.py", ["attention_map_visualizer.py"], False),
    ("planner.server", ["-m", "planner.server"], False),
    ("inference_utils.arm_emulator", ["-m", "inference_utils.arm_emulator"], False),
    ("inference_utils.hand_emulator", ["-m", "inference_utils.hand_emulator"], False),
    ("controller.serve", ["-m", "controller.serve"], False),
    ("controller.dataset.inspect", ["-m", "controller.dataset.inspect"], False),
    ("controller.dataset.convert", ["-m", "controller.dataset.convert"], False),
    ("controller.dataset.frame_cache", ["-m", "controller.dataset.frame_cache"], False),
    ("controller.export_checkpoint", ["-m", "controller.export_checkpoint"], False),
    ("controller.convert_checkpoint", ["-m", "controller.convert_checkpoint"], False),
    ("planner.backends.tiny_model", ["-m", "planner.backends.tiny_model"], False),
    ("benchmarks/sim_success.py", ["benchmarks/sim_success.py"], False),
    ("benchmarks/sim_speed.py", ["benchmarks/sim_speed.py"], False),
    ("benchmarks/expert_success.py", ["benchmarks/expert_success.py"], False),
    ("benchmarks/planner_boxes.py", ["benchmarks/planner_boxes.py"], False),
    ("benchmarks/policy_server.py", ["benchmarks/policy_server.py"], False),
    ("benchmarks/perception.py", ["benchmarks/perception.py"], False),
    ("benchmarks/controller_speed.py", ["benchmarks/controller_speed.py"], False),
    ("benchmarks/dataset_loading.py", ["benchmarks/dataset_loading.py"], False),
    ("benchmarks/dexvla_speed.py", ["benchmarks/dexvla_speed.py"], False),
    ("benchmarks/cli_startup.py", ["benchmarks/cli_startup.py"], False),
]


def cli_env() -> dict:
    """The environment the CLIs run in (headless rendering, no user site)."""
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONNOUSERSITE"] = "1"
    return env


def time_help(argv: list[str], runs: int = 5, timeout_s: float = 120.0) -> tuple[list[float], int]:
    """Wall times of ``python <argv> --help`` (``runs`` fresh processes) and the last exit code."""
    times, code = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, env=cli_env(), timeout=timeout_s,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
        code = proc.returncode
    return times, code


def main(argv: list[str] | None = None) -> int:
    from inference_utils.cli_common import ArgumentParser  # noqa: PLC0415

    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per CLI (median reported; default 5)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these CLIs (names of the table)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    clis = [c for c in CLIS if args.only is None or c[0] in args.only]
    if not clis:
        p.error(f"--only: no CLI named {args.only}; known: {', '.join(c[0] for c in CLIS)}")
    print(f"CLI --help wall time, median of {args.runs} fresh processes ({sys.executable}); target {TARGET_S:.0f} s")
    header = f"{'command':52s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  {'target':8s}"
    print(header)
    print("-" * len(header))
    results, failed = [], False
    for name, cli_argv, required in clis:
        if name == "benchmarks/cli_startup.py" and args.only is None:
            continue  # itself: listed for the flag-style test only
        times, code = time_help(cli_argv, args.runs)
        med = statistics.median(times)
        ok = code == 0 and med < TARGET_S
        verdict = ("ok" if ok else ("FAIL" if required or code != 0 else "over")) + (" *" if required else "")
        failed |= code != 0 or (required and not ok)
        command = "python " + " ".join(cli_argv) + " --help"
        print(f"{command:52s} {med:9.2f} {min(times):7.2f} {max(times):7.2f}  {verdict:8s}"
              + (f" (exit {code})" if code else ""))
        results.append({"name": name, "command": command, "median_s": med, "min_s": min(times),
                        "max_s": max(times), "exit_code": code, "required": required, "runs": args.runs})
    print(f"* required to answer under {TARGET_S:.0f} s; 'over': slower than the target (heavy imports "
          "before argument parsing)")
    if args.json:
        Path(args.json).write_text(json.dumps({"target_s": TARGET_S, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
