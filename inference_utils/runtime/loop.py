"""The grasping loop (DESIGN.md section 4).

Planner mode::

    completion check -> [propose -> box -> segment -> track + controller chunks (execute the first
    ``execute_actions_per_chunk`` actions of each chunk, then re-predict) -> grasp verification once
    the hand rises above ``lift_height_m`` (``max_failed_verifications`` failures end the attempt)
    -> place and return home (success) or open and return home (failure) -> completion check]

Failure recovery (planner mode, ``loop.recovery``, :mod:`inference_utils.runtime.recovery`): a grasp
that fails or stalls below the lift height ends the attempt early; the planner verifies, the hand
opens, a scripted back-off (drivers' send path) returns to a safe pose, and the loop re-plans until
``loop.max_attempts``. Long prompts repeat attempts until the completion check reports nothing left.

Manual mode: the box comes from the operator (``--bbox`` or a window); Enter, the time limit or the
chunk limit ends an attempt; no planner is involved.

Every control step reads the cameras and joints, updates the tracked mask, records the step
(``--save-deployment-data``), sends one action and ticks the clock (the simulator steps, the real
robot sleeps to the control rate). Slow work (planner requests, controller inference) runs via
``Environment.call`` so that the device stream stays serviced on the real robot.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from planner.types import PlannerError

from inference_utils.runtime.agent import Agent
from inference_utils.runtime.environment import Environment
from inference_utils.runtime.episode_log import EpisodeLog
from inference_utils.runtime.failed_targets import FailedTargets
from inference_utils.runtime.recovery import GraspMonitor, RecoveryConfig, back_off

EventSink = Callable[[str, dict], None]


@dataclasses.dataclass
class AttemptOutcome:
    """What happened in one grasp attempt (one entry of ``summary.json``)."""

    index: int
    instruction: str
    target: Optional[str]
    box: Optional[list]
    success: bool = False
    #: verified | verification_failed | timeout | chunk_limit | operator_ended | no_mask | planner_error
    status: str = "running"
    reasoning: str = ""
    duration_s: float = 0.0
    chunks: int = 0
    steps: int = 0
    verifications: int = 0
    sim_target_index: Optional[int] = None
    sim_target_lifted: Optional[bool] = None
    #: recovery: the detector that ended the attempt (empty_hand | no_lift | stalled) or None
    failure_cause: Optional[str] = None
    #: recovery: the state-machine transitions of this attempt, in order
    recovery: list = dataclasses.field(default_factory=list)
    #: simulator only: ground truth for failure causes (sim.failure_causes), never used by the loop
    sim_truth: Optional[dict] = None


class GraspLoop:
    """Runs attempts with an :class:`Environment` and an :class:`Agent`.

    Args:
        cfg: the full inference config (uses ``loop``, ``mode``, ``gen_attn_map``).
        env: connected environment.
        agent: the agent (planner may be None in manual mode).
        log: the run's log.
        recorder: a :class:`DeploymentRecorder` or None.
        enter: an :class:`EnterWatcher` (manual mode) or None.
        events: callbacks ``(name, data)`` notified of loop events (monitoring, tests).
    """

    def __init__(self, cfg: Mapping[str, Any], env: Environment, agent: Agent, log: EpisodeLog,
                 recorder: Any = None, enter: Any = None, events: Sequence[EventSink] = ()) -> None:
        self.cfg, self.loop_cfg = cfg, cfg["loop"]
        self.env, self.agent, self.log, self.recorder, self.enter = env, agent, log, recorder, enter
        self.events = list(events)
        self.outcomes: list[AttemptOutcome] = []
        self._planner_errors = 0
        self.failed = FailedTargets()  # objects of failed attempts, listed to the planner's propose
        self._viz_step = 0  # live view: control steps of the whole run
        self.objects_asked: Optional[int] = None      # first completion check: objects remaining
        self.objects_remaining: Optional[int] = None  # last completion check
        self.monitor = None
        rcfg = RecoveryConfig.from_mapping(self.loop_cfg.get("recovery"))
        if rcfg.enabled and cfg.get("mode", "planner") == "planner":
            if rcfg.safe_pose not in env.poses:
                raise ValueError(f"loop.recovery.safe_pose: no pose robot.poses.{rcfg.safe_pose}")
            self.monitor = GraspMonitor(rcfg, float(self.loop_cfg["lift_height_m"]), log.logger,
                                        self._on_transition)
        self._current: Optional[AttemptOutcome] = None
        self.sim_initial: Optional[dict] = None  # simulator ground truth at the start / end of run_planner
        self.sim_final: Optional[dict] = None

    def _on_transition(self, record: dict) -> None:
        if self._current is not None:
            self._current.recovery.append(record)
        self.emit("recovery", **record)

    def emit(self, name: str, **data: Any) -> None:
        """Notify the event sinks."""
        for sink in self.events:
            sink(name, data)

    # ------------------------------------------------------------------ planner mode
    def run_planner(self, prompt: str) -> str:
        """Carry out ``prompt``; returns the run status (``completed`` or ``max_attempts``)."""
        info = self.log.logger.info
        info("user prompt: %r", prompt)
        initial = self.env.observe().head_bgr                      # (H, W, 3) BGR
        self.log.save_image("initial_head", initial)
        done = self.env.call(lambda: self.agent.check_completion(prompt, initial, initial), "planner")
        self.objects_asked = self.objects_remaining = _count(done)
        self.sim_initial = _sim_objects(self.env)
        while not done.done:
            if len(self.outcomes) >= int(self.loop_cfg["max_attempts"]):
                self.sim_final = _sim_objects(self.env)
                self.log.logger.warning("stopping after %d attempts (loop.max_attempts)", len(self.outcomes))
                if self.monitor is not None and self.monitor.state in ("replan", "idle", "backoff"):
                    self.monitor.to("gave_up", f"loop.max_attempts={self.loop_cfg['max_attempts']} reached")
                return "max_attempts"
            index = len(self.outcomes)
            head = self.env.observe().head_bgr
            self.log.save_image(f"attempt{index:02d}_head", head)
            try:
                avoid = self.failed.as_list() if self.loop_cfg.get("avoid_failed_targets", True) else []
                instruction = self.env.call(lambda: self.agent.propose(prompt, initial, head, avoid), "planner")
                box = self.env.call(lambda: self.agent.locate(instruction.instruction, head), "planner")
                self._planner_errors = 0
            except PlannerError as exc:
                self._planner_error(index, exc)
            else:
                outcome = self.attempt(index, instruction.instruction, box.label or instruction.target,
                                       box.bbox.as_list(), head, verify=True)
                self.finish_attempt(outcome.success)
                if not outcome.success:
                    self.failed.record(box.label or instruction.target, box.bbox)
            current = self.env.observe().head_bgr
            done = self.env.call(lambda: self.agent.check_completion(prompt, initial, current), "planner")
            self.objects_remaining = _count(done)
        self.sim_final = _sim_objects(self.env)
        self.log.save_image("final_head", self.env.observe().head_bgr)
        info("prompt %r completed: %s", prompt, done.reasoning)
        return "completed"

    def _planner_error(self, index: int, exc: PlannerError) -> None:
        self._planner_errors += 1
        self.log.logger.error("planner failed in attempt %d: %s", index, exc)
        self.outcomes.append(AttemptOutcome(index, "", None, None, status="planner_error", reasoning=str(exc)))
        if self._planner_errors >= int(self.loop_cfg["max_planner_errors"]):
            raise RuntimeError(f"the planner failed {self._planner_errors} times in a row; last error: {exc}")

    # ------------------------------------------------------------------ manual mode
    def run_manual(self, get_box: Callable[[np.ndarray], Optional[Sequence[float]]],
                   next_attempt: Callable[[int], bool]) -> str:
        """Attempts with operator boxes while ``next_attempt(index)`` is true; returns ``manual_done``."""
        index = 0
        while next_attempt(index):
            head = self.env.observe().head_bgr
            self.log.save_image(f"attempt{index:02d}_head", head)
            box = get_box(head)
            if box is None:
                self.log.logger.warning("no box given; ending the run")
                break
            outcome = self.attempt(index, "manual", None, [float(v) for v in box], head, verify=False)
            self.finish_attempt(bool(self.loop_cfg["manual_place"]) and outcome.status != "no_mask")
            index += 1
        self.log.save_image("final_head", self.env.observe().head_bgr)
        return "manual_done"

    # ------------------------------------------------------------------ one attempt
    def attempt(self, index: int, instruction: str, target: Optional[str], box: list, head: np.ndarray,
                verify: bool) -> AttemptOutcome:
        """Segment the box, then run the controller until success, failure or a limit."""
        log = self.log
        outcome = AttemptOutcome(index, instruction, target, [round(float(v), 1) for v in box])
        self.outcomes.append(outcome)
        self._current = outcome
        if self.monitor is not None and verify and self.monitor.state == "backoff":
            self.monitor.to("replan", f"new box {outcome.box} for {target!r}")
        self.emit("attempt_start", index=index, box=outcome.box, target=target)
        start = self.env.now()
        log.save_box(f"attempt{index:02d}_box", head, box, target or "")
        mask = self.agent.segment(head, box)                        # (H, W) bool
        log.save_mask(f"attempt{index:02d}_mask", head, mask)
        session = self.env.sim_session
        if session is not None:
            outcome.sim_target_index = session.object_for_mask(mask)
        if mask.sum() < int(self.loop_cfg["min_mask_pixels"]) or (
                self.agent.controller.needs_target_index and outcome.sim_target_index is None):
            outcome.status, outcome.reasoning = "no_mask", "the segmenter found no object in the box"
            log.logger.warning("attempt %d: %s", index, outcome.reasoning)
            return outcome
        self.agent.start_tracking(head, mask)
        self.agent.controller.start_attempt(outcome.sim_target_index)
        if self.monitor is not None and verify:
            self.monitor.start_attempt(index)
        if session is not None:
            outcome.sim_truth = _sim_truth_start(session.env, outcome.sim_target_index)
        if self.recorder is not None:
            self.recorder.start_attempt(f"attempt_{index:03d}")
        if self.enter is not None:
            self.enter.start()
        try:
            self._execute(outcome, instruction, box, mask, verify, start)
        finally:
            if self.enter is not None:
                self.enter.stop()
            if self.recorder is not None:
                self.recorder.end_attempt()
        outcome.duration_s = round(self.env.now() - start, 3)
        if session is not None and outcome.sim_target_index is not None:
            outcome.sim_target_lifted = bool(session.env.object_lifted(outcome.sim_target_index, 0.05))
        if session is not None and outcome.sim_truth is not None:
            _sim_truth_update(outcome.sim_truth, session.env, final=True)
        log.logger.info("attempt %d ended: %s (success=%s) after %d chunks / %.1f s", index, outcome.status,
                        outcome.success, outcome.chunks, outcome.duration_s)
        self.emit("attempt_end", **dataclasses.asdict(outcome))
        return outcome

    def _limit_reached(self, outcome: AttemptOutcome, start: float) -> bool:
        limit_s = float(self.loop_cfg["attempt_time_limit_s"])
        if self.env.now() - start > limit_s:
            outcome.status, outcome.reasoning = "timeout", f"attempt exceeded {limit_s:.0f} s"
        elif self.loop_cfg.get("max_chunks_per_attempt") and outcome.chunks >= int(
                self.loop_cfg["max_chunks_per_attempt"]):
            outcome.status, outcome.reasoning = "chunk_limit", f"{outcome.chunks} chunks executed"
        elif self.enter is not None and self.enter.pressed.is_set():
            outcome.status, outcome.reasoning = "operator_ended", "the operator pressed Enter"
        else:
            return False
        self.log.logger.info("attempt %d: %s", outcome.index, outcome.reasoning)
        return True

    def _execute(self, outcome: AttemptOutcome, instruction: str, box: list, mask: np.ndarray, verify: bool,
                 start: float) -> None:
        env, agent, lc = self.env, self.agent, self.loop_cfg
        n_exec = int(lc["execute_actions_per_chunk"])
        lift, margin = float(lc["lift_height_m"]), float(lc["lift_arm_margin_m"])
        armed = env.hand_height() < lift - margin   # verification waits for a descent, then a rise
        failures = 0
        monitor = self.monitor if verify and self.monitor is not None and self.monitor.state == "approach" else None
        sent = None
        session = env.sim_session
        attention = bool(self.cfg.get("gen_attn_map")) and agent.controller.supports_attention
        while not self._limit_reached(outcome, start):
            obs = env.observe()
            mask = agent.track(obs.head_bgr)                                       # (H, W) bool
            path = (self.log.attention_dir / f"attempt{outcome.index:02d}_chunk{outcome.chunks:04d}.npz"
                    if attention else None)
            chunk = env.call(lambda: agent.predict_chunk(obs.wrist_bgr, obs.head_bgr, mask, obs.state, path),
                             "controller")                                           # (horizon, 13)
            for k in range(min(n_exec, len(chunk))):
                if k:
                    obs = env.observe()
                    mask = agent.track(obs.head_bgr)
                agent.viz.log_step(self._viz_step, obs.head_bgr, obs.wrist_bgr, mask, box, obs.state,
                                   chunk if k == 0 else None)
                self._viz_step += 1
                if self.recorder is not None:
                    rgbm = np.concatenate([obs.head_bgr, (mask.astype(np.uint8) * 255)[..., None]], axis=2)
                    self.recorder.add(obs.wrist_bgr, rgbm, obs.state, chunk[k])
                sent = env.apply(chunk[k])
                env.tick()
                outcome.steps += 1
                armed = armed or env.hand_height() < lift - margin
            agent.controller.consumed(min(n_exec, len(chunk)))
            outcome.chunks += 1
            height = env.hand_height()
            self.emit("chunk", index=outcome.index, chunk=outcome.chunks, hand_height=height, armed=armed)
            if session is not None and outcome.sim_truth is not None:
                _sim_truth_update(outcome.sim_truth, session.env)
            if monitor is not None:
                cause = monitor.update(height, env.state(), None if sent is None else sent[7:], armed)
                if cause is not None:
                    self._failed(outcome, cause, instruction, box)
                    return
            if not (verify and armed and height > lift):
                continue
            obs = env.observe()
            tag = f"attempt{outcome.index:02d}_verify{outcome.verifications}"
            self.log.save_image(f"{tag}_wrist", obs.wrist_bgr)
            self.log.save_image(f"{tag}_head", obs.head_bgr)
            outcome.verifications += 1
            result = env.call(lambda: agent.verify(instruction, obs.head_bgr, obs.wrist_bgr, _as_bbox(box)),
                              "planner")
            outcome.reasoning = result.reasoning
            if result.success:
                outcome.success, outcome.status = True, "verified"
                if monitor is not None:
                    monitor.to("succeeded", "the planner verified the grasp")
                return
            failures += 1
            if failures >= int(lc["max_failed_verifications"]):
                outcome.status = "verification_failed"
                self.log.logger.warning("attempt %d: %d failed verifications, resetting", outcome.index, failures)
                return

    def _failed(self, outcome: AttemptOutcome, cause: str, instruction: str, box: list) -> None:
        """A recovery detector fired: record it and (``verify_on_failure``) ask the planner."""
        outcome.status, outcome.failure_cause = "grasp_failed", cause
        outcome.reasoning = self.monitor.transitions[-1]["reason"]
        self.log.logger.warning("attempt %d: grasp failed (%s): %s", outcome.index, cause, outcome.reasoning)
        if not self.monitor.cfg.verify_on_failure:
            return
        self.monitor.to("verify", "asking the planner whether the hand holds the target")
        obs = self.env.observe()
        tag = f"attempt{outcome.index:02d}_verify{outcome.verifications}"
        self.log.save_image(f"{tag}_wrist", obs.wrist_bgr)
        outcome.verifications += 1
        result = self.env.call(lambda: self.agent.verify(instruction, obs.head_bgr, obs.wrist_bgr, _as_bbox(box)),
                               "planner")
        if result.success and cause == "empty_hand":  # fully closed fingers hold nothing: not trusted
            outcome.reasoning = f"{outcome.reasoning}; planner verified, overruled by the closed hand"
            self.log.logger.warning("attempt %d: the planner verified an empty closed hand; treated as failed",
                                    outcome.index)
        elif result.success:
            outcome.success, outcome.status, outcome.reasoning = True, "verified", result.reasoning
            self.monitor.to("succeeded", f"the planner verified the grasp after {cause}")
        else:
            outcome.reasoning = f"{outcome.reasoning}; planner: {result.reasoning}"

    # ------------------------------------------------------------------ after an attempt
    def finish_attempt(self, place: bool) -> None:
        """Success: placement pose, open, home. Otherwise: open, home -- with recovery (planner
        mode) open, then the scripted back-off to ``loop.recovery.safe_pose`` through the send path."""
        env = self.env
        env.hold()
        monitor = self.monitor
        if monitor is not None and monitor.state == "succeeded":
            monitor.to("idle", "object placed" if place else "attempt over")
        if not place and monitor is not None and monitor.state in ("approach", "grasp", "lifted", "failed",
                                                                   "verify"):
            self.log.logger.info("opening the hand and returning home")
            monitor.to("release", "opening the hand")
            env.open_hand()
            pose = monitor.cfg.safe_pose
            monitor.to("backoff", f"scripted back-off to pose '{pose}' ({monitor.cfg.backoff_s:.1f} s)")
            back_off(env, pose, monitor.cfg.backoff_s)
            if pose != "home":
                env.move_to_pose("home")
            self._current = None
            self.emit("home", place=place)
            return
        if place:
            self.log.logger.info("placing the object and returning home")
            if "via" in env.poses:
                env.move_to_pose("via")
            env.move_to_pose("placement")
            env.open_hand()
        else:
            self.log.logger.info("opening the hand and returning home")
            env.open_hand()
        env.move_to_pose("home")
        self.emit("home", place=place)


def _count(check: Any) -> Optional[int]:
    """Objects the planner's completion check reports as remaining (None if it lists none while not done)."""
    remaining = list(getattr(check, "remaining", None) or [])
    return len(remaining) if (remaining or check.done) else None


