"""Run a DexVLA checkpoint on raw observations + a language instruction (deployment, issue 23).

:class:`DexVLAChunkPolicy` is :class:`controller.policy.chunk_runner.ChunkPolicy` for
:class:`controller.policy.dexvla_policy.DexVLAPolicy`: same raw observation, same preprocessing,
same ``reset`` / ``consumed`` / temporal ensemble, plus

* the language instruction (``predict_chunk(raw_obs, language=...)`` or :meth:`set_instruction`);
* the reasoning the backbone generated for the last chunk (:attr:`last_reasoning`);
* no target mask: the mask channel of ``rgbm`` is zeroed before the policy sees it (DexVLA gets
  no mask; the policy also drops that channel itself).

``num_samples`` > 1 runs the observation ``num_samples`` times as a batch (the VLM included) and
averages the chunks; the reasoning reported is the first sample's (greedy decoding: all equal).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np
import torch

from controller.policy.chunk_runner import ChunkPolicy

DEXVLA_TARGET = "controller.policy.dexvla_policy.DexVLAPolicy"


def is_dexvla_checkpoint(path: str) -> bool:
    """True if the checkpoint's ``config.yaml`` builds :class:`DexVLAPolicy` (nothing is built)."""
    from controller.policy.loading import load_config  # noqa: PLC0415

    try:
        cfg = load_config(path)
    except Exception:  # noqa: BLE001 - not readable: let the normal loader report it
        return False
    return str(cfg.policy.get("_target_", "")) == DEXVLA_TARGET


class DexVLAChunkPolicy(ChunkPolicy):
    """Raw observation + instruction -> (horizon, 13) chunk; the reasoning in :attr:`last_reasoning`.

    Args: as :class:`ChunkPolicy` (``compile`` is refused: DexVLA has no compiled path), plus
    ``instruction``: the default instruction (else the policy's ``default_instruction``).
    """

    supports_attention = False
    accepts_language = True

    def __init__(self, policy: torch.nn.Module, device: str | torch.device = "cpu", precision: str = "auto",
                 compile: bool = False, keep_freed_memory: bool = True,
                 temporal_ensemble: Optional[float] = None, num_samples: int = 1,
                 instruction: Optional[str] = None) -> None:
        from controller.policy.dexvla_policy import DexVLAPolicy  # noqa: PLC0415

        if not isinstance(policy, DexVLAPolicy):
            raise ValueError(f"DexVLAChunkPolicy needs a DexVLAPolicy, got {type(policy).__name__}")
        if compile:
            raise ValueError("compile: not supported for DexVLA (no compiled inference path)")
        super().__init__(policy, device, precision, False, keep_freed_memory, temporal_ensemble, num_samples)
        self.instruction = instruction if instruction is not None else policy.default_instruction
        self.last_reasoning = ""

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device = "cpu", use_ema: bool = True,
                        precision: str = "auto", compile: bool = False, keep_freed_memory: bool = True,
                        temporal_ensemble: Optional[float] = None, num_samples: int = 1,
                        instruction: Optional[str] = None) -> "DexVLAChunkPolicy":
        """Load a DexVLA checkpoint directory (the safe loader, registered classes only)."""
        from controller.policy.loading import load_policy  # noqa: PLC0415

        if not os.path.isdir(str(path)):
            raise ValueError(f"{path!r} is not a checkpoint directory")
        policy, _ = load_policy(path, device=device, use_ema=use_ema)
        return cls(policy, device, precision, compile, keep_freed_memory, temporal_ensemble, num_samples,
                   instruction)

    def set_instruction(self, text: str) -> None:
        """The language instruction of the following chunks (e.g. ``"grasp the blue box"``)."""
        self.instruction = str(text)

    @torch.inference_mode()
    def predict_chunk(self, raw_obs: Mapping[str, np.ndarray], noise: Optional[torch.Tensor] = None,
                      return_attention: bool = False, language: Optional[str] = None):
        """One action chunk, float32 (horizon, 13), for ``language`` (default: the set instruction).
        ``noise``: optional (horizon, 13) or (num_samples, horizon, 13). The generated reasoning
        is kept in :attr:`last_reasoning`."""
        if return_attention:
            raise ValueError("DexVLA has no attention maps (--gen-attn-map is for the DexGraspVLA controller)")
        rgbm = np.array(raw_obs["rgbm"], copy=True)
        rgbm[..., 3] = 0                                                   # DexVLA gets no mask
        obs = self.preprocess({**raw_obs, "rgbm": rgbm})                   # (1, 1, C, h, w) / (1, 1, 13)
        k = self.num_samples
        text = self.instruction if language is None else str(language)
        if k > 1:
            obs = {key: v.expand(k, *v.shape[1:]) for key, v in obs.items()}
        if noise is not None:
            noise = noise.reshape(k, self.action_horizon, -1)
        obs["language"] = [text] * k
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.policy.predict_action(obs, noise=noise)
        chunk = out["action"].float().mean(dim=0).cpu().numpy()           # (horizon, 13)
        self.last_reasoning = str(out["reasoning"][0]) if out["reasoning"] else ""
        if self.ensemble is not None:
            chunk = self.ensemble.add(chunk)
        return chunk

    def predict_with_reasoning(self, raw_obs: Mapping[str, np.ndarray], language: Optional[str] = None,
                               noise: Optional[torch.Tensor] = None) -> tuple[np.ndarray, str]:
        """``(chunk (horizon, 13), reasoning)`` for one observation."""
        chunk = self.predict_chunk(raw_obs, noise=noise, language=language)
        return chunk, self.last_reasoning
