"""Simulated robot world (MuJoCo): arm + dexterous hand in clutter, scripted expert, collector, evaluator.

Public API::

    from sim import GraspEnv, SimConfig
    with GraspEnv(SimConfig(n_objects=(4, 10))) as env:
        obs, info = env.reset(seed=0, split="train")
        obs, reward, terminated, truncated, info = env.step(action13)
"""
import os as _os

if "MUJOCO_GL" not in _os.environ:  # before any sim module imports mujoco: EGL, or OSMesa without libEGL
    import ctypes.util as _ctypes_util
    _os.environ["MUJOCO_GL"] = "egl" if _ctypes_util.find_library("EGL") else "osmesa"
_os.environ.setdefault("PYOPENGL_PLATFORM", _os.environ["MUJOCO_GL"])

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
