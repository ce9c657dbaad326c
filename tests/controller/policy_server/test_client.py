"""The remote controller when the server goes away: bounded reconnects, then a clear error that
the runtime turns into its safe stop (arm held, no further action). Real sockets, real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from controller.policy_server.client import (PolicyServerError, PolicyServerUnavailable, RemoteChunkPolicy,
                                             parse_address, wait_for_server)
from tests.controller.policy_server.conftest import CHECKPOINT, REPO, free_port, requires_checkpoint

pytestmark = requires_checkpoint


def test_killed_server_process_raises_after_bounded_reconnects(raw_obs):
    """``python -m controller.serve`` in its own process, SIGKILLed between two chunks."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "controller.serve", "--checkpoint", str(CHECKPOINT), "--port",
                             str(port), "--device", "cpu", "--log-level", "WARNING"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_server("127.0.0.1", port, timeout_s=120)
        remote = RemoteChunkPolicy(port=port, timeout_s=60, reconnect_attempts=3, reconnect_delay_s=0.05)
        assert remote.predict_chunk(raw_obs(240, 320)).shape == (64, 13)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with pytest.raises(PolicyServerUnavailable, match="3 reconnect attempt") as err:
            remote.predict_chunk(raw_obs(240, 320))
        assert err.value.attempts == 3 and remote.stats["reconnect_attempts"] == 3
        assert remote.stats["replies"] == 1 and remote.stats["connections"] == 1
        with pytest.raises(PolicyServerUnavailable):  # and stays unavailable: never an old chunk
            remote.predict_chunk(raw_obs(240, 320))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()


def test_reconnects_to_a_restarted_server_and_refuses_a_different_model(served, raw_obs):
    from controller.policy_server.server import PolicyServer, ServedPolicy

    port = free_port()
    obs = raw_obs(240, 320)
    remote = RemoteChunkPolicy(port=port, reconnect_attempts=5, reconnect_delay_s=0.05, connect=False)
    with PolicyServer(served(), "127.0.0.1", port).running_in_thread():
        first = remote.predict_chunk(obs, noise=np.zeros((64, 13), np.float32))
    with PolicyServer(served(), "127.0.0.1", port).running_in_thread():  # restarted: same model
        again = remote.predict_chunk(obs, noise=np.zeros((64, 13), np.float32))
    assert np.array_equal(first, again) and remote.stats["connections"] == 2
    assert 1 <= remote.stats["reconnect_attempts"] <= 5
    other = ServedPolicy(served().base, "another_model", "0" * 64)
    with PolicyServer(other, "127.0.0.1", port).running_in_thread():
        with pytest.raises(PolicyServerError, match="another_model") as err:
            remote.predict_chunk(obs)
        assert err.value.kind == "model_changed"
    remote.close()


def test_unreachable_server_at_start_is_reported():
    with pytest.raises(PolicyServerUnavailable, match="cannot reach the policy server"):
        RemoteChunkPolicy(port=free_port(), connect_timeout_s=2)


def test_parse_address():
    assert parse_address("gpu-box:9000") == ("gpu-box", 9000)
    assert parse_address("ws://10.0.0.2:8765/") == ("10.0.0.2", 8765)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("localhost") == ("localhost", 8765)
    for bad in ("host:0", "host:x", ":80"):
        with pytest.raises(ValueError):
            parse_address(bad)


# ---------------------------------------------------------------------------------------- runtime
def _run_inference(tmp_path, *args, on_event=None):
    """``inference.py`` in-process on the simulated robot (small scene), like the runtime tests."""
    from inference_utils.runtime.cli import main

    events = []

    def sink(name, data):
        events.append((name, data))
        if on_event is not None:
            on_event(name, data)

    base = ["--non-interactive", f"logging.root={tmp_path}", "sim.n_objects=[2,2]", "sim.seed=1",
            "sim.image_height=240", "sim.image_width=320", "controller.type=remote"]
    code = main([*base, *args], events=[sink])
    run_dir = sorted(p for p in tmp_path.iterdir() if p.is_dir())[-1]
    return code, run_dir, events


