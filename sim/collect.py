"""Collect scripted-expert demonstrations into a zarr store in the controller's data contract.

Usage::

    python -m sim.collect --out data/sim_grasp.zarr --episodes 100 --split train --seed 0 [--workers 2]

Episode ``i`` of a run uses scene seed ``seed + i``; failed episodes are skipped (``--keep-failed``
keeps them) and further seeds are tried until ``--episodes`` successes are stored (at most
``2 * episodes + 10`` attempts). Existing stores are appended to.

Each episode is stored with a language instruction naming the target by colour and shape
(``"grasp the red box"``) and one sub-step reasoning string per step from the expert's phase
(``"locate the red box"``, ``"move above the red box"``, ``"lower the hand to the red box"``,
``"close the hand"``, ``"lift the red box"``, ``"hold the red box up"``).

Ctrl-C, ``kill -INT`` or ``kill -TERM`` (also when SIGINT was inherited as ignored, as by
background jobs) stops after the episodes already simulated are written: the store stays
consistent and its provenance records the run as interrupted (exit code 130).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from controller.dataset.errors import DatasetError
from controller.dataset.writer import ZarrEpisodeWriter
from inference_utils.stop_signals import install_stop_handlers, restore_handlers
from sim.config import SPLITS, TABLE_APPEARANCES, SimConfig, SimConfigError, check_split

_WORKER_ENV = None


def _episode(env, seed: int, split: str, action_noise: float = 0.0, target: str = "scene",
             recovery: bool = False) -> dict:
    from sim.expert import run_expert_episode
    return run_expert_episode(env, seed, split, record=True, action_noise=action_noise, target=target,
                              recovery=recovery)


def _worker_init(config: SimConfig) -> None:
    global _WORKER_ENV
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    from sim.env import GraspEnv
    _WORKER_ENV = GraspEnv(config)


def _worker_run(args: tuple[int, str, float, str, bool]) -> dict:
    return _episode(_WORKER_ENV, *args)


def open_store(out: str, image_hw: tuple[int, int], zarr_format: int = 2) -> ZarrEpisodeWriter:
    """Open (or create) the output store with the controller's crash-safe writer, checking first
    that the location is writable and that an existing store holds frames of ``image_hw``."""
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"--out {path}: cannot create parent directory: {exc}") from exc
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DatasetError(f"--out {path}: location is not writable")
    writer = ZarrEpisodeWriter(path, zarr_format=zarr_format)
    if "rgbm" in writer.data:
        tail = tuple(writer.data["rgbm"].shape[1:3])
        if tail != tuple(image_hw):
            raise DatasetError(f"--out {path}: data/rgbm has frame shape {tail}, expected {tuple(image_hw)} "
                               f"(the simulator's camera size)")
    return writer


#: Sub-step reasoning of a recorded step by the expert's phase (``{obj}``: the target's label, e.g.
#: ``"red box"``); the first step of an episode is ``locate`` (the plan is made from the scene there).
REASONING = {"locate": "locate the {obj}", "approach": "move above the {obj}",
             "descend": "lower the hand to the {obj}", "close": "close the hand", "lift": "lift the {obj}",
             "hold": "hold the {obj} up"}


def instruction(target_label: str) -> str:
    """The episode's language instruction, naming the target by colour and shape."""
    return f"grasp the {target_label}"


def step_reasoning(phases: list[str], target_label: str) -> list[str]:
    """One reasoning string per recorded step from the expert's phases (see :data:`REASONING`)."""
    names = ["locate"] + list(phases[1:]) if phases else []
    return [REASONING[p].format(obj=target_label) for p in names]


def _as_episode(frames: dict) -> dict:
    """Recorded per-step lists -> the contract's arrays (uint8 images, float32 state/action)."""
    return {k: np.asarray(frames[k], dtype=np.uint8 if k in ("right_cam_img", "rgbm") else np.float32)
            for k in ("right_cam_img", "rgbm", "right_state", "action")}


