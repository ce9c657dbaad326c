"""Serving a DexVLA checkpoint (issue 23): requests carry the language, replies the reasoning.

:class:`ServedDexVLAPolicy` is :class:`controller.policy_server.server.ServedPolicy` over a
:class:`controller.policy.dexvla_runner.DexVLAChunkPolicy`. Its handshake says
``accepts_language: true``; ``predict(obs, noise, num_samples, language)`` returns
``(actions (horizon, 13), reasoning)`` and the server puts ``reasoning`` into the reply. A request
without ``language`` uses the policy's ``default_instruction``. No mask reaches the policy.

    python -m controller.serve --checkpoint DEXVLA_CKPT     # detected from the checkpoint's config
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from controller.policy_server.server import ServedPolicy


class ServedDexVLAPolicy(ServedPolicy):
    """A DexVLA chunk policy as the server runs it (see the module docstring)."""

    accepts_language = True

    @classmethod
    def runner_class(cls) -> type:
        """:class:`DexVLAChunkPolicy` (loading and extra sample counts go through it)."""
        from controller.policy.dexvla_runner import DexVLAChunkPolicy  # noqa: PLC0415

        return DexVLAChunkPolicy

    def info(self) -> dict:
        """The model fields of the handshake, with ``accepts_language: True``."""
        return {**super().info(), "accepts_language": True}

    def predict(self, obs: Mapping[str, np.ndarray], noise: Optional[np.ndarray], num_samples: int,
                language: Optional[str] = None) -> tuple[np.ndarray, str]:
        """``(actions float32 (horizon, action_dim), reasoning)`` for one observation and instruction."""
        import torch  # noqa: PLC0415

        tensor = torch.from_numpy(np.array(noise, dtype=np.float32)) if noise is not None else None
        obs = {k: v if v.flags.writeable else np.array(v) for k, v in obs.items()}
        runner = self.runner(num_samples)
        chunk = runner.predict_chunk(obs, noise=tensor, language=language)
        return np.asarray(chunk, dtype=np.float32), runner.last_reasoning
