"""Closed-loop success table of a controller checkpoint in the simulator, in two columns.

* controller only: the ground-truth target mask goes into ``rgbm`` (``sim.evaluate``);
* full hierarchy: the offline planner server (over HTTP) proposes the next object and its box,
  the segmenter turns the box into a mask, the tracker follows it every control step and the
  controller acts on that mask; one grasp attempt per scene; success = the object the planner
  chose (matched to the simulator's objects by box IoU) is lifted and held;
* optional diagnostic ``hierarchy_true_mask``: the planner's choice with its ground-truth mask;
* optional ``dexvla`` (issue 23, ``--dexvla-checkpoint CKPT``): a DexVLA checkpoint gets the
  language instruction naming the scene's target (``"grasp the blue box"``, the phrasing of
  ``sim.collect``) and no mask, on the same splits and seeds; success as the controller column
  (the target lifted and held). The reasoning it generated per chunk is kept in the JSON records.

    python benchmarks/sim_success.py --columns dexvla --dexvla-checkpoint CKPT --episodes 50
    python benchmarks/sim_success.py --columns dexvla --dexvla-remote HOST:PORT ...   # a server of one

    python benchmarks/sim_success.py --checkpoint CKPT --episodes 50 [--splits train unseen_objects ...]

Prints a table (success rate, 95 % Wilson interval, mean seconds per attempt) and writes it as
JSON and Markdown (``--out``, default benchmarks/results/sim_success). Columns and splits can run
as separate processes (e.g. one per CPU core) and be combined afterwards::

    python benchmarks/sim_success.py --merge OUT_A OUT_B [...] --out OUT

``--remote HOST:PORT`` (instead of ``--checkpoint``) asks a policy server (``python -m
controller.serve``) for the chunks; noise and temporal ensemble stay here (as in-process).

* optional ``clear_table`` (issue 24): "clear the table" on scenes of ``--lh-objects`` (4-8)
  objects through the runtime itself (planner, perception, controller, failure recovery, scripted
  transport to the drop zone) until the planner reports completion or ``--lh-max-attempts``;
  objects cleared / asked, full-prompt success (the rate), attempts per verified grasp and the
  failure cause of every failed episode from the simulator's ground truth (``sim.long_horizon``)::

    python benchmarks/sim_success.py --checkpoint CKPT --columns clear_table --episodes 5

* optional ``hierarchy_retry`` (issue 24): single-object prompts through the runtime -- "grasp the
  <colour> <shape>" naming the scene's designated target, on the same scenes as the other columns
  -- with failure recovery and up to ``--retry-attempts`` attempts (default 3); success@k = the
  first verified attempt that lifted the asked object came at or before attempt k (the paper's
  @1/@2/@3), failure causes of the failed episodes::

    python benchmarks/sim_success.py --checkpoint CKPT --columns hierarchy_retry --episodes 50

Reports of separate processes are joined with ``--merge`` (``sim.success_report``): other splits
and columns side by side, the same split and column run on disjoint seed ranges pooled.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

from controller.policy import defaults  # noqa: E402 - torch-free; after the repository is on sys.path

from sim.success_report import (CAUSES, COLUMNS, SPLITS, hierarchy_stats, merge, render_table,  # noqa: E402,F401
                                write_report)


def hierarchy_episode(env, policy, planner, segmenter, tracker, seed: int, split: str, n_execute: int,
                      true_mask: bool = False) -> dict:
    """One planner-chosen grasp attempt with perceived masks. Returns a record, including how well
    the perceived mask matched the chosen object's true visible mask (IoU; empty vs empty = 1) at
    the first frame and on average over the attempt, and whether the planner picked the scene's
    designated target (the only object the controller-only column grasps). ``true_mask`` feeds the
    chosen object's ground-truth mask instead of the perceived one (isolates perception errors)."""
    from inference_utils.perception.masks import mask_iou
    from sim.targets import box_iou
    t0 = time.time()
    policy.reset()
    obs, info = env.reset(seed=seed, split=split)
    cams = env.render_cameras()
    head = cams["head_bgr"]
    instruction = planner.propose_instruction("clear the table", head, head)
    box = planner.predict_bbox(instruction.instruction, head).bbox.as_list()
    ious = [box_iou(box, o["bbox_head"]) if o.get("bbox_head") is not None else 0.0 for o in info["objects"]]
    chosen = int(np.argmax(ious))
    env.set_target(chosen)
    gt_mask = env.observe()["rgbm"][..., 3] > 0          # ground truth of the chosen object, for the record
    mask = segmenter.segment(head, box)
    tracker.start(head, mask)
    mask_ious = [mask_iou(mask, gt_mask)]
    done, steps, closed = False, 0, False
    n_obj = env.n_objects
    start = [env.object_pose(j)[0].tolist() for j in range(n_obj)]
    max_lift = [0.0] * n_obj
    while not done:
        rgbm = obs["rgbm"] if true_mask else np.concatenate(
            [obs["rgbm"][..., :3], (mask.astype(np.uint8) * 255)[..., None]], axis=2)
        chunk = policy.predict_chunk({**obs, "rgbm": rgbm})
        executed = 0
        for action in chunk[:n_execute]:
            obs, _, terminated, truncated, info = env.step(action)
            closed = closed or float(1.0 - np.mean(action[7:12])) >= 0.5  # the runtime's grasp_closure
            max_lift = [max(m, env.object_lift(j)) for j, m in enumerate(max_lift)]
            mask = tracker.track(obs["rgbm"][..., :3])
            mask_ious.append(mask_iou(mask, obs["rgbm"][..., 3] > 0))
            steps += 1
            executed += 1
            if terminated or truncated:
                done = True
                break
        policy.consumed(executed)
    from sim.long_horizon import attempt_cause
    truth = {"target": chosen, "start_pos": start, "max_lift": max_lift,
             "end_pos": [env.object_pose(j)[0].tolist() for j in range(n_obj)],
             "end_lift": [env.object_lift(j) for j in range(n_obj)]}
    cause = attempt_cause({"success": bool(info["success"]), "sim_truth": truth,
                           "recovery": [{"to": "grasp"}] if closed else []})
    return {"seed": seed, "success": bool(info["success"]), "steps": steps, "box_iou": float(max(ious)),
            "cause": cause,
            "chosen": chosen, "designated_target": int(env.scene.target),
            "mask_iou_first": float(mask_ious[0]), "mask_iou_mean": float(np.mean(mask_ious)),
            "instruction": instruction.instruction, "seconds": time.time() - t0}