def collect(out: str, episodes: int, split: str = "train", seed: int = 0, workers: int = 1,
            n_objects: tuple[int, int] = (4, 10), clutter: str = "normal", keep_failed: bool = False,
            zarr_format: int = 2, progress: bool = True, action_noise: float = 0.0,
            target: str = "scene", table: str = "presets", recovery: bool = False,
            rolling_friction: bool = False) -> dict:
    """Collect ``episodes`` expert episodes into ``out``; returns a summary dict.

    ``action_noise`` > 0 perturbs the executed arm targets (recorded actions stay clean; see
    :class:`sim.expert.ArmPerturbation`) so the data shows recoveries from off-plan states.
    ``target="random"`` grasps a uniformly drawn object per scene instead of the designated one,
    ``target="planner"`` the offline planner's first pick (often near the rim or next to others).
    ``table="procedural"`` draws a random table per scene instead of the training presets
    (``SimConfig.table_appearance``; held-out table colours are excluded). ``recovery`` records
    grasps that start after a staged, unrecorded miss (:mod:`sim.recovery`); misses that caught
    or knocked away the target, or left it rolling, are skipped (counted in ``skipped``), so more
    scene seeds are tried (at most ``6 * episodes + 10``). ``rolling_friction``: the contacts of
    ``SimConfig.rolling_friction`` (condim 6), for data the evaluation will also run with it."""
    from sim.expert import TARGET_CHOICES
    check_split(split)
    if episodes < 1:
        raise SimConfigError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise SimConfigError(f"workers must be >= 1, got {workers}")
    if seed < 0:
        raise SimConfigError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= action_noise <= 0.2:
        raise SimConfigError(f"action_noise must be in [0, 0.2] (normalised joint units), got {action_noise}")
    if target not in TARGET_CHOICES:
        raise SimConfigError(f"target must be one of {', '.join(TARGET_CHOICES)}, got {target!r}")
    config = SimConfig(n_objects=tuple(n_objects), clutter=clutter, split=split, table_appearance=table,
                       rolling_friction=bool(rolling_friction))
    writer = open_store(out, (config.image_height, config.image_width), zarr_format)
    max_attempts = (6 if recovery else 2) * episodes + 10
    jobs = [(seed + i, split, float(action_noise), target, bool(recovery)) for i in range(max_attempts)]
    stored, failed, skipped, seeds_used, lengths = 0, [], [], [], []
    t0 = time.time()
    bar = tqdm(total=episodes, desc=f"collect {split}", unit="ep", disable=not progress)
    # compression + writing of episode k overlaps the simulation of episode k+1 (one in flight)
    io_pool = ThreadPoolExecutor(max_workers=1)
    pending = []

    def consume(result: dict) -> bool:
        nonlocal stored
        if "skipped" in result:  # a staged miss unfit for a recovery demonstration: nothing to store
            skipped.append(result["seed"])
            bar.set_postfix(failed=len(failed), skipped=len(skipped))
            return False
        if result["success"] or keep_failed:
            if pending:
                pending.pop().result()
            label = result["target_label"]
            pending.append(io_pool.submit(writer.add_episode, _as_episode(result.pop("frames")),
                                          language=instruction(label),
                                          reasoning=step_reasoning(result.pop("phases"), label)))
            stored += 1
            seeds_used.append(result["seed"])
            lengths.append(result["steps"])
            bar.update(1)
        if not result["success"]:
            failed.append(result["seed"])
        bar.set_postfix(failed=len(failed), skipped=len(skipped), steps=result["steps"])
        return stored >= episodes

    interrupted = False
    try:
        if workers == 1:
            from sim.env import GraspEnv
            with GraspEnv(config) as env:
                for job in jobs:
                    if consume(_episode(env, *job)):
                        break
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(config,)) as pool:
                for result in pool.imap(_worker_run, jobs):
                    if consume(result):
                        break
                pool.terminate()
    except KeyboardInterrupt:
        interrupted = True  # episodes already handed to the writer are still written below
    for fut in pending:
        fut.result()
    io_pool.shutdown()
    bar.close()
    elapsed = time.time() - t0
    summary = {"out": str(out), "split": split, "stored": stored, "failed_seeds": failed, "skipped_seeds": skipped,
               "seeds": seeds_used, "mean_steps": float(sum(lengths) / max(len(lengths), 1)),
               "total_episodes_in_store": writer.n_episodes, "total_frames_in_store": writer.n_steps,
               "elapsed_s": elapsed, "episodes_per_min": 60.0 * (stored + len(failed)) / max(elapsed, 1e-9),
               "recovery": bool(recovery), "rolling_friction": bool(rolling_friction),
               "n_objects": list(n_objects), "clutter": clutter, "keep_failed": keep_failed,
               "action_noise": float(action_noise), "target": target, "table": table,
               "interrupted": interrupted}
    history = list(writer.root.attrs.get("sim_collect", []))  # provenance of every collection run
    history.append({k: summary[k] for k in ("split", "stored", "seeds", "failed_seeds", "skipped_seeds", "n_objects",
                                            "clutter", "action_noise", "target", "table", "recovery",
                                            "rolling_friction", "interrupted")})
    writer.root.attrs["sim_collect"] = history
    if stored < episodes and not interrupted:
        print(f"warning: only {stored}/{episodes} successful episodes after {max_attempts} attempts",
              file=sys.stderr)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m sim.collect``."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    p = cli_common.ArgumentParser(prog="python -m sim.collect", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output zarr store (appended to if it exists)")
    p.add_argument("--episodes", type=int, required=True, help="successful episodes to store")
    p.add_argument("--split", default="train", help=f"one of: {', '.join(SPLITS)}")
    p.add_argument("--seed", type=int, default=0, help="first scene seed")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=(4, 10),
                   help="objects per scene (inclusive range)")
    p.add_argument("--clutter", default="normal", help="sparse | normal | dense")
    p.add_argument("--keep-failed", action="store_true", help="also store failed episodes")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=2, help="format of a new store")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="std of correlated noise on the executed arm targets during the approach "
                        "(normalised joint units, e.g. 0.01); recorded actions stay the expert's")
    p.add_argument("--target", default="scene", choices=("scene", "random", "planner"),
                   help="object to grasp: the scene's designated target (placed clear of the rim and of "
                        "other objects), one drawn uniformly per scene, or the offline planner's first "
                        "pick (rightmost object not hemmed in)")
    p.add_argument("--table", default="presets", choices=TABLE_APPEARANCES,
                   help="table appearance: the split's presets, or a procedural table per scene (random "
                        "colour, texture and contrast, kept clear of the held-out tables' colours)")
    p.add_argument("--rolling-friction", action="store_true", help="rolling and torsional friction on object contacts (MuJoCo condim 6, see sim/mjcf.py); off by default: the shipped controller was trained and measured without it")
    p.add_argument("--recovery", action="store_true",
                   help="recovery demonstrations: the expert first misses the target on purpose (not recorded), "
                        "then grasps it from the raised, closed hand (see sim/recovery.py)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    previous = install_stop_handlers()
    try:
        check_split(args.split)
        s = collect(args.out, args.episodes, args.split, args.seed, args.workers, tuple(args.objects),
                    args.clutter, args.keep_failed, args.zarr_format, action_noise=args.action_noise,
                    target=args.target, table=args.table, recovery=args.recovery,
                    rolling_friction=args.rolling_friction)
    except (SimConfigError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        restore_handlers(previous)
    if s["interrupted"]:
        print(f"interrupted: stored {s['stored']} episodes before the stop; store now has "
              f"{s['total_episodes_in_store']} episodes / {s['total_frames_in_store']} frames", file=sys.stderr)
        return 130
    skipped = f", {len(s['skipped_seeds'])} staged misses unusable" if s["recovery"] else ""
    print(f"stored {s['stored']} episodes ({len(s['failed_seeds'])} failed{skipped}) in {s['elapsed_s']:.1f} s "
          f"({s['episodes_per_min']:.1f} episodes/min, mean {s['mean_steps']:.0f} steps); "
          f"store now has {s['total_episodes_in_store']} episodes / {s['total_frames_in_store']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
