"""Run a trained controller on raw observations (what cameras, the robot and the simulator give).

:class:`ChunkPolicy` wraps a :class:`DexGraspVLAController` for deployment: it validates a raw
observation against the data contract, preprocesses it exactly as the training dataset does
(``controller.dataset.image_ops``), runs the policy on its device (bf16 autocast on CUDA by
default; on request also on CPUs with bf16 matrix units) and returns a numpy action chunk. No hardware, planner or device names are involved.

Raw observation::

    right_cam_img  uint8 (H, W, 3)  wrist camera, BGR
    rgbm           uint8 (H, W, 4)  head camera BGR + target mask (0/1 or 0/255)
    right_state    float (13,)      normalised arm joints + hand
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np
import torch

from controller.common import malloc_tuning
from controller.common.shape_meta import check_raw_obs, image_size_of
from controller.dataset.image_ops import bgr_uint8_to_float_chw, rgbm_uint8_to_float_chw
from controller.policy.temporal_ensemble import TemporalEnsemble


class ChunkPolicy:
    """Raw observation -> (horizon, 13) action chunk.

    Args:
        policy: a :class:`DexGraspVLAController` (moved to ``device`` and set to eval).
        device: torch device string or object.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"fp32"``, or ``"bf16"``
            (autocast on any device: on a CPU with AMX/AVX-512-BF16 the chunk is several times
            faster, at bf16 rounding of the outputs -- ``benchmarks/controller_speed.py`` reports
            both the speed and the difference).
        compile: compile the encoder and the denoising steps with frozen weights
            (:meth:`DexGraspVLAController.compile_for_inference`); the first chunk pays a one-off
            compile (about a minute for the paper preset on a CPU), later chunks are faster.
        keep_freed_memory: let glibc keep freed memory for reuse
            (:func:`controller.common.malloc_tuning.keep_freed_memory`, process-wide): outputs
            are unchanged and a steady-state chunk faults no new pages.
        num_samples: chunks denoised per observation from independent noise (one encoding, a
            batch of ``num_samples`` in the diffusion transformer); the returned chunk is their
            mean, which averages out the sampling noise of a single draw.
        temporal_ensemble: ``None`` (off) or a decay per step (>= 0): each returned chunk is blended
            with the still-overlapping earlier ones (:class:`TemporalEnsemble`). The caller then
            reports executed actions with :meth:`consumed` and starts each attempt with :meth:`reset`.
    """

    PRECISIONS = ("auto", "fp32", "bf16")

    def __init__(self, policy: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "auto",
                 compile: bool = False, keep_freed_memory: bool = True,
                 temporal_ensemble: Optional[float] = None, num_samples: int = 1) -> None:
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {self.PRECISIONS}, got {precision!r}")
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.shape_meta = policy.shape_meta
        self.image_size = image_size_of(self.shape_meta)
        self.autocast = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.num_samples = int(num_samples)
        self.ensemble = (TemporalEnsemble(float(temporal_ensemble), self.action_horizon)
                         if temporal_ensemble is not None else None)
        if compile:
            self.policy.compile_for_inference()
        malloc_tuning.release_free_memory()  # what loading freed goes back before the heap keeps its peak
        if keep_freed_memory:
            malloc_tuning.keep_freed_memory()

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device = "cpu", use_ema: bool = True,
                        precision: str = "auto", compile: bool = False,
                        keep_freed_memory: bool = True,
                        temporal_ensemble: Optional[float] = None, num_samples: int = 1) -> "ChunkPolicy":
        """Load a checkpoint directory written by training or the converter."""
        from controller.policy.loading import load_policy

        policy, _ = load_policy(path, device=device, use_ema=use_ema)
        return cls(policy, device, precision, compile, keep_freed_memory, temporal_ensemble, num_samples)

    @property
    def action_horizon(self) -> int:
        return int(self.policy.action_horizon)

    def reset(self) -> None:
        """Start a new attempt / episode: forget the chunks kept for temporal ensembling."""
        if self.ensemble is not None:
            self.ensemble.reset()

    def consumed(self, n: int) -> None:
        """``n`` actions of the last returned chunk were executed (temporal ensembling's clock)."""
        if self.ensemble is not None:
            self.ensemble.advance(n)

    def preprocess(self, raw_obs: Mapping[str, np.ndarray]) -> dict:
        """Raw observation -> batched model inputs (1, 1, C, h, w) / (1, 1, 13) on the device."""
        check_raw_obs(raw_obs, self.shape_meta, "ChunkPolicy observation")
        rgbm = rgbm_uint8_to_float_chw(np.asarray(raw_obs["rgbm"]), self.image_size)           # (4, h, w)
        wrist = bgr_uint8_to_float_chw(np.asarray(raw_obs["right_cam_img"]), self.image_size)  # (3, h, w)
        state = np.asarray(raw_obs["right_state"], dtype=np.float32)                          # (13,)
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None].to(self.device)  # noqa: E731
        return {"rgbm": to(rgbm), "right_cam_img": to(wrist), "right_state": to(state)}

    @torch.inference_mode()
    def predict_chunk(self, raw_obs: Mapping[str, np.ndarray], noise: Optional[torch.Tensor] = None,
                      return_attention: bool = False):
        """Predict one action chunk, float32 (horizon, 13) (``noise``: optional (horizon, 13), or
        (num_samples, horizon, 13)); with ``return_attention`` also the
        attention record and the preprocessed model inputs (for attention-map files). With temporal
        ensembling on, the chunk is blended with the overlapping earlier ones."""
        obs = self.preprocess(raw_obs)
        k = self.num_samples
        if noise is not None and noise.dim() == (3 if k > 1 else 2):  # add the batch dimension
            noise = noise[None]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if k > 1:
                out = self.policy.sample_actions(obs, k, noise=noise, return_attention=return_attention)
            else:
                out = self.policy.predict_action(obs, noise=noise, return_attention=return_attention)
        actions, record = out if return_attention else (out, None)
        if k > 1:
            actions = actions.float().mean(dim=1)                  # (1, k, horizon, 13) -> (1, horizon, 13)
        chunk = actions[0].float().cpu().numpy()                                             # (horizon, 13)
        if self.ensemble is not None:
            chunk = self.ensemble.add(chunk)
        return (chunk, record, obs) if return_attention else chunk
