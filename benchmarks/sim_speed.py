"""Simulator speed: physics steps/s, observation render rate and expert episodes per minute.

    python benchmarks/sim_speed.py [--episodes 3] [--rolling-friction]

``--rolling-friction`` measures the physics and render rates with ``SimConfig.rolling_friction``
(condim 6 contacts); the collection rate is then skipped (``sim.collect`` uses the default physics).

Targets on the 2-core reference machine: >= 10 k physics steps/s (10-object scene), >= 12 Hz
full observations (2 cameras, RGB + segmentation, no shadows), >= 10 collected episodes/min.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time


def main(argv=None) -> int:
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    p = cli_common.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=3, help="episodes for the collection rate")
    p.add_argument("--physics-steps", type=int, default=20000)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--rolling-friction", action="store_true", help="condim 6 object contacts (SimConfig.rolling_friction)")
    args = p.parse_args(argv)
    from sim.collect import collect
    from sim.config import SimConfig
    from sim.env import GraspEnv

    with GraspEnv(SimConfig(n_objects=(10, 10), rolling_friction=args.rolling_friction)) as env:
        obs, _ = env.reset(seed=0)
        env.command(obs["right_state"])
        env.advance(500)
        t = time.perf_counter()
        env.advance(args.physics_steps)
        sps = args.physics_steps / (time.perf_counter() - t)
        print(f"physics: {sps:,.0f} steps/s (10 objects, dt {env.config.physics_dt} s, "
              f"{sps * env.config.physics_dt:.1f}x real time)")
        env.render_cameras()
        t = time.perf_counter()
        for _ in range(args.frames):
            env._observe()
        obs_hz = args.frames / (time.perf_counter() - t)
        print(f"observation (wrist RGB + head RGB + head segmentation, 640x480, no shadows): {obs_hz:.1f} Hz")
        cams = env.cams
        t = time.perf_counter()
        for _ in range(args.frames):
            cams.rgb_and_seg(env.data, "head_cam")
            cams.rgb_and_seg(env.data, "wrist_cam")
        full_hz = args.frames / (time.perf_counter() - t)
        print(f"full render (2 cameras x RGB + segmentation): {full_hz:.1f} Hz")
        t = time.perf_counter()
        for _ in range(args.frames):
            env.step(obs["right_state"])
        print(f"env.step incl. observation: {args.frames / (time.perf_counter() - t):.1f} Hz")

    if args.rolling_friction:
        return 0
    tmp = tempfile.mkdtemp(prefix="sim_speed_")
    try:
        s = collect(f"{tmp}/bench.zarr", episodes=args.episodes, seed=0, workers=1, progress=False)
        print(f"collection (1 worker, zarr lz4): {s['episodes_per_min']:.1f} episodes/min "
              f"(mean {s['mean_steps']:.0f} steps/episode)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
