#!/usr/bin/env python
"""Perception benchmark: mask IoU and latency of the segmenter and the tracker.

Episodes come from the simulator (``sim.GraspEnv`` driven by ``sim.expert.ScriptedExpert``;
ground truth = the target mask in ``obs['rgbm'][..., 3]``) when it is importable, otherwise
from synthetic grasp sequences (``inference_utils.perception.synthetic``). For each episode:

* **segmenter** — a planner-like loose box (each side grown by 5–20 % of the size) around the
  target at the first frame (and every 10th on-table frame where the target is mostly visible)
  → mask IoU and latency;
* **tracker (GT init)** — started from the ground-truth first mask, run over the whole episode
  → per-frame IoU, split into "on table" and "lifted", and ms/frame at the camera resolution;
* **pipeline** — the same, started from the segmenter's mask.

Target for the weight-free back-ends on sim episodes: mean tracker IoU >= 0.7 while the object
is on the table.

Usage::

    python benchmarks/perception.py                       # auto: sim if available
    python benchmarks/perception.py --source synthetic --episodes 8
    python benchmarks/perception.py --tracker cutie --tracker-weights ~/weights/cutie-base-mega.pth
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("MUJOCO_GL", "egl")

from inference_utils.perception import build_segmenter, build_tracker, mask_iou, mask_to_box  # noqa: E402

IOU_TARGET = 0.7


def sim_available() -> tuple[bool, str]:
    """Whether the simulator and its scripted expert can be imported (and why not)."""
    try:
        from sim import GraspEnv, SimConfig  # noqa: F401
        from sim.expert import ScriptedExpert  # noqa: F401
    except Exception as exc:  # ImportError, or a GL back-end failing at import
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def sim_episodes(n: int, seed: int, split: str, max_steps: int):
    """Yield ``(name, frames, gt_masks, on_table)`` from scripted expert episodes."""
    from sim import GraspEnv, SimConfig
    from sim.expert import ScriptedExpert

    env = GraspEnv(SimConfig())
    try:
        for k in range(n):
            obs, info = env.reset(seed=seed + k, split=split)
            expert = ScriptedExpert()
            frames, masks, on_table = [], [], []
            for _ in range(max_steps):
                tid = info["target_id"]
                frames.append(np.ascontiguousarray(obs["rgbm"][..., :3]))
                masks.append(obs["rgbm"][..., 3] > 0)
                on_table.append(bool(info["objects"][tid]["on_table"]))
                obs, _, terminated, truncated, info = env.step(expert.act(env))
                if terminated or truncated:
                    break
            yield f"sim-{split}-{seed + k}", frames, masks, on_table
    finally:
        env.close()


def synthetic_episodes(n: int, seed: int):
    """Yield ``(name, frames, gt_masks, on_table)`` from synthetic sequences."""
    from inference_utils.perception.synthetic import make_grasp_sequence

    for k in range(n):
        occ = (0.5, 0.8, 0.95)[k % 3]
        s = make_grasp_sequence(seed + k, occlusion=occ)
        yield f"synthetic-{seed + k}-occ{occ}", s.frames, s.masks, s.on_table


def loose_box(box, rng):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    f = rng.uniform(0.05, 0.2, 4)
    return [x1 - f[0] * w, y1 - f[1] * h, x2 + f[2] * w, y2 + f[3] * h]


def run_tracker(tracker, frames, masks, first_mask):
    tracker.start(frames[0], first_mask)
    ious, times = [], []
    for frame, gt in zip(frames[1:], masks[1:]):
        t0 = time.perf_counter()
        pred = tracker.track(frame)
        times.append(time.perf_counter() - t0)
        ious.append(mask_iou(pred, gt))
    return np.array(ious), np.array(times)


def evaluate(name, frames, masks, on_table, segmenter, tracker, rng) -> dict | None:
    if not masks[0].any():
        print(f"{name}: target not visible in the first frame, skipped")
        return None
    res = {"name": name, "frames": len(frames), "resolution": list(frames[0].shape[:2])}
    area0 = masks[0].sum()
    seg_iou, seg_ms = [], []
    for i in range(0, len(frames), 10):
        if not on_table[i] or masks[i].sum() < 0.8 * area0:
            continue
        box = loose_box(mask_to_box(masks[i]), rng)
        t0 = time.perf_counter()
        pred = segmenter.segment(frames[i], box)
        seg_ms.append(1e3 * (time.perf_counter() - t0))
        seg_iou.append(mask_iou(pred, masks[i]))
        if i == 0:
            first = pred
    res["segmenter_iou"] = seg_iou
    res["segmenter_ms"] = seg_ms
    on = np.array(on_table[1:], bool)
    for key, init in (("tracker", masks[0]), ("pipeline", first)):
        tracker.reset()
        ious, times = run_tracker(tracker, frames, masks, init)
        res[f"{key}_iou_on_table"] = float(ious[on].mean()) if on.any() else None
        res[f"{key}_iou_lifted"] = float(ious[~on].mean()) if (~on).any() else None
        res[f"{key}_iou_all"] = float(ious.mean())
        res[f"{key}_iou_min"] = float(ious.min())
        res[f"{key}_ms"] = [float(1e3 * t) for t in times]
    return res


def fmt(v):
    return "  n/a" if v is None else f"{v:5.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=("auto", "sim", "synthetic"), default="auto")
    p.add_argument("--episodes", type=int, default=None, help="default: 5 (sim) / 6 (synthetic)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--split", default="train", help="sim split")
    p.add_argument("--max-steps", type=int, default=150, help="sim steps per episode at most")
    p.add_argument("--segmenter", default="grabcut")
    p.add_argument("--sam-checkpoint", default=None)
    p.add_argument("--sam-model-type", default="vit_h")
    p.add_argument("--tracker", default="flow")
    p.add_argument("--tracker-weights", default=None)
    p.add_argument("--reseg-every", type=int, default=10)
    p.add_argument("--no-reacquire", action="store_true", help="flow tracker: do not re-find a lost object")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write per-episode results to this file")
    args = p.parse_args(argv)

    cfg = {"segmenter": {"backend": args.segmenter, "checkpoint": args.sam_checkpoint,
                         "model_type": args.sam_model_type, "device": args.device},
           "tracker": {"backend": args.tracker, "weights": args.tracker_weights, "device": args.device}}
    if args.tracker == "flow":
        cfg["tracker"]["reseg_every"] = args.reseg_every
        cfg["tracker"]["reacquire"] = not args.no_reacquire
    segmenter, tracker = build_segmenter(cfg), build_tracker(cfg)

    source = args.source
    if source in ("auto", "sim"):
        ok, why = sim_available()
        if not ok:
            if source == "sim":
                print(f"simulator not available: {why}", file=sys.stderr)
                return 2
            print(f"simulator not available ({why}); using synthetic sequences")
            source = "synthetic"
        else:
            source = "sim"
    n = args.episodes or (5 if source == "sim" else 6)
    episodes = (sim_episodes(n, args.seed, args.split, args.max_steps) if source == "sim"
                else synthetic_episodes(n, args.seed))
    print(f"source={source} episodes={n} segmenter={args.segmenter} tracker={args.tracker}"
          f"{' reseg_every=%d reacquire=%s' % (args.reseg_every, not args.no_reacquire) if args.tracker == 'flow' else ''}")
    print(f"{'episode':<28}{'frames':>7}{'seg':>7}{'trk_on':>8}{'trk_lift':>9}{'trk_min':>8}"
          f"{'pipe_on':>8}{'ms/frame':>9}")
    rng = np.random.default_rng(args.seed)
    results = []
    t_start = time.time()
    for name, frames, masks, on_table in episodes:
        r = evaluate(name, frames, masks, on_table, segmenter, tracker, rng)
        if r is None:
            continue
        results.append(r)
        seg = np.mean(r["segmenter_iou"]) if r["segmenter_iou"] else None
        print(f"{name:<28}{r['frames']:>7}{fmt(seg):>7}{fmt(r['tracker_iou_on_table']):>8}"
              f"{fmt(r['tracker_iou_lifted']):>9}{fmt(r['tracker_iou_min']):>8}"
              f"{fmt(r['pipeline_iou_on_table']):>8}{np.mean(r['tracker_ms']):>9.1f}")
    if not results:
        print("no usable episodes")
        return 1

    def mean_of(key):
        vals = [r[key] for r in results if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    seg_all = [v for r in results for v in r["segmenter_iou"]]
    seg_ms = [v for r in results for v in r["segmenter_ms"]]
    trk_ms = np.array([v for r in results for v in r["tracker_ms"]])
    h, w = results[0]["resolution"]
    summary = {
        "source": source, "episodes": len(results),
        "segmenter_iou_mean": float(np.mean(seg_all)) if seg_all else None,
        "segmenter_iou_min": float(np.min(seg_all)) if seg_all else None,
        "segmenter_ms_mean": float(np.mean(seg_ms)) if seg_ms else None,
        "tracker_iou_on_table": mean_of("tracker_iou_on_table"),
        "tracker_iou_lifted": mean_of("tracker_iou_lifted"),
        "pipeline_iou_on_table": mean_of("pipeline_iou_on_table"),
        "pipeline_iou_lifted": mean_of("pipeline_iou_lifted"),
        "tracker_ms_mean": float(trk_ms.mean()), "tracker_ms_p95": float(np.percentile(trk_ms, 95)),
        "tracker_ms_max": float(trk_ms.max()), "resolution": f"{h}x{w}",
        "wall_s": time.time() - t_start,
    }
    print("-" * 84)
    print(f"segmenter  IoU mean {fmt(summary['segmenter_iou_mean'])}  min {fmt(summary['segmenter_iou_min'])}"
          f"  ({len(seg_all)} boxes, {summary['segmenter_ms_mean']:.1f} ms each)")
    print(f"tracker    IoU on table {fmt(summary['tracker_iou_on_table'])}  lifted {fmt(summary['tracker_iou_lifted'])}"
          f"   (started from the ground-truth mask)")
    print(f"pipeline   IoU on table {fmt(summary['pipeline_iou_on_table'])}  lifted {fmt(summary['pipeline_iou_lifted'])}"
          f"   (started from the segmenter's mask)")
    print(f"latency    tracker {summary['tracker_ms_mean']:.1f} ms/frame mean, p95 {summary['tracker_ms_p95']:.1f},"
          f" max {summary['tracker_ms_max']:.1f} at {h}x{w}")
    ok = (summary["tracker_iou_on_table"] or 0.0) >= IOU_TARGET
    print(f"target     tracker IoU on table >= {IOU_TARGET}: {'PASS' if ok else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "episodes": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
