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

``--latency`` instead prints the per-frame latency of every back-end side by side at the head
camera's 480x640, the learned ones with random weights built by their libraries' own builders
(nothing downloaded; the masks mean nothing, the compute is the real one):

* **segmenters** (box → mask): GrabCut (the baseline, ratio 1.00), SAM tiny (2-block encoder),
  SAM ViT-B, SAM 2 tiny and SAM 2.1 Hiera-T (``--sam2-types`` adds e.g. ``sam2.1_hiera_l``) — on a
  new image (image embedding + decoding) and for a second box on the same image (embedding
  reused, what the planner's retries cost), each with its ratio to GrabCut;
* **trackers** (ms per frame, after ``start`` and one warm-up frame): the flow tracker (the
  baseline), the streaming SAM 2 tracker (tiny, Hiera-T) and Cutie when a clone is given
  (``--cutie-path`` or ``DEXGRASPVLA_CUTIE_PATH``; random weights), mean / p50 / p95 and the
  ratio of means to the flow tracker.

Rows run round-robin (one image or frame of each per round) so load changes on a shared machine
hit all rows alike; compare rows within one run.

Usage::

    python benchmarks/perception.py                       # auto: sim if available
    python benchmarks/perception.py --source synthetic --episodes 8
    python benchmarks/perception.py --tracker cutie --tracker-weights ~/weights/cutie-base-mega.pth
    python benchmarks/perception.py --latency [--frames 10] [--images 2] [--cutie-path ~/Cutie]
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

from inference_utils.cli_common import resolve_device  # noqa: E402
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


# ----------------------------------------------------------------------------- latency mode
def _params(model) -> float | None:
    return None if model is None else sum(p.numel() for p in model.parameters()) / 1e6


def _latency_backends(args):
    """``(segmenter rows, tracker rows, notes)``; a row is ``(name, builder)``; builders return
    ``(object, torch module or None)`` and are called lazily (a missing package skips the row)."""
    from inference_utils.perception import FlowTracker, GrabCutSegmenter

    segs = [("grabcut", lambda: (GrabCutSegmenter(), None))]
    trks = [("flow", lambda: (FlowTracker(), None))]
    notes = []

    try:
        import segment_anything  # noqa: F401
    except ImportError:
        notes.append("sam: segment-anything not installed (pip install -e .[test] or .[sam])")
    else:
        from inference_utils.perception import SamSegmenter
        from inference_utils.perception.random_models import random_sam

        for kind in ("tiny", "vit_b"):
            segs.append((f"sam {kind}", lambda kind=kind: (lambda m: (SamSegmenter.from_model(m), m))(random_sam(kind))))

    import importlib.util

    if importlib.util.find_spec("sam2") is None:
        notes.append("sam2: not installed (SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'sam2==1.1.0')")
    else:
        from inference_utils.perception import Sam2Segmenter, Sam2Tracker
        from inference_utils.perception.random_models import random_sam2

        for kind in ["tiny", *args.sam2_types]:
            segs.append((f"sam2 {kind}", lambda kind=kind: (lambda m: (Sam2Segmenter.from_model(m), m))(
                random_sam2(kind))))
            trks.append((f"sam2 {kind}", lambda kind=kind: (lambda m: (Sam2Tracker.from_model(m), m))(
                random_sam2(kind, video=True))))

    clone = args.cutie_path or os.environ.get("DEXGRASPVLA_CUTIE_PATH")
    if importlib.util.find_spec("cutie") is None and not clone:
        notes.append("cutie: no clone given (--cutie-path or DEXGRASPVLA_CUTIE_PATH; it is not on PyPI)")
    else:
        def cutie():
            import tempfile

            import torch

            from inference_utils.perception import CutieTracker
            from inference_utils.perception.cutie_tracker import (build_cutie_network, import_cutie,
                                                                  load_cutie_config)

            import_cutie(clone)
            net = build_cutie_network(load_cutie_config("unused"))
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "cutie-random.pth")
                torch.save(net.state_dict(), path)
                tracker = CutieTracker(path, device="cpu", code_path=clone)
            return tracker, tracker._net

        trks.append(("cutie base", cutie))
    return segs, trks, notes


def _build_rows(rows, notes):
    built = []
    for name, make in rows:
        t0 = time.perf_counter()
        try:
            obj, model = make()
        except Exception as exc:  # a back-end that cannot be built is reported, not fatal
            notes.append(f"{name}: could not be built: {type(exc).__name__}: {exc}")
            continue
        built.append({"name": name, "obj": obj, "params_m": _params(model), "build_s": time.perf_counter() - t0})
    return built


