"""Roll a policy out in the MuJoCo simulator during training (``task=sim_grasp``).

The workspace calls :meth:`SimGraspRunner.run` every ``training.rollout_every`` epochs with the
unwrapped policy; the runner wraps it in a :class:`ChunkPolicy` (raw observation in, 64-step chunk
out; the first ``n_execute`` actions run before re-predicting, as on the robot) and returns
``{'rollout/<split>/success_rate': ...}`` metrics. Videos and JSON summaries land in
``<run dir>/rollouts/epoch_XXXX/``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, Mapping, Optional, Sequence

import torch


class SimGraspRunner:
    """Evaluate on seeded simulator scenes.

    Args:
        output_dir: the run directory (set by the workspace).
        splits: simulator splits to evaluate (``train``, ``unseen_objects``, ...).
        episodes: episodes per split.
        seed: first scene seed (held-out seeds: the collector uses low seeds for training data).
        video_k: MP4s of the first k episodes per split.
        n_execute: actions executed per predicted chunk.
        sim: optional :class:`sim.SimConfig` field overrides (e.g. ``{time_limit_s: 10}``).
    """

    def __init__(self, output_dir: str, splits: Sequence[str] = ("train",), episodes: int = 10,
                 seed: int = 900000, video_k: int = 1, n_execute: int = 6, sim: Optional[Mapping] = None) -> None:
        self.sim_overrides = {k: tuple(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v
                              for k, v in dict(sim or {}).items()}
        self.output_dir = output_dir
        self.splits = list(splits)
        self.episodes = int(episodes)
        self.seed = int(seed)
        self.video_k = int(video_k)
        self.n_execute = int(n_execute)
        self.calls = 0

    def run(self, policy: torch.nn.Module) -> Dict[str, float]:
        from controller.policy.chunk_runner import ChunkPolicy
        from sim import SimConfig
        from sim.evaluate import run_evaluation

        runner = ChunkPolicy(policy, device=next(policy.parameters()).device)
        out_dir = os.path.join(self.output_dir, "rollouts", f"call_{self.calls:04d}")
        self.calls += 1
        metrics: Dict[str, float] = {}
        # a progress bar (one step per episode) on a terminal; in a log file a line before and after
        tty = _is_tty(sys.stderr)
        for split in self.splits:
            print(f"rollout: {self.episodes} episode(s) on split '{split}' (seeds {self.seed}.."
                  f"{self.seed + self.episodes - 1}) -> {out_dir}", flush=True)
            t0 = time.monotonic()
            summary = run_evaluation(runner, split=split, episodes=self.episodes, seed=self.seed,
                                     video_k=self.video_k, out_dir=out_dir, n_execute=self.n_execute,
                                     config=SimConfig(**self.sim_overrides), progress=tty)
            rate = float(summary["success_rate"])
            metrics[f"rollout/{split}/success_rate"] = rate
            print(f"rollout: split '{split}' success {summary.get('successes', round(rate * self.episodes))}/{self.episodes} "
                  f"({100 * rate:.0f}%) in {time.monotonic() - t0:.0f} s", flush=True)
        policy.train()
        return metrics


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
