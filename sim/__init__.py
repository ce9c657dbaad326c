"""Simulated robot world (MuJoCo): arm + dexterous hand in clutter, scripted expert, collector, evaluator.

Public API::

    from sim import GraspEnv, SimConfig
    with GraspEnv(SimConfig(n_objects=(4, 10))) as env:
        obs, info = env.reset(seed=0, split="train")
        obs, reward, terminated, truncated, info = env.step(action13)
"""
from sim.config import CLUTTER_LEVELS, SPLITS, SimConfig, SimConfigError

__all__ = ["GraspEnv", "SimConfig", "SimConfigError", "SPLITS", "CLUTTER_LEVELS", "ScriptedExpert"]


def __getattr__(name):  # lazy: importing sim.config must not start a GL back end
    if name == "GraspEnv":
        from sim.env import GraspEnv
        return GraspEnv
    if name == "ScriptedExpert":
        from sim.expert import ScriptedExpert
        return ScriptedExpert
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