def _sim_objects(env: Any) -> Optional[dict]:
    """Simulator only: every object's position (m) and lift now (None on the real robot)."""
    session = env.sim_session
    if session is None:
        return None
    e = session.env
    return {"pos": [e.object_pose(i)[0].round(4).tolist() for i in range(e.n_objects)],
            "lift": [round(float(e.object_lift(i)), 4) for i in range(e.n_objects)],
            "labels": [o.describe() for o in e.scene.objects]}


def _sim_truth_start(env: Any, target: Optional[int]) -> dict:
    """Simulator ground truth at the start of an attempt (positions of every object)."""
    pos = [env.object_pose(i)[0].round(4).tolist() for i in range(env.n_objects)]
    return {"target": target, "start_pos": pos, "max_lift": [0.0] * env.n_objects,
            "end_pos": pos, "end_lift": [0.0] * env.n_objects}


def _sim_truth_update(truth: dict, env: Any, final: bool = False) -> None:
    """Track each object's highest lift during the attempt; at the end, its position and lift."""
    lifts = [float(env.object_lift(i)) for i in range(env.n_objects)]
    truth["max_lift"] = [round(max(a, b), 4) for a, b in zip(truth["max_lift"], lifts)]
    if final:
        truth["end_pos"] = [env.object_pose(i)[0].round(4).tolist() for i in range(env.n_objects)]
        truth["end_lift"] = [round(v, 4) for v in lifts]


def _as_bbox(box: Sequence[float]) -> Any:
    from planner.types import BBox  # noqa: PLC0415

    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    return BBox(x1, y1, x2, y2)
