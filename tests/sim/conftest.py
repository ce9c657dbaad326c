"""Shared factories for the simulator tests, exposed as pytest fixtures that return factories."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sim.config import SimConfig  # noqa: E402


def make_config(**overrides) -> SimConfig:
    """A small, fast scene configuration (4-6 objects)."""
    kw = {"n_objects": (4, 6)}
    kw.update(overrides)
    return SimConfig(**kw)


def make_env(**overrides):
    """A GraspEnv built from :func:`make_config`; close it (or use ``with``)."""
    from sim.env import GraspEnv
    return GraspEnv(make_config(**overrides))


def record_expert_actions(seed: int, split: str = "train", **overrides) -> tuple[list[np.ndarray], bool]:
    """Run the scripted expert physics-only and return its action sequence and success."""
    from sim.expert import ScriptedExpert
    cfg = dict(overrides, render_observations=False)
    with make_env(**cfg) as env:
        expert = ScriptedExpert()
        env.reset(seed=seed, split=split)
        actions = []
        while True:
            a = expert.act(env)
            actions.append(a)
            _, _, term, trunc, info = env.step(a)
            if term or trunc:
                return actions, bool(info["success"])


class ReplayChunkPolicy:
    """Test stand-in for the controller: replays pre-recorded expert actions.

    Implements the evaluator's policy protocol (``reset()``, ``predict_chunk(raw_obs) -> (64, 13)``)
    but ignores the observation: chunk k starts at action ``k * n_execute`` of the recording for
    the current episode. Because the simulator is deterministic this reproduces the expert.
    """

    def __init__(self, episodes: list[list[np.ndarray]], n_execute: int = 6, horizon: int = 64) -> None:
        self.episodes = [np.asarray(e, dtype=np.float32) for e in episodes]
        self.n_execute, self.horizon = n_execute, horizon
        self.episode = -1
        self.cursor = 0

    def reset(self) -> None:
        self.episode += 1
        self.cursor = 0

    def predict_chunk(self, raw_obs: dict) -> np.ndarray:
        acts = self.episodes[self.episode]
        idx = np.minimum(np.arange(self.cursor, self.cursor + self.horizon), len(acts) - 1)
        self.cursor += self.n_execute
        return acts[idx]


@pytest.fixture
def config_factory():
    """Factory: ``config_factory(**overrides) -> SimConfig``."""
    return make_config


@pytest.fixture
def env_factory():
    """Factory: ``env_factory(**overrides) -> GraspEnv`` (use as a context manager)."""
    return make_env


@pytest.fixture
def expert_recorder():
    """Factory: ``expert_recorder(seed, split) -> (actions, success)``."""
    return record_expert_actions


@pytest.fixture
def replay_policy_factory():
    """Factory: ``replay_policy_factory(episodes, n_execute) -> ReplayChunkPolicy``."""
    return ReplayChunkPolicy
