"""The simulator evaluation through the policy server equals the in-process one: same per-episode
outcomes and bit-identical executed actions on the same seeds (deployment defaults: 4 samples
averaged, temporal ensemble), with the server on 127.0.0.1."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.controller.policy_server.conftest import CHECKPOINT, requires_checkpoint

pytest.importorskip("mujoco")
pytestmark = requires_checkpoint


class Recording:
    """Wraps a chunk policy and records the actions the evaluator actually executed."""

    def __init__(self, policy):
        self.policy, self.executed, self._chunk = policy, [], None

    def reset(self):
        self.executed.append([])
        self.policy.reset()

    def predict_chunk(self, obs):
        self._chunk = self.policy.predict_chunk(obs)
        return self._chunk

    def consumed(self, n):
        self.executed[-1].extend(self._chunk[:n])
        self.policy.consumed(n)


def test_sim_evaluation_remote_equals_in_process(start_server):
    from controller.policy import defaults
    from controller.policy.chunk_runner import ChunkPolicy
    from controller.policy_server.client import RemoteChunkPolicy
    from sim.config import SimConfig
    from sim.evaluate import run_evaluation

    config = SimConfig(n_objects=(2, 3), time_limit_s=1.0)  # 20 steps: 4 chunks of which 6 actions run
    kw = {"temporal_ensemble": defaults.TEMPORAL_ENSEMBLE_DECAY, "num_samples": defaults.NUM_SAMPLES}
    local = Recording(ChunkPolicy.from_checkpoint(str(CHECKPOINT), "cpu", **kw))
    a = run_evaluation(local, "train", episodes=2, seed=4100, config=config, progress=False)
    server = start_server()
    with RemoteChunkPolicy(port=server.port, **kw) as client:
        remote = Recording(client)
        b = run_evaluation(remote, "train", episodes=2, seed=4100, config=config, progress=False)
        assert client.stats["requests"] == sum(r["chunks"] for r in b["records"])
    assert a["successes"] == b["successes"]
    keys = ("seed", "success", "steps", "chunks", "target_lift_m", "target")
    assert [{k: r[k] for k in keys} for r in a["records"]] == [{k: r[k] for k in keys} for r in b["records"]]
    assert [len(e) for e in local.executed] == [r["steps"] for r in a["records"]]
    for ep_local, ep_remote in zip(local.executed, remote.executed):
        assert np.array_equal(np.stack(ep_local), np.stack(ep_remote))


def test_sim_evaluate_cli_with_remote(start_server, tmp_path, capsys):
    from sim.evaluate import main

    server = start_server()
    code = main(["--remote", f"127.0.0.1:{server.port}", "--episodes", "1", "--time-limit", "0.3",
                 "--objects", "1", "1", "--out", str(tmp_path), "--num-samples", "1"])
    assert code == 0
    assert "train" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoint"].startswith(f"remote ws://127.0.0.1:{server.port}: controller_small_sim")
    assert main(["--episodes", "1"]) == 2  # neither --checkpoint nor --remote


def test_sim_success_benchmark_with_remote(start_server, tmp_path):
    import sys

    from tests.controller.policy_server.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import sim_success
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    server = start_server()
    out = tmp_path / "table"
    assert sim_success.main(["--remote", f"127.0.0.1:{server.port}", "--episodes", "1", "--splits", "train",
                             "--columns", "controller", "--time-limit", "0.3", "--num-samples", "1",
                             "--out", str(out)]) == 0
    report = json.loads((out / "sim_success.json").read_text())
    assert report["checkpoint"].startswith("remote ws://127.0.0.1:") and report["rows"]["train"]["controller"]["n"] == 1