def latency_main(args) -> int:
    import torch

    from inference_utils.perception.synthetic import make_grasp_sequence

    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)  # sam2
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*", category=FutureWarning)  # cutie
    if args.threads:
        torch.set_num_threads(args.threads)
    seq = make_grasp_sequence(args.seed, n_frames=max(args.frames + 2, 4 * (args.images + 1)))
    h, w = seq.frames[0].shape[:2]
    rng = np.random.default_rng(args.seed)
    segs, trks, notes = _latency_backends(args)
    only = set(args.backends.split(",")) if args.backends else None
    if only:
        segs = [r for r in segs if r[0] in only or r[0].split()[0] in only]
        trks = [r for r in trks if r[0] in only or r[0].split()[0] in only]
    print(f"latency at {h}x{w}, random weights, device cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    out = {"resolution": f"{h}x{w}", "threads": torch.get_num_threads(), "segmenters": [], "trackers": []}

    # segmenters: a new image per round (embedding + decode), then a second box on it (decode only)
    seg_rows = _build_rows(segs, notes)
    images = [seq.frames[4 * k] for k in range(args.images + 1)]  # the first is the warm-up
    boxes = [loose_box(mask_to_box(seq.masks[4 * k]), rng) for k in range(args.images + 1)]
    second = [[b[0] - 20, b[1] - 15, b[2] + 10, b[3] + 25] for b in boxes]
    for r in seg_rows:
        r["new"], r["same"] = [], []
    with torch.inference_mode():
        for k, (img, box, box2) in enumerate(zip(images, boxes, second)):
            for r in seg_rows:
                t0 = time.perf_counter()
                r["obj"].segment(img, box)
                t1 = time.perf_counter()
                r["obj"].segment(img, box2)
                t2 = time.perf_counter()
                if k:
                    r["new"].append(1e3 * (t1 - t0))
                    r["same"].append(1e3 * (t2 - t1))
    print(f"\n{'segmenter (box -> mask)':<26}{'params':>9}{'new image ms':>14}{'ratio':>8}"
          f"{'same image ms':>15}{'ratio':>8}")
    base = seg_rows[0] if seg_rows and seg_rows[0]["name"] == "grabcut" else None
    for r in seg_rows:
        new, same = float(np.median(r["new"])), float(np.median(r["same"]))
        ratio_new = new / float(np.median(base["new"])) if base else float("nan")
        ratio_same = same / float(np.median(base["same"])) if base else float("nan")
        params = "-" if r["params_m"] is None else f"{r['params_m']:.1f} M"
        print(f"{r['name']:<26}{params:>9}{new:>14.1f}{ratio_new:>7.1f}x{same:>15.1f}{ratio_same:>7.1f}x")
        out["segmenters"].append({"name": r["name"], "params_m": r["params_m"], "build_s": r["build_s"],
                                  "new_image_ms": r["new"], "same_image_ms": r["same"]})
    del seg_rows

    # trackers: start on frame 0 (ground-truth mask), one warm-up frame, then --frames timed frames
    trk_rows = _build_rows(trks, notes)
    for r in trk_rows:
        r["obj"].start(seq.frames[0], seq.masks[0])
        r["obj"].track(seq.frames[1])
        r["ms"] = []
    for frame in seq.frames[2:args.frames + 2]:
        for r in trk_rows:
            t0 = time.perf_counter()
            r["obj"].track(frame)
            r["ms"].append(1e3 * (time.perf_counter() - t0))
    print(f"\n{'tracker (per frame)':<26}{'params':>9}{'mean ms':>10}{'p50':>9}{'p95':>9}{'ratio':>8}")
    base = trk_rows[0] if trk_rows and trk_rows[0]["name"] == "flow" else None
    for r in trk_rows:
        ms = np.array(r["ms"])
        ratio = ms.mean() / np.mean(base["ms"]) if base else float("nan")
        params = "-" if r["params_m"] is None else f"{r['params_m']:.1f} M"
        print(f"{r['name']:<26}{params:>9}{ms.mean():>10.1f}{np.percentile(ms, 50):>9.1f}"
              f"{np.percentile(ms, 95):>9.1f}{ratio:>7.1f}x")
        out["trackers"].append({"name": r["name"], "params_m": r["params_m"], "build_s": r["build_s"],
                                "ms": r["ms"]})
    print(f"\n({args.images} images x 2 boxes and {args.frames} frames per row, after a warm-up; "
          "ratios against grabcut / flow; medians for segmenters)")
    for note in notes:
        print(f"skipped  {note}")
    out["notes"] = notes
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


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
    p.add_argument("--device", default="auto", help="segmenter/tracker device of the IoU run: auto (cuda, mps, cpu)")
    p.add_argument("--json", default=None, help="write per-episode results to this file")
    p.add_argument("--latency", action="store_true",
                   help="per-frame latency of every back-end side by side (random weights, 480x640)")
    p.add_argument("--frames", type=int, default=10, help="--latency: timed tracker frames per back-end")
    p.add_argument("--images", type=int, default=2, help="--latency: timed images per segmenter")
    p.add_argument("--sam2-types", nargs="*", default=["sam2.1_hiera_t"],
                   help="--latency: full-size SAM 2 models besides the tiny one (random weights)")
    p.add_argument("--cutie-path", default=None, help="--latency: a local Cutie clone (default: $DEXGRASPVLA_CUTIE_PATH)")
    p.add_argument("--backends", default=None,
                   help="--latency: only these rows, comma-separated (e.g. grabcut,flow,sam2)")
    p.add_argument("--threads", type=int, default=0, help="--latency: torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.latency:
        return latency_main(args)

    cfg = {"segmenter": {"backend": args.segmenter, "checkpoint": args.sam_checkpoint,
                         "model_type": args.sam_model_type, "device": resolve_device(args.device)},
           "tracker": {"backend": args.tracker, "weights": args.tracker_weights,
                       "device": resolve_device(args.device)}}
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
