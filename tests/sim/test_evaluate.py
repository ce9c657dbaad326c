"""Closed-loop evaluation with a replay policy (a stand-in for the trained controller).

The policy replays the scripted expert's recorded actions through the evaluator's chunked loop
(first 6 of every 64-step chunk executed, then a new prediction), so the test exercises the loop,
statistics and outputs without a neural network.
"""
from __future__ import annotations

import json

from sim.evaluate import run_evaluation, wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(9, 10)
    assert 0.59 < lo < 0.6 and 0.98 < hi < 0.99
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_matches_closed_form():
    """The scipy-backed interval equals the textbook Wilson formula it replaced."""
    import math
    z = 1.959964
    for n in (1, 7, 10, 50, 200):
        for k in range(n + 1):
            p = k / n
            den = 1 + z * z / n
            centre = (p + z * z / (2 * n)) / den
            half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
            lo, hi = wilson_interval(k, n)
            assert abs(lo - max(0.0, centre - half)) < 1e-12 and abs(hi - min(1.0, centre + half)) < 1e-12


def test_evaluation_with_replay_policy(tmp_path, expert_recorder, replay_policy_factory, config_factory):
    seed = 2000
    actions, ok = expert_recorder(seed, "train")
    assert ok
    policy = replay_policy_factory([actions], n_execute=6)
    summary = run_evaluation(policy, "train", episodes=1, seed=seed, video_k=1, out_dir=tmp_path,
                             config=config_factory(), progress=False)
    assert summary["successes"] == 1 and summary["success_rate"] == 1.0
    rec = summary["records"][0]
    assert rec["chunks"] == -(-rec["steps"] // 6)
    video = tmp_path / "train_ep000.mp4"
    assert video.exists() and video.stat().st_size > 1000
    saved = json.loads((tmp_path / "summary_train.json").read_text())
    assert saved["wilson95"][0] > 0


def test_evaluator_reports_executed_actions_and_resets(config_factory):
    """The evaluator calls reset() per episode and consumed(n) with the actions it executed, the
    protocol the temporal ensemble relies on (a constant 'hold still' policy, no network)."""
    import numpy as np

    class Recorder:
        def __init__(self):
            self.calls = []

        def reset(self):
            self.calls.append("reset")

        def predict_chunk(self, obs):
            return np.tile(np.asarray(obs["right_state"], np.float64), (64, 1))

        def consumed(self, n):
            self.calls.append(n)

    policy = Recorder()
    summary = run_evaluation(policy, "train", episodes=2, seed=2100, config=config_factory(time_limit_s=1.0),
                             progress=False)
    steps = [r["steps"] for r in summary["records"]]
    first = policy.calls.index("reset", 1)
    assert policy.calls[0] == "reset" and sum(policy.calls[1:first]) == steps[0]
    assert sum(policy.calls[first + 1:]) == steps[1]
    assert all(0 < n <= 6 for n in policy.calls if n != "reset")
