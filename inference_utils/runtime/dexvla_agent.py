"""``agent=dexvla`` (issue 23): a DexVLA checkpoint on the runtime, the prompt as its instruction.

No planner, no box, no mask: every chunk is predicted from the cameras, the state and the
operator's prompt; the reasoning the VLM generated for the chunk is logged (``run.log``,
``reasoning.jsonl`` in the run directory, the live view) and captioned on the deployment video.
The devices, drivers and safety limits are those of the configured ``robot`` (the same
:class:`~inference_utils.runtime.environment.Environment`).

Attempt protocol (:class:`LanguageLoop`): chunks run until the grasp check, the attempt time
limit or the chunk limit. The grasp check is the loop's lift trigger (the hand first descends
``lift_arm_margin_m`` below ``lift_height_m``, then rises above it), then, without a planner:

* simulator: the ground truth -- some object is at least ``agent.verify_height_m`` above its
  rest (the check behind ``sim_target_lifted``), and, when the prompt names objects of the scene
  by colour and shape (``"grasp the red box"``), the lifted one is among them. Success ->
  placement and home; the prompt is then done (one prompt = one task).
* real robot: nothing can verify the grasp; the attempt ends with status ``lifted_unverified``
  (success false, the hand opens at home), the operator judges from the video.

Up to ``agent.max_attempts`` attempts; run status ``completed`` or ``max_attempts``.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping, Optional

import numpy as np

from inference_utils.runtime.episode_log import EpisodeLog
from inference_utils.runtime.loop import AttemptOutcome, GraspLoop
from inference_utils.runtime.viz_rerun import NullViz


class DexVLAController:
    """A DexVLA checkpoint (``controller.type=policy``) or a policy server serving one (``remote``).

    ``predict(raw_obs, instruction) -> (chunk float32 (horizon, 13), reasoning str)``; also
    ``start_attempt``, ``consumed``, ``close`` as the other chunk controllers.
    """

    supports_attention = False
    needs_target_index = False

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        import torch  # noqa: PLC0415

        kind = cfg.get("type", "policy")
        seed = cfg.get("seed")
        self._generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        decay, k = cfg.get("temporal_ensemble"), int(cfg.get("num_samples", 1))
        if kind == "policy":
            from controller.policy.dexvla_runner import DexVLAChunkPolicy, is_dexvla_checkpoint  # noqa: PLC0415

            ckpt = str(cfg.get("checkpoint") or "")
            if not is_dexvla_checkpoint(ckpt):
                raise ValueError(f"controller.checkpoint: {ckpt!r} is not a DexVLA checkpoint (agent=dexvla needs "
                                 "one whose policy is controller.policy.dexvla_policy.DexVLAPolicy)")
            device = str(cfg.get("device", "auto"))
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.policy = DexVLAChunkPolicy.from_checkpoint(ckpt, device, precision=str(cfg.get("precision", "auto")),
                                                            compile=bool(cfg.get("compile", False)),
                                                            keep_freed_memory=bool(cfg.get("keep_freed_memory", True)),
                                                            temporal_ensemble=decay, num_samples=k)
        elif kind == "remote":
            from inference_utils.runtime.controllers import RemoteChunkController  # noqa: PLC0415

            self.policy = RemoteChunkController(cfg.get("remote") or {}, seed, decay, k).policy
            if not self.policy.metadata.get("accepts_language"):
                self.policy.close()
                raise ValueError(f"controller.remote: the server at {self.policy.url} serves "
                                 f"{self.policy.metadata.get('policy_class')}, which takes no language; "
                                 "agent=dexvla needs a server of a DexVLA checkpoint")
            self._generator = None  # the client draws the noise from its own generator
        else:
            raise ValueError(f"controller.type: agent=dexvla needs 'policy' or 'remote', got {kind!r}")
        self.horizon = int(self.policy.action_horizon)

    def start_attempt(self, target_index: Optional[int] = None) -> None:
        """A new attempt: forget the chunks kept for temporal ensembling."""
        self.policy.reset()

    def predict(self, raw_obs: Mapping[str, np.ndarray], instruction: str) -> tuple[np.ndarray, str]:
        """One chunk and the reasoning generated for it."""
        noise = None
        if self._generator is not None:
            import torch  # noqa: PLC0415

            k = int(self.policy.num_samples)
            noise = torch.randn((k, self.horizon, 13) if k > 1 else (self.horizon, 13), generator=self._generator)
        chunk = self.policy.predict_chunk(raw_obs, noise=noise, language=instruction)
        return np.asarray(chunk, np.float32), str(getattr(self.policy, "last_reasoning", "") or "")

    def consumed(self, n: int) -> None:
        """``n`` actions of the last chunk were executed (the temporal ensemble's clock)."""
        self.policy.consumed(n)

    def close(self) -> None:
        """Close a policy server connection (nothing for a local checkpoint)."""
        close = getattr(self.policy, "close", None)
        if close is not None:
            close()


class DexVLAAgent:
    """The agent of ``agent=dexvla``: the controller only (no planner, segmenter or tracker)."""

    def __init__(self, log: EpisodeLog, controller: Any) -> None:
        self.log = log
        self.controller = controller
        self.planner = None
        self.planner_calls: list[str] = []
        self.viz: Any = NullViz()

    def predict(self, wrist: np.ndarray, head: np.ndarray, state: np.ndarray, instruction: str
                ) -> tuple[np.ndarray, str]:
        """``(chunk (horizon, 13), reasoning)``; the head image goes in with an empty mask channel."""
        rgbm = np.concatenate([head, np.zeros((*head.shape[:2], 1), np.uint8)], axis=2)  # (H, W, 4), no mask
        raw_obs = {"right_cam_img": wrist, "rgbm": rgbm, "right_state": np.asarray(state, np.float32)}
        return self.controller.predict(raw_obs, instruction)


def build_dexvla_agent(cfg: Mapping[str, Any], log: EpisodeLog) -> DexVLAAgent:
    """The controller of ``cfg['controller']`` behind a :class:`DexVLAAgent`."""
    with log.timed("controller.load"):
        controller = DexVLAController(cfg["controller"])
    return DexVLAAgent(log, controller)


def verify_lift(session: Any, prompt: str, height_m: float) -> tuple[bool, str, Optional[int]]:
    """Simulator grasp check without a planner -> ``(success, reasoning, lifted object index)``."""
    env = session.env
    labels = [o.describe() for o in env.scene.objects]
    lifted = [i for i in range(env.n_objects) if env.object_lifted(i, height_m)]
    named = [i for i, label in enumerate(labels) if label.lower() in prompt.lower()]
    if not lifted:
        return False, f"no object is {height_m:.2f} m above its rest", None
    chosen = next((i for i in lifted if i in named), lifted[0])
    if named and chosen not in named:
        return False, f"lifted the {labels[chosen]}, the prompt names {[labels[i] for i in named]}", chosen
    return True, f"the {labels[chosen]} is lifted", chosen


class LanguageLoop(GraspLoop):
    """Attempts at one prompt with a :class:`DexVLAAgent` (see the module docstring)."""

    def run_language(self, prompt: str) -> str:
        """Carry out ``prompt``; returns ``completed`` (a verified grasp) or ``max_attempts``."""
        self.log.logger.info("DexVLA instruction: %r", prompt)
        self.log.save_image("initial_head", self.env.observe().head_bgr)
        self.reasoning_path = self.log.dir / "reasoning.jsonl"
        status = "max_attempts"
        for index in range(int(self.cfg["agent"]["max_attempts"])):
            outcome = self.attempt_language(index, prompt)
            self.finish_attempt(outcome.success)
            if outcome.success:
                status = "completed"
                break
        self.log.save_image("final_head", self.env.observe().head_bgr)
        return status

    def attempt_language(self, index: int, prompt: str) -> AttemptOutcome:
        """One attempt: chunks on the prompt until the grasp check, a limit or the operator."""
        outcome = AttemptOutcome(index, prompt, None, None)
        self.outcomes.append(outcome)
        self.emit("attempt_start", index=index, box=None, target=None)
        start = self.env.now()
        self.agent.controller.start_attempt()
        if self.recorder is not None:
            self.recorder.start_attempt(f"attempt_{index:03d}")
        if self.enter is not None:
            self.enter.start()
        try:
            self._run_chunks(outcome, prompt, start)
        finally:
            if self.enter is not None:
                self.enter.stop()
            if self.recorder is not None:
                self.recorder.end_attempt()
        outcome.duration_s = round(self.env.now() - start, 3)
        self.log.logger.info("attempt %d ended: %s (success=%s) after %d chunks / %.1f s", index, outcome.status,
                             outcome.success, outcome.chunks, outcome.duration_s)
        self.emit("attempt_end", **vars(outcome))
        return outcome

    def _log_reasoning(self, outcome: AttemptOutcome, reasoning: str) -> None:
        entry = {"attempt": outcome.index, "chunk": outcome.chunks, "step": outcome.steps,
                 "time_s": round(self.env.now(), 3), "wall_time": time.strftime("%H:%M:%S"), "reasoning": reasoning}
        with open(self.reasoning_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.log.logger.info("attempt %d chunk %d reasoning: %r", outcome.index, outcome.chunks, reasoning)
        self.agent.viz.log_planner("dexvla", reasoning)

    def _run_chunks(self, outcome: AttemptOutcome, prompt: str, start: float) -> None:
        env, agent, lc = self.env, self.agent, self.loop_cfg
        n_exec = int(lc["execute_actions_per_chunk"])
        lift, margin = float(lc["lift_height_m"]), float(lc["lift_arm_margin_m"])
        armed = env.hand_height() < lift - margin   # the check waits for a descent, then a rise
        failures = 0
        while not self._limit_reached(outcome, start):
            obs = env.observe()
            chunk, reasoning = env.call(lambda: agent.predict(obs.wrist_bgr, obs.head_bgr, obs.state, prompt),
                                        "controller")                         # (horizon, 13), str
            self._log_reasoning(outcome, reasoning)
            outcome.reasoning = reasoning
            for k in range(min(n_exec, len(chunk))):
                if k:
                    obs = env.observe()
                agent.viz.log_step(self._viz_step, obs.head_bgr, obs.wrist_bgr, None, None, obs.state,
                                   chunk if k == 0 else None)
                self._viz_step += 1
                if self.recorder is not None:
                    rgbm = np.concatenate([obs.head_bgr, np.zeros((*obs.head_bgr.shape[:2], 1), np.uint8)], axis=2)
                    self.recorder.add(obs.wrist_bgr, rgbm, obs.state, chunk[k], caption=f"{prompt} | {reasoning}")
                env.apply(chunk[k])
                env.tick()
                outcome.steps += 1
                armed = armed or env.hand_height() < lift - margin
            agent.controller.consumed(min(n_exec, len(chunk)))
            outcome.chunks += 1
            height = env.hand_height()
            self.emit("chunk", index=outcome.index, chunk=outcome.chunks, hand_height=height, armed=armed,
                      reasoning=reasoning)
            if not (armed and height > lift):
                continue
            outcome.verifications += 1
            session = env.sim_session
            if session is None:
                outcome.status, outcome.reasoning = "lifted_unverified", "hand lifted; no planner or ground truth " \
                                                                         "to verify the grasp on this robot"
                self.log.logger.warning("attempt %d: %s", outcome.index, outcome.reasoning)
                return
            ok, why, index = verify_lift(session, prompt, float(self.cfg["agent"]["verify_height_m"]))
            outcome.sim_target_index, outcome.sim_target_lifted = index, index is not None
            self.log.logger.info("grasp check (simulator): success=%s (%s)", ok, why)
            outcome.reasoning = f"{why}; last reasoning: {reasoning}"
            if ok:
                outcome.success, outcome.status = True, "verified"
                return
            failures += 1
            if failures >= int(lc["max_failed_verifications"]):
                outcome.status = "verification_failed"
                return
