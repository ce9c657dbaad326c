"""Serving a DexVLA checkpoint (issue 23): requests carry the language, replies the reasoning.

:class:`ServedDexVLAPolicy` is :class:`controller.policy_server.server.ServedPolicy` over a
:class:`controller.policy.dexvla_runner.DexVLAChunkPolicy`. Its handshake says
``accepts_language: true``; ``predict(obs, noise, num_samples, language)`` returns
``(actions (horizon, 13), reasoning)`` and the server puts ``reasoning`` into the reply. A request
without ``language`` uses the policy's ``default_instruction``. No mask reaches the policy.

    python -m controller.serve --checkpoint DEXVLA_CKPT     # detected from the checkpoint's config
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np

from controller.policy_server.protocol import DEFAULT_MAX_NUM_SAMPLES
from controller.policy_server.server import ServedPolicy


class ServedDexVLAPolicy(ServedPolicy):
    """A DexVLA chunk policy as the server runs it (see the module docstring)."""

    accepts_language = True

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto", precision: str = "auto", compile: bool = False,
                        use_ema: bool = True, num_samples: int = 1,
                        max_num_samples: int = DEFAULT_MAX_NUM_SAMPLES) -> "ServedDexVLAPolicy":
        """Load a DexVLA checkpoint directory (the safe loader; ``compile`` is refused)."""
        from controller.policy.dexvla_runner import DexVLAChunkPolicy  # noqa: PLC0415
        from controller.workspace.checkpoint import MODEL_FILE, resolve_checkpoint_dir  # noqa: PLC0415
        from controller.workspace.integrity import file_sha256, recorded_hashes  # noqa: PLC0415
        from inference_utils.cli_common import resolve_device  # noqa: PLC0415

        device = resolve_device(device)
        ckpt_dir = resolve_checkpoint_dir(path)
        policy = DexVLAChunkPolicy.from_checkpoint(ckpt_dir, device, use_ema=use_ema, precision=precision,
                                                   compile=compile, keep_freed_memory=True, num_samples=num_samples)
        digest = recorded_hashes(ckpt_dir).get(MODEL_FILE) or file_sha256(os.path.join(ckpt_dir, MODEL_FILE))
        return cls(policy, os.path.basename(os.path.normpath(ckpt_dir)), digest, max_num_samples)

    def info(self) -> dict:
        """The model fields of the handshake, with ``accepts_language: True``."""
        return {**super().info(), "accepts_language": True}

    def runner(self, num_samples: int) -> Any:
        """The :class:`DexVLAChunkPolicy` running ``num_samples`` samples per observation."""
        k = int(num_samples)
        if k not in self._runners:
            from controller.policy.dexvla_runner import DexVLAChunkPolicy  # noqa: PLC0415

            base = self.base
            self._runners[k] = DexVLAChunkPolicy(base.policy, base.device, "bf16" if base.autocast else "fp32",
                                                 keep_freed_memory=False, num_samples=k)
        return self._runners[k]

    def predict(self, obs: Mapping[str, np.ndarray], noise: Optional[np.ndarray], num_samples: int,
                language: Optional[str] = None) -> tuple[np.ndarray, str]:
        """``(actions float32 (horizon, action_dim), reasoning)`` for one observation and instruction."""
        import torch  # noqa: PLC0415

        tensor = torch.from_numpy(np.array(noise, dtype=np.float32)) if noise is not None else None
        obs = {k: v if v.flags.writeable else np.array(v) for k, v in obs.items()}
        runner = self.runner(num_samples)
        chunk = runner.predict_chunk(obs, noise=tensor, language=language)
        return np.asarray(chunk, dtype=np.float32), runner.last_reasoning
