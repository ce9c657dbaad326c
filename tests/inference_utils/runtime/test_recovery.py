"""Failure recovery (issue 24 point 2): the state machine on scripted observations, and the loop in
the simulator with the first grasp forced to miss (test hook: a wrapper controller).

The forced miss: :class:`MissFirstExpert` is the simulator's scripted expert behind the chunk
protocol, but in the first attempt its plan is shifted 10 cm up (the fingers close above the
object) and it never lifts (it hovers with the closed hand: the failure of issue 24). It is
injected by replacing ``controllers.build_controller`` for the run; the environment's success
logic is untouched.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from inference_utils.runtime.recovery import GraspMonitor, RecoveryConfig, finger_closure

OPEN, CLOSED, HELD = np.ones(6), np.zeros(6), np.full(6, 0.8)


def _state(hand: np.ndarray, arm: float = 0.0) -> np.ndarray:
    return np.concatenate([np.full(7, arm), hand])


def _monitor(**kw) -> GraspMonitor:
    return GraspMonitor(RecoveryConfig(**kw), lift_height_m=0.25, log=logging.getLogger("test"))


def _path(m: GraspMonitor) -> list[str]:
    return [t["to"] for t in m.transitions]


def test_empty_hand_detected_after_empty_chunks():
    m = _monitor(empty_chunks=3)
    m.start_attempt(0)
    for k in range(5):  # approaching, hand open and moving
        assert m.update(0.2, _state(OPEN, 0.01 * k), OPEN) is None
    assert m.update(0.1, _state(OPEN), CLOSED) is None          # commanded closed: grasp phase
    assert m.state == "grasp"
    assert m.update(0.1, _state(CLOSED, 0.1), CLOSED) is None   # 1st empty chunk
    assert m.update(0.1, _state(CLOSED, 0.2), CLOSED) is None   # 2nd
    assert m.update(0.1, _state(CLOSED, 0.3), CLOSED) == "empty_hand"
    assert m.state == "failed" and m.cause == "empty_hand"
    assert _path(m) == ["approach", "grasp", "failed"]
    assert m.update(0.1, _state(CLOSED), CLOSED) is None        # no further detection once failed


def test_held_object_is_not_empty_then_lift_wins():
    m = _monitor(empty_chunks=2, no_lift_chunks=50)
    m.start_attempt(0)
    for k in range(10):
        assert m.update(0.1 + 0.005 * k, _state(HELD, 0.01 * k), CLOSED) is None
    assert m.update(0.3, _state(HELD, 0.2), CLOSED) is None
    m.to("succeeded", "verified")
    m.to("idle")
    assert _path(m) == ["approach", "grasp", "lifted", "succeeded", "idle"]


def test_no_lift_and_stall():
    m = _monitor(no_lift_chunks=4, stall_chunks=100)
    m.start_attempt(1)
    causes = [m.update(0.1, _state(HELD, 0.01 * k), CLOSED) for k in range(4)]
    assert causes == [None, None, None, "no_lift"]
    m = _monitor(stall_chunks=3, stall_tol=0.01)
    m.start_attempt(0)
    causes = [m.update(0.2, _state(OPEN, 0.001 * k), OPEN) for k in range(4)]
    assert causes == [None, None, None, "stalled"] and m.state == "failed"


def test_stall_high_before_any_descent_is_detected():
    """A policy frozen above the lift height before descending (not armed) is a stall, not a lift."""
    m = _monitor(stall_chunks=3)
    m.start_attempt(0)
    causes = [m.update(0.35, _state(OPEN), OPEN, armed=False) for _ in range(4)]
    assert causes == [None, None, None, "stalled"] and _path(m) == ["approach", "failed"]


def test_full_recovery_path_and_illegal_transition():
    m = _monitor(empty_chunks=1)
    m.start_attempt(0)
    assert m.update(0.1, _state(CLOSED), CLOSED) == "empty_hand"
    for state in ("verify", "release", "backoff", "replan"):
        m.to(state)
    m.start_attempt(1)
    with pytest.raises(RuntimeError, match="not allowed"):
        m.to("backoff")
    assert _path(m) == ["approach", "grasp", "failed", "verify", "release", "backoff", "replan", "approach"]
    assert [t["attempt"] for t in m.transitions] == [0] * 7 + [1]


def test_config_validation():
    assert RecoveryConfig.from_mapping(None) == RecoveryConfig()
    with pytest.raises(ValueError, match="unknown"):
        RecoveryConfig.from_mapping({"bogus": 1})
    with pytest.raises(ValueError, match="empty_closure"):
        RecoveryConfig.from_mapping({"empty_closure": 1.5})
    with pytest.raises(ValueError, match="no_lift_chunks"):
        RecoveryConfig.from_mapping({"no_lift_chunks": 0})
    assert finger_closure(CLOSED) == 1.0 and finger_closure(OPEN) == 0.0


class MissFirstExpert:
    """Test hook: the scripted expert, but attempt 0 closes 10 cm above its target and never lifts."""

    def __new__(cls, environment, horizon=64):
        from inference_utils.runtime.controllers import ExpertController

        class _Miss(ExpertController):
            attempts = 0

            def start_attempt(self, target_index=None):
                super().start_attempt(target_index)
                self.miss = _Miss.attempts == 0
                _Miss.attempts += 1
                if self.miss:
                    self._expert.plan(self.session.env, grasp_offset=(0.0, 0.0, 0.10))

            def predict_chunk(self, raw_obs, return_attention=False):
                if not self.miss:
                    return super().predict_chunk(raw_obs, return_attention)
                ex = self._expert
                while len(self._actions) < self._cursor + self.horizon:
                    hover = ex.phase_at(ex._t) in ("lift", "hold") and self._actions
                    self._actions.append(self._actions[-1] if hover else ex.next_action())
                return np.stack(self._actions[self._cursor:self._cursor + self.horizon])

        return _Miss(environment, horizon)


def test_first_grasp_misses_then_recovers_in_sim(run_inference, planner_url, monkeypatch):
    """The first grasp closes on nothing and hovers -> detected (empty hand), verified by the planner
    (refused), hand opened, scripted back-off, re-plan with the failed object listed (the planner
    turns to the other object); the second attempt is verified."""
    from inference_utils.runtime import controllers

    monkeypatch.setattr(controllers, "build_controller", lambda cfg, env=None: MissFirstExpert(env))
    res = run_inference("--prompt", "clear the table", "controller.type=expert", "loop.max_attempts=2",
                        f"planner.base_url={planner_url}")
    assert res.code == 0, res.log_text
    s = res.summary
    assert s["attempts"] == 2 and s["status"] in ("max_attempts", "completed")
    first, second = s["outcomes"]
    assert first["status"] == "grasp_failed" and first["failure_cause"] == "empty_hand" and not first["success"]
    assert not first["sim_target_lifted"]
    assert [t["to"] for t in first["recovery"]] == ["approach", "grasp", "failed", "verify", "release", "backoff"]
    assert second["success"] and second["status"] == "verified" and second["sim_target_lifted"]
    gave_up = ["gave_up"] if s["status"] == "max_attempts" else []  # 2 objects, 2 attempts: one is left
    assert [t["to"] for t in second["recovery"]] == ["replan", "approach", "grasp", "lifted", "succeeded", "idle",
                                                     *gave_up]
    # the miss was caught long before the attempt's time limit (30 s simulated)
    assert first["duration_s"] < 15.0
    # planner calls: verification after the failure, a completion check, then a new propose + box
    calls = s["planner_calls"]
    assert calls[:5] == ["check_completion", "propose_instruction", "predict_bbox", "verify_grasp",
                         "check_completion"]
    assert calls[5:7] == ["propose_instruction", "predict_bbox"]
    text = res.log_text
    order = [text.index(f"-> {state}") for state in ("failed", "verify", "release", "backoff", "replan")]
    assert order == sorted(order)
    assert "grasp failed (empty_hand)" in text
    events = [d["to"] for n, d in res.events if n == "recovery"]
    assert events[:7] == ["approach", "grasp", "failed", "verify", "release", "backoff", "replan"]
    assert s["objects_asked"] == 2
    # the re-plan was told which object failed and turned to the other one
    assert "asking the planner to avoid" in text
    assert second["sim_target_index"] != first["sim_target_index"]