RED_SPHERE_BOX = "150,125,185,160"  # seed 1, 240x320 (tests/inference_utils/runtime)


def test_runtime_safe_stop_when_the_policy_server_dies(tmp_path, served):
    """controller.type=remote through ``inference.py``: the server stops after the second chunk;
    the next chunk fails after the configured reconnects, the run ends as a fault with the arm
    held and no further action executed."""
    from controller.policy_server.server import PolicyServer

    server = PolicyServer(served(), "127.0.0.1", 0)
    ctx = server.running_in_thread()
    ctx.__enter__()
    stopped = {}

    def on_event(name, data):
        if name == "chunk" and data["chunk"] == 2 and not stopped:
            stopped["yes"] = True
            ctx.__exit__(None, None, None)

    try:
        code, run_dir, events = _run_inference(
            tmp_path, "--manual", "--bbox", RED_SPHERE_BOX, f"controller.remote.port={server.port}",
            "controller.remote.reconnect_attempts=2", "controller.remote.reconnect_delay_s=0.05",
            "controller.num_samples=1", "controller.seed=0", on_event=on_event)
    finally:
        if not stopped:
            ctx.__exit__(None, None, None)
    assert stopped, "the run never reached its second chunk"
    summary = json.loads((run_dir / "summary.json").read_text())
    log = (run_dir / "run.log").read_text()
    assert code == 1 and summary["status"] == "fault"
    assert "PolicyServerUnavailable" in summary["error"] and "2 reconnect attempt(s) failed" in summary["error"]
    assert "arm held" in log and "opening the hand" not in log and "placing the object" not in log
    chunks = [d for n, d in events if n == "chunk"]
    assert len(chunks) == 2  # nothing executed after the server was lost
    assert summary["outcomes"][0]["steps"] == 2 * 6


def test_runtime_reports_an_unreachable_server_before_moving(tmp_path):
    code, run_dir, _ = _run_inference(tmp_path, "--manual", "--bbox", RED_SPHERE_BOX,
                                      f"controller.remote.port={free_port()}", "controller.remote.connect_timeout_s=2")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert code == 2 and summary["status"] == "config_error" and "cannot reach the policy server" in summary["error"]
    assert "moving arm" not in (run_dir / "run.log").read_text()


@pytest.mark.parametrize("override, field", [
    ("controller.remote.port=0", "controller.remote.port"),
    ("controller.remote.host=''", "controller.remote.host"),
    ("controller.remote.token_env=MY-TOKEN", "controller.remote.token_env"),
    ("controller.remote.timeout_s=0", "controller.remote.timeout_s"),
    ("controller.remote.reconnect_attempts=-1", "controller.remote.reconnect_attempts"),
])
def test_remote_config_is_validated(override, field):
    from inference_utils.runtime.config import ConfigError, compose_config, validate_config

    validate_config(compose_config(["controller.type=remote", "mode=manual"]))  # the shipped defaults are valid
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(compose_config(["controller.type=remote", "mode=manual", override]))


def test_runtime_remote_controller_equals_the_in_process_one(start_server, raw_obs):
    """Same ``controller.seed``, samples and ensemble: the runtime's remote controller returns the
    in-process controller's chunks exactly."""
    from inference_utils.runtime.controllers import PolicyController, RemoteChunkController, build_controller

    server = start_server()
    local = PolicyController(str(CHECKPOINT), "cpu", seed=3, temporal_ensemble=0.1, num_samples=2)
    remote = build_controller({"type": "remote", "remote": {"port": server.port}, "seed": 3,
                               "temporal_ensemble": 0.1, "num_samples": 2})
    assert isinstance(remote, RemoteChunkController) and remote.horizon == local.horizon == 64
    assert not remote.supports_attention
    for c in (local, remote):
        c.start_attempt(None)
    for i in range(2):
        obs = raw_obs(240, 320, seed=i)
        assert np.array_equal(local.predict_chunk(obs), remote.predict_chunk(obs)), i
        local.consumed(6)
        remote.consumed(6)
    remote.close()
