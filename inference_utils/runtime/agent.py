"""The thinking side of the loop: planner, segmenter, tracker and controller behind one
:class:`Agent`. It never touches a device; the loop hands it images and states.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from inference_utils.runtime.episode_log import EpisodeLog
from inference_utils.runtime.viz_rerun import NullViz


def build_planner(cfg: Mapping[str, Any], episode_dir: Path) -> Any:
    """A :class:`planner.DexGraspVLAPlanner` from the ``planner`` config section.

    ``planner.backend`` picks the transport (``http``, the default: an OpenAI-compatible server;
    ``transformers``: a local Qwen2-VL / Qwen2.5-VL folder), in ``DexGraspVLAPlanner.from_config``.
    The planner is made ready here (HTTP: the model name is resolved with ``GET /v1/models`` when
    not configured; local: the weights are loaded, once per process), so an unreachable server or
    an unloadable model fails before any motion.
    """
    from planner import DexGraspVLAPlanner  # noqa: PLC0415

    planner = DexGraspVLAPlanner.from_config(cfg, episode_dir=episode_dir)  # keys: from_config's docstring
    planner.warm_up()
    return planner


class Agent:
    """Planner + perception + controller with logging and timing of every call.

    Args:
        log: the run's :class:`EpisodeLog`.
        controller: a chunk controller (see :mod:`inference_utils.runtime.controllers`).
        segmenter: ``segment(image_bgr, box) -> bool (H, W)``.
        tracker: ``start(image_bgr, mask)``, ``track(image_bgr) -> bool (H, W)``.
        planner: a :class:`planner.DexGraspVLAPlanner`, or None in manual mode.
    """

    def __init__(self, log: EpisodeLog, controller: Any, segmenter: Any, tracker: Any, planner: Any = None) -> None:
        self.log = log
        self.controller = controller
        self.segmenter = segmenter
        self.tracker = tracker
        self.planner = planner
        self.planner_calls: list[str] = []
        #: live view (``--viz rerun``: a :class:`~inference_utils.runtime.viz_rerun.RerunViz`)
        self.viz: Any = NullViz()

    # ------------------------------------------------------------------ planner
    def _plan(self, task: str, fn, *args: Any) -> Any:
        if self.planner is None:
            raise RuntimeError(f"planner task {task} requested in manual mode")
        self.planner_calls.append(task)
        with self.log.timed(f"planner.{task}"):
            result = fn(*args)
        self.viz.log_planner(task, str(result))
        return result

    def check_completion(self, prompt: str, initial_head: np.ndarray, current_head: np.ndarray) -> Any:
        """Planner: is the user prompt fully carried out? -> CompletionCheck."""
        result = self._plan("check_completion", self.planner.check_completion, prompt, initial_head, current_head)
        self.log.logger.info("completion check: done=%s (%s) remaining=%s", result.done, result.reasoning,
                             result.remaining)
        return result

    def propose(self, prompt: str, initial_head: np.ndarray, current_head: np.ndarray, avoid: Sequence = ()) -> Any:
        """Planner: the next grasping instruction -> Instruction; ``avoid``: the
        :class:`planner.FailedTarget` objects earlier attempts failed on."""
        if avoid:
            self.log.logger.info("asking the planner to avoid: %s",
                                 "; ".join(f"{t.label} {t.box.as_list()} x{t.failures}" for t in avoid))
        result = self._plan("propose_instruction", self.planner.propose_instruction, prompt, initial_head,
                            current_head, list(avoid))
        self.log.logger.info("instruction: %s (target %s; %s)", result.instruction, result.target, result.reasoning)
        return result

    def locate(self, instruction: str, head: np.ndarray) -> Any:
        """Planner: the target's box -> BoxPrediction."""
        result = self._plan("predict_bbox", self.planner.predict_bbox, instruction, head)
        self.log.logger.info("box %s label=%r (%s)", result.bbox.as_list(), result.label, result.description)
        return result

    def verify(self, instruction: str, head: np.ndarray, wrist: np.ndarray, box: Any = None) -> Any:
        """Planner: does the hand hold the target? -> GraspVerification."""
        result = self._plan("verify_grasp", self.planner.verify_grasp, instruction, head, wrist, box)
        self.log.logger.info("grasp verification: success=%s (%s)", result.success, result.reasoning)
        return result

    # ------------------------------------------------------------------ perception
    def segment(self, head: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """Box -> bool (H, W) mask of the target on the head image."""
        with self.log.timed("perception.segment"):
            mask = np.asarray(self.segmenter.segment(head, list(box)), bool)
        self.log.logger.info("mask: %d pixels", int(mask.sum()))
        return mask

    def start_tracking(self, head: np.ndarray, mask: np.ndarray) -> None:
        """Initialise the tracker with the first mask."""
        self.tracker.reset()
        self.tracker.start(head, mask)

    def track(self, head: np.ndarray) -> np.ndarray:
        """Follow the target into a new head frame -> bool (H, W)."""
        return np.asarray(self.tracker.track(head), bool)

    # ------------------------------------------------------------------ controller
    def predict_chunk(self, wrist: np.ndarray, head: np.ndarray, mask: np.ndarray, state: np.ndarray,
                      attention_path: Optional[Path] = None) -> np.ndarray:
        """Predict one action chunk, float32 (horizon, 13); optionally save attention maps."""
        rgbm = np.concatenate([head, (mask.astype(np.uint8) * 255)[..., None]], axis=2)  # (H, W, 4)
        raw_obs = {"right_cam_img": wrist, "rgbm": rgbm, "right_state": np.asarray(state, np.float32)}
        want_attention = attention_path is not None and self.controller.supports_attention
        if not want_attention:
            return np.asarray(self.controller.predict_chunk(raw_obs), np.float32)
        from controller.policy.dexgraspvla_controller import obs_to_uint8_images  # noqa: PLC0415
        from controller.viz.attention_io import save_attention_maps  # noqa: PLC0415

        chunk, record, model_obs = self.controller.predict_chunk(raw_obs, return_attention=True)
        n = int(record["attn"].shape[2])
        save_attention_maps(attention_path, **record, **obs_to_uint8_images(model_obs, n),
                            meta={"source": "inference", "file": attention_path.name})
        return np.asarray(chunk, np.float32)
