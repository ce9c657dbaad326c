"""Suite-wide settings: offscreen MuJoCo rendering and quiet, offline logging, set before any
test module imports mujoco or wandb."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
