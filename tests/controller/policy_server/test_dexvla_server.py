"""The policy server serves a DexVLA checkpoint (issue 23) over real loopback sockets: requests carry
the language, replies the reasoning next to the action chunk; the client returns both; the CLI
(``python -m controller.serve``) detects the DexVLA checkpoint; a DexGraspVLA-style policy refuses
a request with language."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.controller.policy_server.conftest import free_port, make_raw_obs

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dexvla_checkpoint(tmp_path_factory) -> str:
    from tests.controller.dexvla_helpers import make_tiny_dexvla_checkpoint

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_tiny_dexvla_checkpoint(tmp_path_factory.mktemp("dexvla_server"))
    finally:
        torch.set_num_threads(before)


def test_language_in_the_request_reasoning_in_the_reply(dexvla_checkpoint):
    from controller.policy.dexvla_runner import DexVLAChunkPolicy
    from controller.policy_server.client import RemoteChunkPolicy
    from controller.policy_server.dexvla import ServedDexVLAPolicy
    from controller.policy_server.server import PolicyServer

    obs = make_raw_obs(240, 320)
    noise = torch.randn(64, 13, generator=torch.Generator().manual_seed(3))
    local = DexVLAChunkPolicy.from_checkpoint(dexvla_checkpoint)
    want_chunk, want_reasoning = local.predict_with_reasoning(obs, "grasp the red box", noise=noise)
    assert want_reasoning  # the helper's checkpoint generates text
    served = ServedDexVLAPolicy.from_checkpoint(dexvla_checkpoint, "cpu")
    with PolicyServer(served, "127.0.0.1", 0).running_in_thread() as server:
        with RemoteChunkPolicy(port=server.port, timeout_s=60) as remote:
            assert remote.accepts_language and remote.metadata["policy_class"] == "DexVLAPolicy"
            chunk, reasoning = remote.predict_with_reasoning(obs, "grasp the red box", noise=noise)
            np.testing.assert_allclose(chunk, want_chunk, atol=1e-5)
            assert reasoning == want_reasoning and remote.last_reasoning == reasoning
            remote.set_instruction("grasp the red box")                 # the instruction of later requests
            again = remote.predict_chunk(obs, noise=noise)
            np.testing.assert_allclose(again, want_chunk, atol=1e-5)
            assert remote.last_reasoning == want_reasoning
            other = remote.predict_chunk(obs, noise=noise, language="lift the blue cylinder")
            assert other.shape == (64, 13) and isinstance(remote.last_reasoning, str)
        assert server.stats["error_replies"] == 0


class _MaskPolicy:
    """A stand-in for a DexGraspVLA ServedPolicy (takes no language)."""

    def __init__(self, shape_meta):
        self.shape_meta = shape_meta

    def info(self):
        return {"model_id": "mask", "checkpoint_sha256": None, "policy_class": "DexGraspVLAController",
                "device": "cpu", "precision": "fp32", "max_num_samples": 1, "default_num_samples": 1}

    def predict(self, obs, noise, num_samples):
        return np.zeros((64, 13), np.float32)


def test_language_to_a_policy_without_language_is_refused(dexvla_checkpoint):
    from controller.policy.dexvla_runner import DexVLAChunkPolicy
    from controller.policy_server.client import PolicyServerError, RemoteChunkPolicy
    from controller.policy_server.server import PolicyServer

    shape_meta = DexVLAChunkPolicy.from_checkpoint(dexvla_checkpoint).shape_meta
    with PolicyServer(_MaskPolicy(shape_meta), "127.0.0.1", 0).running_in_thread() as server:
        with RemoteChunkPolicy(port=server.port) as remote:
            assert not remote.accepts_language and "accepts_language" not in remote.metadata
            assert remote.predict_chunk(make_raw_obs(240, 320)).shape == (64, 13)  # unchanged without language
            with pytest.raises(PolicyServerError, match="takes no language"):
                remote.predict_chunk(make_raw_obs(240, 320), language="grasp the red box")
            with pytest.raises(PolicyServerError, match="takes no language"):
                remote.set_instruction("grasp the red box")


def test_serve_cli_detects_a_dexvla_checkpoint(dexvla_checkpoint):
    """``python -m controller.serve --checkpoint DEXVLA`` in its own process, on loopback."""
    from controller.policy_server.client import RemoteChunkPolicy, wait_for_server

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("DEXGRASPVLA_POLICY_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "controller.serve", "--checkpoint", dexvla_checkpoint,
                             "--port", str(port), "--device", "cpu"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_server("127.0.0.1", port, timeout_s=50)
        with RemoteChunkPolicy(port=port, timeout_s=30) as remote:
            assert remote.accepts_language
            chunk, reasoning = remote.predict_with_reasoning(make_raw_obs(240, 320), "grasp the red box")
            assert chunk.shape == (64, 13) and np.all(np.isfinite(chunk)) and reasoning
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
