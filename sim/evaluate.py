"""Closed-loop evaluation of a trained controller in the simulator.

Usage::

    python -m sim.evaluate --checkpoint CKPT --split unseen_objects --episodes 50 [--video 3]

The policy predicts a 64-step chunk of 13-D joint targets from the raw observation; the first
``--execute`` (6) actions are run, then it predicts again, as on the robot. The target mask in
``rgbm`` is the simulator's ground truth. Prints the success rate with a 95 % Wilson interval per
split and writes ``summary.json`` plus MP4s (wrist | head | mask) of the first K episodes, each
frame captioned with the split, scene seed, prompt (the target object) and the outcome.
``--device auto`` (default) picks cuda, then mps, then cpu.

Policy protocol: ``predict_chunk(raw_obs) -> (64, 13)``; an optional ``reset()`` is called at the
start of every episode and an optional ``consumed(n)`` after the ``n`` actions of a chunk that were
executed. The deployment defaults (``controller.policy.defaults``) apply: ``--num-samples K``
chunks averaged per observation, ``--temporal-ensemble DECAY|off`` blending of overlapping chunks.

A policy with ``accepts_language`` true (DexVLA, issue 23: ``DexVLAChunkPolicy``, or a policy
server serving one) gets the episode's instruction naming the target (``sim.collect.instruction``,
e.g. ``"grasp the blue box"``) through ``set_instruction`` at the start of every episode; the
reasoning it generated per chunk (``last_reasoning``) is kept in the episode record and shown in
the video caption. Such a policy gets no mask (it zeroes the channel itself).

``--remote HOST:PORT`` (instead of ``--checkpoint``) evaluates the policy a policy server serves
(``python -m controller.serve``, the runtime's ``controller.type=remote``); the noise and the
temporal ensemble stay in this process, so the episodes equal an in-process run of the same
checkpoint on a CPU. The token is read from ``--token-env`` (default DEXGRASPVLA_POLICY_TOKEN).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from controller.policy import defaults
from controller.policy.temporal_ensemble import parse_decay
from sim.config import SPLITS, SimConfig, SimConfigError, check_split


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion (``scipy.stats.binomtest``).

    ``z`` is the normal quantile (1.959964 for 95 %); it is turned into scipy's confidence level
    ``erf(z / sqrt 2)``, so the result equals the closed-form Wilson interval to ~1e-16. ``n = 0``
    gives the uninformative ``(0.0, 1.0)``. scipy is imported here so ``--help`` stays fast.
    """
    if n <= 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest  # noqa: PLC0415

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=math.erf(z / math.sqrt(2)),
                                                         method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def compose_frame(obs: dict, scale: float = 0.5) -> np.ndarray:
    """RGB video frame: wrist | head | mask side by side, downscaled by ``scale``."""
    import cv2
    wrist = obs["right_cam_img"]
    head = obs["rgbm"][:, :, :3]
    mask = np.repeat(obs["rgbm"][:, :, 3:4], 3, axis=2)
    frame = np.concatenate([wrist, head, mask], axis=1)[:, :, ::-1]
    if scale != 1.0:
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame)


CAPTION_BAND_PX = 24  # a multiple of 8: H.264 frame sizes stay aligned


def episode_caption(split: str, seed: int, prompt: str, success: bool | None) -> str:
    """The text drawn on an evaluation video: split, scene seed, prompt and the outcome."""
    outcome = "" if success is None else (" | success" if success else " | failure")
    return f"{split} | seed {seed} | {prompt}{outcome}"


