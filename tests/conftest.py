"""Suite-wide settings: offscreen MuJoCo rendering and quiet, offline logging, set before any
test module imports mujoco or wandb."""
import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a shared, loaded CPU."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
