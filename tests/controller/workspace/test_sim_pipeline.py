"""The research loop at minimum size: collect expert demonstrations in the simulator, train the tiny
controller on them with ``task=sim_grasp``, and roll it out in closed loop through the env runner."""
import json
import os

import pytest

pytest.importorskip("mujoco")


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    from sim.collect import main as collect_main

    out = tmp_path_factory.mktemp("simdata") / "sim_grasp.zarr"
    assert collect_main(["--out", str(out), "--episodes", "2", "--seed", "7", "--objects", "1", "2"]) == 0
    return str(out)


def test_collect_train_rollout(tmp_path, sim_data):
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    from tests.controller.conftest import compose_cfg

    cfg = compose_cfg(["policy=tiny", "task=sim_grasp", f"task.dataset_paths=[{sim_data}]", "logging.mode=disabled",
                       "training.num_epochs=1", "training.max_train_steps=6", "training.rollout_every=1",
                       "task.dataset.val_ratio=0.0", "task.env_runner.episodes=1", "task.env_runner.video_k=1",
                       "+task.env_runner.sim={time_limit_s: 1.0, n_objects: [1, 1]}"])
    metrics = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path)).run()
    assert metrics["rollout/train/success_rate"] in (0.0, 1.0)
    rollout_dir = tmp_path / "rollouts" / "call_0000"
    summary = json.loads((rollout_dir / "summary_train.json").read_text())
    assert summary["episodes"] == 1 and summary["records"][0]["chunks"] >= 1
    assert (rollout_dir / "train_ep000.mp4").stat().st_size > 1000
    assert os.path.isfile(tmp_path / "checkpoints" / "latest" / "model.safetensors")


def test_sim_evaluate_cli_with_trained_checkpoint(tmp_path, sim_data):
    """``python -m sim.evaluate --checkpoint`` loads a real checkpoint through ChunkPolicy."""
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    from tests.controller.conftest import compose_cfg, run_cli

    cfg = compose_cfg(["policy=tiny", "task=sim_grasp", f"task.dataset_paths=[{sim_data}]", "logging.mode=disabled",
                       "training.num_epochs=1", "training.max_train_steps=2", "task.dataset.val_ratio=0.0",
                       "task.env_runner=null", "training.sample_every=0"])
    TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path / "run")).run()
    ckpt = tmp_path / "run" / "checkpoints" / "latest"
    res = run_cli(["-m", "sim.evaluate", "--checkpoint", str(ckpt), "--split", "unseen_lighting", "--episodes", "1",
                   "--out", str(tmp_path / "eval"), "--time-limit", "1.0", "--objects", "1", "1"], env={"MUJOCO_GL": "egl"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "unseen_lighting" in res.stdout
