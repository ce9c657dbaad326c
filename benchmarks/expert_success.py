"""Scripted-expert success rate over seeded scenes (physics only; rendering does not affect physics).

    python benchmarks/expert_success.py --episodes 200 [--split train] [--seed 100000]
"""
from __future__ import annotations

import collections
import json
import sys
import time

from tqdm import tqdm


def main(argv=None) -> int:
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    p = cli_common.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=100000, help="first scene seed (held out from collection seeds)")
    p.add_argument("--objects", type=int, nargs=2, default=(4, 10))
    p.add_argument("--json", default=None, help="optional path for a JSON result")
    args = p.parse_args(argv)
    from sim.config import SimConfig
    from sim.env import GraspEnv
    from sim.evaluate import wilson_interval
    from sim.expert import ScriptedExpert, run_expert_episode

    cfg = SimConfig(n_objects=tuple(args.objects), render_observations=False, split=args.split)
    results, t0 = [], time.time()
    with GraspEnv(cfg) as env:
        expert = ScriptedExpert()
        for i in tqdm(range(args.episodes), desc=f"expert {args.split}", unit="ep"):
            results.append(run_expert_episode(env, args.seed + i, args.split, expert))
    n = sum(r["success"] for r in results)
    lo, hi = wilson_interval(n, len(results))
    by_shape = collections.defaultdict(lambda: [0, 0])
    for r in results:
        by_shape[r["target_shape"]][0] += r["success"]
        by_shape[r["target_shape"]][1] += 1
    steps = [r["steps"] for r in results if r["success"]]
    print(f"expert success ({args.split}, seeds {args.seed}..{args.seed + args.episodes - 1}): "
          f"{n}/{len(results)} = {100 * n / len(results):.1f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f})")
    print("per target shape: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(by_shape.items())))
    if steps:
        print(f"successful episode length: mean {sum(steps) / len(steps):.1f} steps "
              f"(min {min(steps)}, max {max(steps)}) at 20 Hz")
    print(f"failed seeds: {[r['seed'] for r in results if not r['success']]}")
    print(f"wall time {time.time() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "episodes": len(results), "successes": n, "wilson95": [lo, hi]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
