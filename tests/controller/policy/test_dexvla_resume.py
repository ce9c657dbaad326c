"""Exact resume of a DexVLA stage-2 run started from a stage-1 checkpoint (``policy.init_from``):
2 epochs in one go == 1 epoch, stop, ``training.resume=true``, 1 more epoch (same logged losses,
bit-identical weights). The resumed run rebuilds the policy (init_from is read again) and the
workspace then loads its own checkpoint over it."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
from controller.workspace.checkpoint import save_checkpoint
from tests.controller.conftest import build_policy, compose_cfg, fitted_normalizer
from tests.controller.dexvla_helpers import write_text_store


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_store = write_text_store


def _train(out, store, stage1, extra=()):
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    cfg = compose_cfg(["policy=dexvla_tiny", "task=sim_grasp", f"task.dataset_paths=[{store}]", "n_action_steps=16",
                       "logging.mode=disabled", "training.num_epochs=2", "training.max_train_steps=2",
                       "training.max_val_steps=1", "task.dataset.val_ratio=0.5", f"policy.init_from={stage1}",
                       *extra])
    return TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(out)).run()


def _log(run):
    with open(os.path.join(run, "logs.json.txt")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("_s") and "time" not in k}
                for line in f]


def test_stage2_from_stage1_resumes_exactly(tmp_path):
    store = _store(tmp_path / "sim.zarr")
    torch.manual_seed(0)
    s1, _ = build_policy("dexvla_tiny", ["task=sim_grasp", "n_action_steps=16", "policy.training_stage=1"])
    s1.set_normalizer(fitted_normalizer())
    stage1 = save_checkpoint(str(tmp_path / "stage1"), s1)
    full, part = tmp_path / "full", tmp_path / "part"
    _train(full, store, stage1)
    _train(part, store, stage1, ["training.epochs_per_run=1"])
    assert json.load(open(part / "checkpoints" / "latest" / "meta.json"))["epoch"] == 0
    _train(part, store, stage1, ["training.resume=true"])
    assert _log(part) == _log(full)
    a = load_file(str(full / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "latest" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(full / "checkpoints" / "latest" / "meta.json"))["global_step"] == 4
