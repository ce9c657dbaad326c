"""``inference.py agent=dexvla`` (issue 23): a tiny random DexVLA checkpoint on the simulated robot,
the prompt as its instruction, no planner and no mask; reasoning per chunk in run.log,
reasoning.jsonl and the video caption; the grasp check without a planner; config refusals."""
from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dexvla_checkpoint(tmp_path_factory) -> str:
    from tests.controller.dexvla_helpers import make_tiny_dexvla_checkpoint

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures are set up before the function-scoped _one_thread
    try:
        return make_tiny_dexvla_checkpoint(tmp_path_factory.mktemp("dexvla"))
    finally:
        torch.set_num_threads(before)


def test_dexvla_agent_runs_on_the_prompt_and_logs_reasoning(run_inference, dexvla_checkpoint):
    """Two attempts of 2 chunks each (random weights: no grasp); 6 actions per chunk executed;
    every chunk's reasoning logged; no planner call; the recorded mask channel is empty; the
    video frames carry a caption band."""
    import cv2

    res = run_inference("agent=dexvla", "--prompt", "grasp the red box", "--save-deployment-data",
                        f"controller.checkpoint={dexvla_checkpoint}", "controller.seed=0",
                        "loop.max_chunks_per_attempt=2", "agent.max_attempts=2", "loop.lift_height_m=4")
    assert res.code == 0, res.log_text
    s = res.summary
    assert s["status"] == "max_attempts" and s["attempts"] == 2 and s["planner_calls"] == []
    for o in s["outcomes"]:
        assert o["status"] == "chunk_limit" and o["chunks"] == 2 and o["steps"] == 12
        assert o["instruction"] == "grasp the red box" and o["box"] is None and isinstance(o["reasoning"], str)
    entries = [json.loads(line) for line in (res.dir / "reasoning.jsonl").read_text().splitlines()]
    assert [(e["attempt"], e["chunk"]) for e in entries] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(isinstance(e["reasoning"], str) and e["reasoning"] for e in entries), entries
    assert "chunk 0 reasoning:" in res.log_text
    assert [d["reasoning"] for n, d in res.events if n == "chunk"][0] == entries[0]["reasoning"]
    with h5py.File(res.dir / "deployment" / "attempt_000.hdf5") as f:
        assert f["rgbm"].shape == (12, 240, 320, 4) and not f["rgbm"][..., 3].any()  # no mask
        assert np.all(np.isfinite(f["action"][:]))
    cap = cv2.VideoCapture(str(res.dir / "deployment" / "attempt_000.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[:2] == (240 + 24, 3 * 320)            # caption band on top
    assert frame[:24].max() > 100 and frame[:24, :, :].mean() < 60  # white text on a black band


def test_dexvla_agent_config_refusals(run_inference, dexvla_checkpoint, tiny_checkpoint):
    """--manual, the expert controller, attention maps and a DexGraspVLA checkpoint are refused
    before anything moves (exit 2)."""
    base = ["agent=dexvla", "--prompt", "grasp the red box"]
    assert run_inference(*base, "--manual", f"controller.checkpoint={dexvla_checkpoint}").code == 2
    assert run_inference(*base, "controller.type=expert").code == 2
    assert run_inference(*base, "--gen-attn-map", f"controller.checkpoint={dexvla_checkpoint}").code == 2
    res = run_inference(*base, f"controller.checkpoint={tiny_checkpoint()}")
    assert res.code == 2 and "not a DexVLA checkpoint" in res.summary["error"]
    assert run_inference("agent=dexvla", f"controller.checkpoint={dexvla_checkpoint}").code == 2  # no prompt


def _session(lifted: dict, labels=("red box", "blue cylinder")):
    objects = [SimpleNamespace(describe=lambda label=label: label) for label in labels]
    env = SimpleNamespace(scene=SimpleNamespace(objects=objects), n_objects=len(objects),
                          object_lifted=lambda i, h: lifted.get(i, 0.0) >= h)
    return SimpleNamespace(env=env)


def test_grasp_check_without_planner():
    """Success = some object lifted, and it is the one the prompt names (when it names one)."""
    from inference_utils.runtime.dexvla_agent import verify_lift

    assert verify_lift(_session({}), "grasp the red box", 0.05)[0] is False
    assert verify_lift(_session({0: 0.2}), "grasp the red box", 0.05)[:3:2] == (True, 0)
    ok, why, index = verify_lift(_session({1: 0.2}), "grasp the red box", 0.05)
    assert not ok and index == 1 and "blue cylinder" in why
    assert verify_lift(_session({1: 0.2}), "pick something up", 0.05)[0] is True   # names no object
    assert verify_lift(_session({0: 0.01}), "grasp the red box", 0.05)[0] is False  # not high enough


def test_default_agent_config_is_unchanged():
    """agent=dexgraspvla (the default) only adds agent.name; the mode and controller stay."""
    from inference_utils.runtime.config import compose_config

    cfg = compose_config([])
    assert cfg.agent.name == "dexgraspvla" and cfg.mode == "planner" and cfg.controller.num_samples == 4
    dex = compose_config(["agent=dexvla", "controller.num_samples=2"])
    assert dex.agent.name == "dexvla" and dex.mode == "language" and dex.controller.num_samples == 2


def test_dexvla_agent_through_the_policy_server(run_inference, dexvla_checkpoint):
    """controller.type=remote: the prompt travels with each request, the reasoning comes back."""
    from controller.policy_server.dexvla import ServedDexVLAPolicy
    from controller.policy_server.server import PolicyServer

    served = ServedDexVLAPolicy.from_checkpoint(dexvla_checkpoint, "cpu")
    with PolicyServer(served, "127.0.0.1", 0).running_in_thread() as server:
        res = run_inference("agent=dexvla", "--prompt", "grasp the red box", "controller.type=remote",
                            f"controller.remote.port={server.port}", "controller.seed=0",
                            "loop.max_chunks_per_attempt=2", "agent.max_attempts=1", "loop.lift_height_m=4")
        assert server.stats["requests"] == 2 and server.stats["error_replies"] == 0
    assert res.code == 0, res.log_text
    entries = [json.loads(line) for line in (res.dir / "reasoning.jsonl").read_text().splitlines()]
    assert len(entries) == 2 and all(e["reasoning"] for e in entries)
    assert res.summary["outcomes"][0]["chunks"] == 2


class _ScriptedLanguageController:
    """Stands in for a trained DexVLA: the simulator's scripted expert on the scene's target, behind
    the DexVLA controller's interface (``predict(raw_obs, instruction) -> (chunk, reasoning)``)."""

    supports_attention = False
    needs_target_index = False

    def __init__(self, env):
        from inference_utils.runtime.controllers import ExpertController

        self.env, self.expert = env, ExpertController(env, 64)

    def start_attempt(self, target_index=None):
        self.expert.start_attempt(int(self.env.sim_session.env.scene.target))

    def predict(self, raw_obs, instruction):
        assert not raw_obs["rgbm"][..., 3].any()  # no mask reaches the policy
        return self.expert.predict_chunk(raw_obs), f"scripted: {instruction}"

    def consumed(self, n):
        self.expert.consumed(n)


def test_language_loop_verifies_a_lift_places_and_completes(run_inference, monkeypatch, tmp_path):
    """The success path without a planner: lift -> the simulator's check -> placement -> completed."""
    from inference_utils.runtime import session
    from inference_utils.runtime.dexvla_agent import DexVLAAgent

    def build(cfg, log):
        from inference_utils.devices import sim_devices  # noqa: F401 - registers the 'sim' devices
        from inference_utils.runtime.environment import Environment

        env = Environment(dict(cfg.robot), dict(cfg.sim), cfg.loop.control_hz, log.logger)
        return env, DexVLAAgent(log, _ScriptedLanguageController(env))

    monkeypatch.setattr(session, "_build", build)
    res = run_inference("agent=dexvla", "--prompt", "pick something up", f"controller.checkpoint={tmp_path}")
    assert res.code == 0, res.log_text
    s = res.summary
    assert s["status"] == "completed" and s["attempts"] == 1 and s["objects_grasped"] == 1
    out = s["outcomes"][0]
    assert out["success"] and out["status"] == "verified" and out["verifications"] >= 1
    assert out["sim_target_lifted"] and "is lifted" in out["reasoning"]
    assert "grasp check (simulator): success=True" in res.log_text and "placing the object" in res.log_text
    entries = (res.dir / "reasoning.jsonl").read_text().splitlines()
    assert len(entries) == out["chunks"] and "scripted: pick something up" in entries[0]
