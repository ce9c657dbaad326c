"""Benchmark: does the offline planner choose valid objects and box them accurately in the simulator?

For N seeded scenes of each split, the real client asks the real offline server (over HTTP on
loopback) to propose the next object for "clear the table" and to box it. The box is compared
with the simulator's ground-truth boxes (``info['objects'][i]['bbox_head']``):

* ``iou>=0.5``: the box overlaps the ground-truth box of the chosen object (the GT object of
  highest IoU) with IoU >= 0.5 (issue target: >= 95 % of scenes);
* ``rightmost``: the chosen object is the valid (on-table, visible) object with the largest
  x-centre; ``top2``: it is one of the two rightmost (the planner may skip a hemmed-in one);
* ``colour``: the instruction names the object's true colour.

Usage::

    MUJOCO_GL=egl python benchmarks/planner_boxes.py --scenes 50 [--splits train unseen_objects ...]
    python benchmarks/planner_boxes.py --synthetic --scenes 100     # no simulator needed
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner import BBox, DexGraspVLAPlanner, PlannerError  # noqa: E402
from planner.server import create_app  # noqa: E402
from planner.server.background import serve_in_thread  # noqa: E402
from planner.server.vocab import parse_text  # noqa: E402

PROMPT = "clear the table"


@dataclass
class SplitResult:
    """Aggregated figures of one split."""

    split: str
    scenes: int = 0
    iou_ok: int = 0
    rightmost: int = 0
    top2: int = 0
    colour_ok: int = 0
    errors: int = 0
    ious: list = field(default_factory=list)
    seconds: float = 0.0
    failures: list = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Fractions and timings as a plain dict."""
        n = max(self.scenes, 1)
        return {
            "split": self.split, "scenes": self.scenes, "iou>=0.5": round(self.iou_ok / n, 4),
            "rightmost": round(self.rightmost / n, 4), "top2": round(self.top2 / n, 4),
            "colour": round(self.colour_ok / n, 4), "errors": self.errors,
            "mean_iou": round(sum(self.ious) / max(len(self.ious), 1), 4),
            "s_per_scene": round(self.seconds / n, 3),
        }


def sim_scenes(splits: list[str], n: int, seed0: int) -> Iterator[tuple[str, int, Any, list[dict]]]:
    """Yield (split, seed, head BGR image, GT objects) from the simulator."""
    from sim import GraspEnv, SimConfig

    env = GraspEnv(SimConfig())
    try:
        for split in splits:
            for seed in range(seed0, seed0 + n):
                try:
                    obs, info = env.reset(seed=seed, split=split)
                except Exception as exc:  # a simulator bug must not stop the benchmark
                    print(f"skipping {split} seed {seed}: sim reset failed: {type(exc).__name__}: {exc}",
                          file=sys.stderr)
                    continue
                yield split, seed, obs["rgbm"][..., :3].copy(), list(info["objects"])
    finally:
        env.close()


def synthetic_scenes(n: int, seed0: int) -> Iterator[tuple[str, int, Any, list[dict]]]:
    """Yield synthetic scenes (``planner.synthetic``) in the same layout."""
    from planner.synthetic import make_scene

    for seed in range(seed0, seed0 + n):
        scene = make_scene(seed)
        yield "synthetic", seed, scene.image, scene.objects


def _valid(objects: list[dict]) -> list[tuple[int, BBox]]:
    out = []
    for i, obj in enumerate(objects):
        box = obj.get("bbox_head")
        if not obj.get("on_table", True) or box is None:
            continue
        bbox = BBox(*(int(v) for v in box))
        if bbox.width > 1 and bbox.height > 1:
            out.append((i, bbox))
    return out


def evaluate(planner: DexGraspVLAPlanner, scenes, verbose: bool = False) -> dict[str, SplitResult]:
    """Run propose + box on every scene; return per-split results."""
    results: dict[str, SplitResult] = {}
    for split, seed, image, objects in scenes:
        res = results.setdefault(split, SplitResult(split))
        res.scenes += 1
        start = time.monotonic()
        try:
            instruction = planner.propose_instruction(PROMPT, image, image)
            box = planner.predict_bbox(instruction.instruction, image).bbox
        except PlannerError as exc:
            res.errors += 1
            res.failures.append({"seed": seed, "error": str(exc)[:300]})
            continue
        finally:
            res.seconds += time.monotonic() - start
        valid = _valid(objects)
        if not valid:
            continue
        ious = [(box.iou(gt), i, gt) for i, gt in valid]
        best_iou, chosen, _ = max(ious)
        res.ious.append(best_iou)
        by_x = sorted(valid, key=lambda v: -v[1].center[0])
        ok = best_iou >= 0.5
        res.iou_ok += ok
        res.rightmost += ok and chosen == by_x[0][0]
        res.top2 += ok and chosen in {i for i, _ in by_x[:2]}
        named = parse_text(instruction.instruction).colours
        res.colour_ok += ok and str(objects[chosen].get("colour")) in named
        if not ok or verbose:
            res.failures.append({"seed": seed, "instruction": instruction.instruction, "box": box.as_list(),
                                 "iou": round(best_iou, 3), "gt": objects[chosen].get("bbox_head"),
                                 "gt_colour": objects[chosen].get("colour")})
    return results


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; prints a table and optionally writes JSON."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    parser = cli_common.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=25, help="scenes per split")
    parser.add_argument("--seed0", type=int, default=1000, help="first seed")
    parser.add_argument("--splits", nargs="+",
                        default=["train", "unseen_objects", "unseen_backgrounds", "unseen_lighting"])
    parser.add_argument("--synthetic", action="store_true", help="use synthetic scenes instead of the simulator")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--show-failures", action="store_true")
    args = parser.parse_args(argv)

    scenes = synthetic_scenes(args.scenes, args.seed0) if args.synthetic else sim_scenes(
        args.splits, args.scenes, args.seed0)
    with serve_in_thread(create_app()) as url:
        with DexGraspVLAPlanner(url + "/v1", timeout=60, max_retries=1) as planner:
            results = evaluate(planner, scenes)
    rows = [r.summary() for r in results.values()]
    total = SplitResult("all")
    for r in results.values():
        for key in ("scenes", "iou_ok", "rightmost", "top2", "colour_ok", "errors", "seconds"):
            setattr(total, key, getattr(total, key) + getattr(r, key))
        total.ious += r.ious
    rows.append(total.summary())
    header = list(rows[0])
    print(" | ".join(f"{h:>18}" if i == 0 else f"{h:>9}" for i, h in enumerate(header)))
    for row in rows:
        print(" | ".join(f"{str(row[h]):>18}" if i == 0 else f"{str(row[h]):>9}" for i, h in enumerate(header)))
    if args.show_failures:
        for r in results.values():
            for failure in r.failures:
                print(r.split, json.dumps(failure))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "failures": {r.split: r.failures for r in results.values()}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
