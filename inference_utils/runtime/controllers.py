"""Chunk controllers used by the loop: the trained policy, or the simulator's scripted expert.

Both expose the same protocol::

    controller.start_attempt(target_index)      # a new grasp attempt (target index: sim only)
    chunk = controller.predict_chunk(raw_obs)   # float32 (horizon, 13)
    controller.consumed(n)                      # n actions of the last chunk were executed

``controller.type=policy`` loads a checkpoint (:class:`ChunkPolicy`). ``controller.type=remote``
asks a policy server (``python -m controller.serve``, settings under ``controller.remote``) for
each chunk; a lost server raises after bounded reconnects, which the runtime treats as a fault
(the arm is held, no further action is sent). ``controller.type=expert``
(simulator only) replays :class:`sim.expert.ScriptedExpert`, which plans from the simulator's
ground truth for the object the planner's box/mask selected. It validates the loop, the planner
and the perception stack without a trained model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np


class PolicyController:
    """A trained DexGraspVLA controller (:class:`controller.policy.chunk_runner.ChunkPolicy`)."""

    supports_attention = True
    needs_target_index = False

    def __init__(self, checkpoint: str, device: str = "auto", seed: Optional[int] = None,
                 precision: str = "auto", compile: bool = False, keep_freed_memory: bool = True,
                 temporal_ensemble: Optional[float] = None, num_samples: int = 1) -> None:
        import torch  # noqa: PLC0415

        from controller.policy.chunk_runner import ChunkPolicy  # noqa: PLC0415

        if not checkpoint:
            raise ValueError("controller.checkpoint: required for controller.type=policy "
                             "(a checkpoint directory written by training)")
        if not Path(checkpoint).is_dir():
            raise ValueError(f"controller.checkpoint: {checkpoint!r} is not a directory")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        self.policy = ChunkPolicy.from_checkpoint(str(checkpoint), device, precision=precision, compile=compile,
                                                  keep_freed_memory=keep_freed_memory,
                                                  temporal_ensemble=temporal_ensemble, num_samples=num_samples)
        self.horizon = self.policy.action_horizon

    def start_attempt(self, target_index: Optional[int] = None) -> None:
        """A new attempt: forget the chunks kept for temporal ensembling."""
        self.policy.reset()

    def _noise(self) -> Any:
        if self._generator is None:
            return None
        import torch  # noqa: PLC0415

        k = self.policy.num_samples
        shape = (k, self.horizon, 13) if k > 1 else (self.horizon, 13)
        return torch.randn(shape, generator=self._generator)  # ([k,] horizon, 13)

    def predict_chunk(self, raw_obs: Mapping[str, np.ndarray], return_attention: bool = False) -> Any:
        """float32 (horizon, 13); with ``return_attention`` also ``(record, model_obs)``."""
        return self.policy.predict_chunk(raw_obs, noise=self._noise(), return_attention=return_attention)

    def consumed(self, n: int) -> None:
        """``n`` actions of the last chunk were executed (the temporal ensemble's clock)."""
        self.policy.consumed(n)


class RemoteChunkController:
    """A controller served by a policy server (:class:`controller.policy_server.client.RemoteChunkPolicy`).

    Same protocol as :class:`PolicyController`: the diffusion noise (seeded by ``seed`` like the
    in-process controller) and the temporal ensemble stay here; the server runs the network.
    Connecting happens at build time, so an unreachable server is a configuration error reported
    before anything moves. A connection lost later is retried ``reconnect_attempts`` times, then
    :class:`~controller.policy_server.client.PolicyServerUnavailable` propagates and the runtime
    stops the robot (``Environment.safe_stop``); a stale chunk is never returned.
    """

    supports_attention = False
    needs_target_index = False

    def __init__(self, remote: Mapping[str, Any], seed: Optional[int] = None, temporal_ensemble: Optional[float] = None,
                 num_samples: int = 1) -> None:
        from controller.policy_server.client import RemoteChunkPolicy  # noqa: PLC0415

        remote = dict(remote or {})
        generator = None
        if seed is not None:
            import torch  # noqa: PLC0415

            generator = torch.Generator().manual_seed(int(seed))
        self.policy = RemoteChunkPolicy(
            str(remote.get("host", "127.0.0.1")), int(remote.get("port", 8765)),
            token_env=str(remote.get("token_env", "DEXGRASPVLA_POLICY_TOKEN")),
            timeout_s=float(remote.get("timeout_s", 30.0)),
            connect_timeout_s=float(remote.get("connect_timeout_s", 10.0)),
            reconnect_attempts=int(remote.get("reconnect_attempts", 3)),
            reconnect_delay_s=float(remote.get("reconnect_delay_s", 0.5)),
            num_samples=int(num_samples), temporal_ensemble=temporal_ensemble, generator=generator)
        self.horizon = self.policy.action_horizon

    def start_attempt(self, target_index: Optional[int] = None) -> None:
        """A new attempt: forget the chunks kept for temporal ensembling."""
        self.policy.reset()

    def predict_chunk(self, raw_obs: Mapping[str, np.ndarray], return_attention: bool = False) -> Any:
        """float32 (horizon, 13) from the server (no attention maps over the network)."""
        return self.policy.predict_chunk(raw_obs, return_attention=return_attention)

    def consumed(self, n: int) -> None:
        """``n`` actions of the last chunk were executed (the temporal ensemble's clock)."""
        self.policy.consumed(n)

    def close(self) -> None:
        """Close the connection to the server."""
        self.policy.close()


class ExpertController:
    """The simulator's scripted expert behind the chunk protocol (simulator only).

    The expert is open-loop once planned, so a chunk is produced by generating actions ahead;
    ``consumed(n)`` moves the cursor to where the next chunk starts.
    """

    supports_attention = False
    needs_target_index = True

    def __init__(self, environment: Any, horizon: int = 64) -> None:
        if environment is None or not getattr(environment, "uses_sim", False):
            raise ValueError("controller.type=expert needs the simulator (robot=sim): "
                             "the scripted expert plans from the simulator's ground truth")
        self.environment = environment
        self.horizon = int(horizon)
        self._expert = None
        self._actions: list[np.ndarray] = []
        self._cursor = 0

    def start_attempt(self, target_index: Optional[int] = None) -> None:
        """Select the target object and start a fresh expert plan."""
        from sim.expert import ScriptedExpert  # noqa: PLC0415

        if target_index is None:
            raise ValueError("the expert controller needs the target object index")
        self.session.env.set_target(int(target_index))
        self._expert = ScriptedExpert()
        self._actions, self._cursor = [], 0

    def predict_chunk(self, raw_obs: Mapping[str, np.ndarray], return_attention: bool = False) -> np.ndarray:
        """The next ``horizon`` expert actions, float32 (horizon, 13) (observation unused)."""
        if self._expert is None:
            raise RuntimeError("start_attempt() must be called before predict_chunk()")
        env = self.session.env
        while len(self._actions) < self._cursor + self.horizon:
            self._actions.append(np.asarray(self._expert.act(env), dtype=np.float32))
        return np.stack(self._actions[self._cursor:self._cursor + self.horizon])

    @property
    def session(self) -> Any:
        """The simulator session (open once the environment is connected)."""
        return self.environment.sim_session

    def consumed(self, n: int) -> None:
        """Advance the cursor by ``n`` executed actions."""
        self._cursor += int(n)


def build_controller(cfg: Mapping[str, Any], environment: Any = None) -> Any:
    """Build the controller named by ``cfg['type']`` (``policy``, ``remote`` or ``expert``)."""
    kind = cfg.get("type", "policy")
    if kind == "policy":
        return PolicyController(cfg.get("checkpoint"), str(cfg.get("device", "auto")), cfg.get("seed"),
                                str(cfg.get("precision", "auto")), bool(cfg.get("compile", False)),
                                bool(cfg.get("keep_freed_memory", True)), cfg.get("temporal_ensemble"),
                                int(cfg.get("num_samples", 1)))
    if kind == "remote":
        return RemoteChunkController(cfg.get("remote") or {}, cfg.get("seed"), cfg.get("temporal_ensemble"),
                                     int(cfg.get("num_samples", 1)))
    if kind == "expert":
        return ExpertController(environment, int(cfg.get("horizon", 64)))
    raise ValueError(f"controller.type: unknown controller {kind!r}; valid: policy, remote, expert")