def main(argv=None) -> int:
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    ap = cli_common.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="DexGraspVLA controller checkpoint (columns controller / hierarchy*)")
    ap.add_argument("--dexvla-checkpoint", default=None, metavar="CKPT", help="DexVLA checkpoint (column dexvla)")
    ap.add_argument("--dexvla-remote", default=None, metavar="HOST:PORT",
                    help="column dexvla: a policy server of a DexVLA checkpoint instead of --dexvla-checkpoint")
    ap.add_argument("--dexvla-num-samples", type=int, default=1,
                    help="column dexvla: chunks per observation, averaged (each runs the VLM; default 1)")
    ap.add_argument("--remote", metavar="HOST:PORT", help="use a policy server instead of --checkpoint")
    ap.add_argument("--token-env", default=None, metavar="NAME",
                    help="environment variable with the policy server's token (default DEXGRASPVLA_POLICY_TOKEN)")
    ap.add_argument("--remote-timeout", type=float, default=30.0, help="seconds to wait for one remote chunk")
    ap.add_argument("--merge", nargs="+", metavar="DIR", help="combine earlier reports instead of evaluating")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--splits", nargs="+", default=SPLITS)
    ap.add_argument("--seed", type=int, default=100000, help="first scene seed (held out from collection)")
    ap.add_argument("--execute", type=int, default=6)
    ap.add_argument("--columns", nargs="+", default=["controller", "hierarchy"],
                    choices=list(COLUMNS),
                    help="hierarchy_true_mask: the planner's object with its ground-truth mask (diagnostic); "
                         "dexvla: a DexVLA checkpoint on the instruction, no mask (--dexvla-checkpoint); "
                         "hierarchy_retry: 'grasp the <target>' through the runtime, up to --retry-attempts")
    ap.add_argument("--time-limit", type=float, default=15.0)
    ap.add_argument("--rolling-friction", action="store_true",
                   help="rolling and torsional friction on object contacts (condim 6, sim/mjcf.py), as the data "
                        "was collected with (sim.collect --rolling-friction); off by default")
    ap.add_argument("--lh-objects", type=int, nargs=2, default=(4, 8), metavar=("MIN", "MAX"),
                    help="column clear_table: objects per scene")
    ap.add_argument("--lh-max-attempts", type=int, default=12, help="column clear_table: loop.max_attempts")
    ap.add_argument("--retry-attempts", type=int, default=3,
                    help="column hierarchy_retry: loop.max_attempts; success@1..N is reported (default 3)")
    ap.add_argument("--temporal-ensemble", default=str(defaults.TEMPORAL_ENSEMBLE_DECAY), metavar="DECAY|off",
                    help="blend overlapping chunks, weights exp(-DECAY * age in steps); 'off' disables "
                         "(default: controller.policy.defaults)")
    ap.add_argument("--num-samples", type=int, default=defaults.NUM_SAMPLES,
                    help="chunks denoised per observation and averaged (default: controller.policy.defaults)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and OpenCV threads of this process (default: all cores); with several "
                         "evaluation processes on one machine give each cores / processes, e.g. 1 and 1 on "
                         "2 cores: oversubscribed threads made episodes ~4x slower here")
    ap.add_argument("--out", default="benchmarks/results/sim_success")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    needs_controller = any(c != "dexvla" for c in args.columns)
    if needs_controller and bool(args.checkpoint) == bool(args.remote):
        ap.error("give --checkpoint or --remote HOST:PORT (unless --merge)")
    if "dexvla" in args.columns and bool(args.dexvla_checkpoint) == bool(args.dexvla_remote):
        ap.error("--columns dexvla needs --dexvla-checkpoint CKPT or --dexvla-remote HOST:PORT")
    if args.dexvla_num_samples < 1:
        ap.error(f"--dexvla-num-samples must be >= 1, got {args.dexvla_num_samples}")
    for column in ("clear_table", "hierarchy_retry"):
        if column in args.columns and not args.checkpoint:
            ap.error(f"--columns {column} runs the runtime on a checkpoint: give --checkpoint")
    if args.retry_attempts < 1:
        ap.error(f"--retry-attempts must be >= 1, got {args.retry_attempts}")

    import torch
    from tqdm import tqdm

    if args.threads:
        import cv2
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    from controller.policy.chunk_runner import ChunkPolicy
    from inference_utils.perception import build_segmenter, build_tracker
    from planner import DexGraspVLAPlanner
    from planner.server.app import create_app
    from planner.server.background import serve_in_thread
    from sim import GraspEnv, SimConfig
    from sim.evaluate import run_evaluation

    from controller.policy.temporal_ensemble import parse_decay
    try:
        decay = parse_decay(args.temporal_ensemble)
    except ValueError as exc:
        ap.error(str(exc))
    n_samples = args.num_samples
    if n_samples < 1:
        ap.error(f"--num-samples must be >= 1, got {n_samples}")
    policy, checkpoint = None, None
    if not needs_controller:
        pass
    elif args.remote:
        from sim.evaluate import connect_remote
        try:
            policy = connect_remote(args.remote, args.token_env, args.remote_timeout, temporal_ensemble=decay,
                                    num_samples=n_samples)
        except (ValueError, ConnectionError, RuntimeError) as exc:
            ap.error(str(exc))
        checkpoint = f"remote {policy.url}: {policy.metadata['model_id']} ({policy.metadata['checkpoint_sha256']})"
    else:
        policy = ChunkPolicy.from_checkpoint(args.checkpoint, temporal_ensemble=decay, num_samples=n_samples)
        checkpoint = args.checkpoint
    dexvla, dexvla_source = None, args.dexvla_checkpoint
    if "dexvla" in args.columns and args.dexvla_remote:
        from sim.evaluate import connect_remote
        try:
            dexvla = connect_remote(args.dexvla_remote, args.token_env, args.remote_timeout, temporal_ensemble=decay,
                                    num_samples=args.dexvla_num_samples)
        except (ValueError, ConnectionError, RuntimeError) as exc:
            ap.error(str(exc))
        if not dexvla.accepts_language:
            ap.error(f"--dexvla-remote {args.dexvla_remote}: the server's policy "
                     f"({dexvla.metadata.get('policy_class')}) takes no language")
        dexvla_source = (f"remote {dexvla.url}: {dexvla.metadata['model_id']} "
                         f"({dexvla.metadata['checkpoint_sha256']})")
    elif "dexvla" in args.columns:
        from controller.policy.dexvla_runner import DexVLAChunkPolicy
        dexvla = DexVLAChunkPolicy.from_checkpoint(args.dexvla_checkpoint, temporal_ensemble=decay,
                                                   num_samples=args.dexvla_num_samples)
    config = SimConfig(time_limit_s=args.time_limit, rolling_friction=args.rolling_friction)
    rows = {}
    for split in args.splits:
        row = {}
        if "controller" in args.columns:
            t = time.time()
            s = run_evaluation(policy, split, args.episodes, args.seed, 0, None, args.execute, config)
            row["controller"] = {"successes": s["successes"], "n": args.episodes, "rate": s["success_rate"],
                                 "wilson95": s["wilson95"], "s_per_attempt": (time.time() - t) / args.episodes,
                                 "temporal_ensemble": decay, "num_samples": n_samples,
                                 "threads": torch.get_num_threads(),
                                 "records": [{"seed": r["seed"], "success": r["success"]} for r in s["records"]]}
        if dexvla is not None:
            t = time.time()
            s = run_evaluation(dexvla, split, args.episodes, args.seed, 0, None, args.execute, config)
            row["dexvla"] = {"successes": s["successes"], "n": args.episodes, "rate": s["success_rate"],
                             "wilson95": s["wilson95"], "s_per_attempt": (time.time() - t) / args.episodes,
                             "temporal_ensemble": decay, "num_samples": args.dexvla_num_samples,
                             "threads": torch.get_num_threads(),
                             "records": [{k: r[k] for k in ("seed", "success", "instruction", "reasoning")}
                                         for r in s["records"]]}
        for column in [c for c in args.columns if c in ("hierarchy", "hierarchy_true_mask")]:
            recs = []
            with serve_in_thread(create_app()) as base_url, GraspEnv(config.with_(split=split)) as env:
                planner = DexGraspVLAPlanner(base_url + "/v1", timeout=30, max_retries=1)
                segmenter = build_segmenter({"segmenter": {"backend": "grabcut"}})
                tracker = build_tracker({"tracker": {"backend": "flow"}})
                for i in tqdm(range(args.episodes), desc=f"{column} {split}", unit="ep"):
                    torch.manual_seed(args.seed + i)
                    tracker.reset()
                    try:
                        recs.append(hierarchy_episode(env, policy, planner, segmenter, tracker, args.seed + i,
                                                      split, args.execute, column == "hierarchy_true_mask"))
                    except Exception as exc:  # noqa: BLE001 - a planner/perception failure is a failed attempt
                        recs.append({"seed": args.seed + i, "success": False, "error": repr(exc), "seconds": 0.0})
            row[column] = {**hierarchy_stats(recs), "temporal_ensemble": decay, "num_samples": n_samples,
                           "threads": torch.get_num_threads(),
                           "s_per_attempt": float(np.mean([r["seconds"] for r in recs]))}
        for column in [c for c in args.columns if c in ("hierarchy_retry", "clear_table")]:
            row[column] = runtime_column(column, args, split, decay, n_samples)
        rows[split] = row

    write_report(checkpoint, args.episodes, rows, args.out, dexvla_checkpoint=dexvla_source,
                 rolling_friction=args.rolling_friction)
    return 0