def caption_frame(frame: np.ndarray, text: str, success: bool | None = None) -> np.ndarray:
    """``frame`` (H, W, 3 RGB) with a band of ``CAPTION_BAND_PX`` rows on top carrying ``text``
    (OpenCV ``putText``; green for a success, red for a failure, white when unknown)."""
    import cv2
    h, w = frame.shape[:2]
    band = np.zeros((CAPTION_BAND_PX, w, 3), dtype=np.uint8)
    colour = (255, 255, 255) if success is None else ((80, 220, 80) if success else (235, 80, 80))
    scale = 0.4
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > w - 8:  # shrink long prompts to the frame width
        scale *= (w - 8) / tw
    cv2.putText(band, text, (4, CAPTION_BAND_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([band, frame], axis=0))


def write_video(path: Path, frames: list[np.ndarray], fps: int = 20) -> None:
    """Write RGB frames to an MP4 (H.264, through ``inference_utils.video.write_mp4``)."""
    from inference_utils.video import write_mp4  # noqa: PLC0415
    write_mp4(path, frames, fps, rgb=True, quality=6, macro_block_size=8)


def run_evaluation(policy, split: str = "train", episodes: int = 10, seed: int = 1000, video_k: int = 0,
                   out_dir: str | Path | None = None, n_execute: int = 6, config: SimConfig | None = None,
                   progress: bool = True, viz=None) -> dict:
    """Run ``episodes`` closed-loop episodes (scene seeds ``seed .. seed+episodes-1``) on ``split``.

    Returns a summary dict (success rate, Wilson interval, per-episode records); with ``out_dir``
    it also writes ``summary_<split>.json`` and ``<split>_epNNN.mp4`` for the first ``video_k``.
    ``viz`` (``--viz rerun``: an ``inference_utils.runtime.viz_rerun.RerunViz``) receives every
    step's cameras, ground-truth mask and its box, the state and each predicted chunk.
    """
    from sim.env import GraspEnv
    check_split(split)
    if episodes < 1:
        raise SimConfigError(f"episodes must be >= 1, got {episodes}")
    if n_execute < 1:
        raise SimConfigError(f"n_execute must be >= 1, got {n_execute}")
    if not hasattr(policy, "predict_chunk"):
        raise TypeError("policy must implement predict_chunk(raw_obs) -> (64, 13) array")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    config = (config or SimConfig()).with_(split=split)
    records = []
    t0 = time.time()
    viz_step = 0
    with GraspEnv(config) as env:
        for i in tqdm(range(episodes), desc=f"eval {split}", unit="ep", disable=not progress):
            if hasattr(policy, "reset"):
                policy.reset()
            if "torch" in sys.modules:  # diffusion sampling noise: seeded per episode
                sys.modules["torch"].manual_seed(seed + i)
            obs, info = env.reset(seed=seed + i, split=split)
            frames = [compose_frame(obs)] if i < video_k else None
            language = bool(getattr(policy, "accepts_language", False))
            instruction, reasoning, notes = None, [], [""]  # notes: the reasoning shown on each frame
            if language:
                from sim.collect import instruction as phrase  # noqa: PLC0415 - the collector's wording
                instruction = phrase(env.scene.objects[env.target].describe())
                policy.set_instruction(instruction)
            done, chunks = False, 0
            if viz is not None:
                viz.log_planner("evaluator", f"{split} episode {i} seed {seed + i}: grasp the "
                                f"{env.scene.objects[env.target].describe()}")
            while not done:
                chunk = np.asarray(policy.predict_chunk(obs), dtype=np.float64)
                if chunk.ndim != 2 or chunk.shape[1] != 13:
                    raise ValueError(f"policy.predict_chunk returned shape {chunk.shape}, expected (T, 13)")
                chunks += 1
                executed = 0
                if language:
                    reasoning.append(str(policy.last_reasoning))
                for action in chunk[:n_execute]:
                    if viz is not None:
                        _viz_step(viz, viz_step, obs, chunk if executed == 0 else None)
                        viz_step += 1
                    obs, _, terminated, truncated, info = env.step(action)
                    executed += 1
                    if frames is not None:
                        frames.append(compose_frame(obs))
                        notes.append(reasoning[-1] if reasoning else "")
                    if terminated or truncated:
                        done = True
                        break
                if hasattr(policy, "consumed"):
                    policy.consumed(executed)
            rec = {"episode": i, "seed": seed + i, "success": bool(info["success"]), "steps": env.steps,
                   "chunks": chunks, "target_lift_m": float(info["target_lift_m"]),
                   "target": env.scene.objects[env.target].describe()}
            if language:
                rec.update(instruction=instruction, reasoning=reasoning)
            if frames is not None and out is not None:
                vpath = out / f"{split}_ep{i:03d}.mp4"
                text = episode_caption(split, seed + i, f"grasp the {rec['target']}", rec["success"])
                frames = [caption_frame(f, f"{text} | {note}" if note else text, rec["success"])
                          for f, note in zip(frames, notes)]
                write_video(vpath, frames, fps=int(config.control_hz))
                rec["video"] = str(vpath)
            records.append(rec)
            if viz is not None:
                viz.log_planner("evaluator", f"episode {i}: {'success' if rec['success'] else 'failure'} "
                                f"after {rec['steps']} steps, target lift {rec['target_lift_m']:.3f} m")
    n_succ = sum(r["success"] for r in records)
    lo, hi = wilson_interval(n_succ, episodes)
    summary = {"split": split, "episodes": episodes, "successes": n_succ, "success_rate": n_succ / episodes,
               "wilson95": [lo, hi], "seed": seed, "n_execute": n_execute,
               "elapsed_s": time.time() - t0, "records": records}
    if out is not None:
        (out / f"summary_{split}.json").write_text(json.dumps(summary, indent=2))
    return summary


def _viz_step(viz, step: int, obs: dict, chunk) -> None:
    """One step of the live view: head / wrist (BGR), the ground-truth mask and its box, the state."""
    from inference_utils.runtime.viz_rerun import mask_box  # noqa: PLC0415

    mask = obs["rgbm"][:, :, 3] > 0
    viz.log_step(step, obs["rgbm"][:, :, :3], obs["right_cam_img"], mask, mask_box(mask), obs["right_state"], chunk)


def load_policy(checkpoint: str, device: str = "cpu", temporal_ensemble: float | None = None,
                num_samples: int = 1):
    """Load the controller's chunk policy lazily (only the evaluator CLI needs torch); a DexVLA
    checkpoint gives a :class:`controller.policy.dexvla_runner.DexVLAChunkPolicy` (language, no mask)."""
    from controller.policy.chunk_runner import ChunkPolicy
    from controller.policy.dexvla_runner import DexVLAChunkPolicy, is_dexvla_checkpoint
    if is_dexvla_checkpoint(checkpoint):
        return DexVLAChunkPolicy.from_checkpoint(checkpoint, device=device, temporal_ensemble=temporal_ensemble,
                                                 num_samples=num_samples)
    return ChunkPolicy.from_checkpoint(checkpoint, device=device, temporal_ensemble=temporal_ensemble,
                                       num_samples=num_samples)


def connect_remote(address: str, token_env: str | None = None, timeout_s: float = 30.0,
                   reconnect_attempts: int = 3, temporal_ensemble: float | None = None, num_samples: int = 1):
    """A :class:`controller.policy_server.client.RemoteChunkPolicy` connected to ``HOST:PORT``."""
    from controller.policy_server.client import RemoteChunkPolicy, parse_address
    from controller.policy_server.protocol import TOKEN_ENV_VAR
    host, port = parse_address(address)
    return RemoteChunkPolicy(host, port, token_env=token_env or TOKEN_ENV_VAR, timeout_s=timeout_s,
                             reconnect_attempts=reconnect_attempts, temporal_ensemble=temporal_ensemble,
                             num_samples=num_samples)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sim.evaluate``."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    p = cli_common.ArgumentParser(prog="python -m sim.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="controller checkpoint (or --remote)")
    p.add_argument("--remote", metavar="HOST:PORT", help="use the policy server there (python -m controller.serve)")
    p.add_argument("--token-env", default=None, metavar="NAME",
                   help="environment variable with the policy server's token (default DEXGRASPVLA_POLICY_TOKEN)")
    p.add_argument("--remote-timeout", type=float, default=30.0, help="seconds to wait for one remote chunk")
    p.add_argument("--reconnect-attempts", type=int, default=3, help="reconnects to the policy server, then stop")
    p.add_argument("--split", nargs="+", default=["train"], help=f"one or more of: {', '.join(SPLITS)}, or all")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000, help="first scene seed")
    p.add_argument("--video", type=int, default=0, help="record MP4s of the first K episodes per split")
    p.add_argument("--execute", type=int, default=6, help="actions executed per predicted chunk")
    p.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=(4, 10))
    p.add_argument("--out", default="outputs/sim_eval", help="directory for videos and summaries")
    p.add_argument("--time-limit", type=float, default=None, help="episode time limit in seconds (default: SimConfig)")
    cli_common.add_device_argument(p)
    p.add_argument("--temporal-ensemble", default=str(defaults.TEMPORAL_ENSEMBLE_DECAY), metavar="DECAY|off",
                   help="blend overlapping chunks with weights exp(-DECAY * age in steps); 'off' disables")
    p.add_argument("--num-samples", type=int, default=defaults.NUM_SAMPLES,
                   help="chunks denoised per observation and averaged (1: a single sample)")
    p.add_argument("--viz", choices=("none", "rerun"), default=None,
                   help="live view: rerun streams cameras, mask, box, state and chunks (spawns a viewer, "
                        "or saves OUT/live_view.rrd without a display)")
    p.add_argument("--viz-save", default=None, metavar="PATH", help="--viz rerun: save the stream to this .rrd")
    p.add_argument("--viz-connect", default=None, metavar="HOST:PORT",
                   help="--viz rerun: stream to a running rerun viewer there")
    p.add_argument("--rolling-friction", action="store_true",
                   help="rolling and torsional friction on object contacts (condim 6, sim/mjcf.py), as the data "
                        "was collected with (sim.collect --rolling-friction); off by default")
    args = p.parse_args(argv)
    splits = list(SPLITS) if args.split == ["all"] else args.split
    try:
        for s in splits:
            check_split(s)
        config = SimConfig(n_objects=tuple(args.objects), rolling_friction=args.rolling_friction)
        if args.time_limit is not None:
            config = config.with_(time_limit_s=float(args.time_limit))
        decay = parse_decay(args.temporal_ensemble)
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
        if bool(args.checkpoint) == bool(args.remote):
            raise ValueError("give either --checkpoint or --remote HOST:PORT")
        policy = (connect_remote(args.remote, args.token_env, args.remote_timeout, args.reconnect_attempts, decay,
                                 args.num_samples) if args.remote else None)
    except (SimConfigError, ValueError, ConnectionError, RuntimeError) as exc:  # RuntimeError: server refused
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if policy is None:
        policy = load_policy(args.checkpoint, cli_common.resolve_device(args.device), decay, args.num_samples)
    viz_kind = args.viz or ("rerun" if (args.viz_save or args.viz_connect) else "none")
    viz = None
    if viz_kind != "none":
        from inference_utils.runtime.viz_rerun import make_viz  # noqa: PLC0415 - rerun only with --viz
        try:
            viz = make_viz(viz_kind, args.viz_save, args.viz_connect, args.out, app_id="dexgraspvla_sim_eval")
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"live view: rerun, {viz.mode} {viz.target or '(viewer spawned)'}", file=sys.stderr)
    results = {}
    try:
        for s in splits:
            r = run_evaluation(policy, s, args.episodes, args.seed, args.video, args.out, args.execute, config,
                               viz=viz)
            results[s] = {k: r[k] for k in ("episodes", "successes", "success_rate", "wilson95")}
            print(f"{s:20s} success {r['success_rate'] * 100:5.1f} %  "
                  f"(95 % CI {r['wilson95'][0] * 100:.1f}-{r['wilson95'][1] * 100:.1f}, n={r['episodes']})")
    finally:
        if viz is not None:
            viz.close()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    source = args.checkpoint or (f"remote {policy.url}: {policy.metadata['model_id']} "
                                 f"({policy.metadata['checkpoint_sha256']})")
    (Path(args.out) / "summary.json").write_text(json.dumps({"checkpoint": source, "splits": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
