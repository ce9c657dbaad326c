"""train.py with the DexVLA FSDP accelerate config (controller/config/accelerate/fsdp_dexvla.yaml)
on CPU: 2 gloo processes, 2 steps of dexvla_tiny, a checkpoint that loads and predicts.

On CPU accelerate 1.16 does not apply FSDP (it sets DistributedType.FSDP only for accelerator
devices; the workspace's Accelerator(cpu=True) gives MULTI_CPU), so this run is DDP over gloo;
FSDP2 itself is checked on CPU in test_dexvla_fsdp.py. See docs/dexvla.md "FSDP"."""
import json


from tests.controller.conftest import REPO, run_cli
from tests.controller.dexvla_helpers import write_text_store


_store = write_text_store


def test_train_py_with_the_fsdp_config_runs_two_gloo_processes(tmp_path):
    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    from controller.policy.loading import load_policy
    from tests.controller.conftest import random_obs

    store, run = _store(tmp_path / "sim.zarr"), tmp_path / "run"
    res = run_cli(["-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "controller" / "config" / "accelerate" / "fsdp_dexvla.yaml"),
                   "--num_processes", "2", "--main_process_port", "29562", "train.py",
                   "policy=dexvla_tiny", "task=sim_grasp", f"task.dataset_paths=[{store}]", "n_action_steps=16",
                   "logging.mode=disabled", "training.num_epochs=1", "training.max_train_steps=2",
                   "training.max_val_steps=1", "task.dataset.val_ratio=0.5", f"hydra.run.dir={run}"], timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 process(es) on cpu" in res.stdout + res.stderr
    meta = json.load(open(run / "checkpoints" / "latest" / "meta.json"))
    assert meta["global_step"] == 2
    policy, _ = load_policy(str(run / "checkpoints" / "latest"))
    out = policy.predict_action(random_obs(1, 56, 0))
    assert out["action"].shape == (1, 16, 13)