def runtime_column(column: str, args, split: str, decay, n_samples: int) -> dict:
    """Column ``clear_table`` or ``hierarchy_retry`` of one split: ``--episodes`` runs of the
    runtime itself (``sim.long_horizon``), one per scene seed."""
    import torch
    from tqdm import tqdm

    from planner.server.app import create_app
    from planner.server.background import serve_in_thread
    from sim import SimConfig
    from sim.long_horizon import column_stats, run_episode, single_prompt_stats
    te = "null" if decay is None else str(decay)
    extra = [f"controller.temporal_ensemble={te}", f"controller.num_samples={n_samples}", "controller.device=cpu",
             f"sim.rolling_friction={str(bool(args.rolling_friction)).lower()}"]
    if column == "clear_table":  # "clear the table" on scenes of --lh-objects objects
        objects, prompt, attempts = tuple(args.lh_objects), "clear the table", args.lh_max_attempts
    else:  # "grasp the <designated target>" on the other columns' scenes (SimConfig's object counts)
        objects, prompt, attempts = tuple(SimConfig().n_objects), None, args.retry_attempts
    recs, t = [], time.time()
    with serve_in_thread(create_app()) as base_url:
        for i in tqdm(range(args.episodes), desc=f"{column} {split}", unit="ep"):
            recs.append(run_episode(args.checkpoint, base_url + "/v1", args.seed + i, split,
                                    Path(args.out) / f"{column}_logs", objects, prompt, attempts, args.time_limit,
                                    extra))
    stats = column_stats(recs) if column == "clear_table" else single_prompt_stats(recs, attempts)
    n_attempts = sum(r["attempts"] for r in recs)
    stats.update(s_per_attempt=(time.time() - t) / max(1, n_attempts), temporal_ensemble=decay,
                 num_samples=n_samples, threads=torch.get_num_threads(), objects_range=list(objects))
    return stats


if __name__ == "__main__":
    sys.exit(main())
