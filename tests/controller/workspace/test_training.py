"""End-to-end training on a generated reference-layout zarr (zarr v2): train, checkpoint, resume
exactly, fine-tune, DDP with 2 CPU processes through train.sh, attention maps and the visualiser."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from controller.workspace.checkpoint import CheckpointError, load_policy_weights
from tests.controller.conftest import REPO, compose_cfg, run_cli

BASE = ["policy=tiny", "logging.mode=disabled", "task.dataset.val_ratio=0.25", "dataloader.num_workers=0"]


def _train(out_dir, data, extra=()):
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace

    cfg = compose_cfg([*BASE, f"task.dataset_paths=[{data}]", *extra])
    return TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(out_dir)).run()


def _log(run_dir):
    with open(os.path.join(run_dir, "logs.json.txt")) as f:
        return [json.loads(line) for line in f]


def _weights(run_dir, name="latest"):
    return load_file(os.path.join(run_dir, "checkpoints", name, "model.safetensors"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.controller.dataset.factories import make_grasp_zarr
    return make_grasp_zarr(str(tmp_path_factory.mktemp("d") / "grasp.zarr"), episode_lengths=(20, 30, 25, 15))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("full")
    metrics = _train(out, dataset)
    return str(out), metrics


def test_two_epochs_write_checkpoints_and_logs(full_run):
    run_dir, metrics = full_run
    ck = os.path.join(run_dir, "checkpoints")
    names = sorted(os.listdir(ck))
    assert "latest" in names and any(n.startswith("epoch=0001-train_loss=") for n in names)
    latest = os.path.join(ck, "latest")
    for f in ("model.safetensors", "config.yaml", "normalizer.json", "training_state.pt", "meta.json"):
        assert os.path.isfile(os.path.join(latest, f)), f
    assert not [n for n in names if ".tmp-" in n or ".old-" in n]
    meta = json.load(open(os.path.join(latest, "meta.json")))
    assert meta["epoch"] == 1 and meta["global_step"] == 36
    # training state loads without unpickling arbitrary objects
    state = torch.load(os.path.join(latest, "training_state.pt"), weights_only=True)
    assert state["global_step"] == 36 and "optimizer" in state
    log = _log(run_dir)
    assert {"train_loss", "val_loss", "train_action_mse_error", "val_action_mse_error"} <= set(log[-1])
    assert metrics["epoch"] == 1


def test_resume_is_exact(tmp_path, dataset, full_run):
    run_dir, _ = full_run
    part = tmp_path / "part"
    _train(part, dataset, ["training.epochs_per_run=1"])  # "interrupted" after epoch 0
    assert json.load(open(part / "checkpoints" / "latest" / "meta.json"))["epoch"] == 0
    _train(part, dataset, ["training.resume=true"])
    assert _log(part) == _log(run_dir)  # same steps, same losses, same metrics
    a, b = _weights(run_dir), _weights(str(part))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_from_start_ckpt(tmp_path, dataset, full_run):
    run_dir, _ = full_run
    start = os.path.join(run_dir, "checkpoints", "latest")
    out = tmp_path / "ft"
    _train(out, dataset, [f"policy.start_ckpt_path={start}", "training.num_epochs=1"])
    log = _log(out)
    assert log[0]["global_step"] == 1  # a fresh optimiser/step count ...
    fresh = tmp_path / "fresh"
    _train(fresh, dataset, ["training.num_epochs=1"])
    # ... but starting from the trained weights: the first loss is lower than from scratch
    assert log[0]["train_loss"] < _log(fresh)[0]["train_loss"]


def test_wrong_shape_checkpoint_is_reported(full_run, make_policy):
    run_dir, _ = full_run
    policy, _ = make_policy(overrides=["policy.n_layer=3"])
    with pytest.raises(CheckpointError, match="missing keys: model.blocks.2"):
        load_policy_weights(policy, os.path.join(run_dir, "checkpoints", "latest"))
    policy, _ = make_policy(overrides=["policy.obs_encoder.state_hidden=16"])
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*obs_encoder.state_net.0.weight: checkpoint \(32, 13\) vs model \(16, 13\)"):
        load_policy_weights(policy, os.path.join(run_dir, "checkpoints", "latest"))


def test_attention_maps_saved_and_visualised(full_run, tmp_path):
    run_dir, _ = full_run
    attn_dir = os.path.join(run_dir, "attention_maps")
    files = sorted(os.listdir(attn_dir))
    assert "epoch_0001_train.npz" in files and "epoch_0001_val.npz" in files
    res = run_cli(["attention_map_visualizer.py", "--attn-maps-dir", attn_dir, "--out-dir", str(tmp_path),
                   "--quiet"])
    assert res.returncode == 0, res.stderr
    pngs = [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    assert any("overview" in f for f in pngs) and len(pngs) >= 4


def test_train_cli_and_ddp_two_cpu_processes(tmp_path, dataset):
    """train.py through train.sh with NUM_PROCESSES=2: torchrun + gloo DDP on CPU."""
    out = tmp_path / "ddp"
    res = run_cli([str(REPO / "train.sh"), *BASE, f"task.dataset_paths=[{dataset}]", "training.num_epochs=1",
                   f"hydra.run.dir={out}"], env={"NUM_PROCESSES": "2", "MAIN_PROCESS_PORT": "29517",
                                                  "PYTHON": os.sys.executable})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 process(es) on cpu" in res.stdout + res.stderr
    meta = json.load(open(out / "checkpoints" / "latest" / "meta.json"))
    # 70 train samples, batch 4: 18 batches on one process, 9 per rank with two
    assert meta["global_step"] == 9


def test_bad_config_values_fail_early(dataset, tmp_path):
    with pytest.raises(ValueError, match="mixed_precision"):
        _train(tmp_path / "bad", dataset, ["training.mixed_precision=fp64"])


def test_ema_accumulation_and_offline_wandb(tmp_path, dataset):
    """EMA weights are saved and preferred at load; gradient accumulation halves the optimiser steps;
    wandb in offline mode runs without any network."""
    from controller.policy.loading import load_policy

    out = tmp_path / "ema"
    _train(out, dataset, ["training.num_epochs=1", "training.use_ema=true", "training.gradient_accumulate_every=2",
                          "logging.mode=offline", "training.sample_every=0"])
    latest = out / "checkpoints" / "latest"
    assert (latest / "ema.safetensors").is_file()
    assert json.load(open(latest / "meta.json"))["global_step"] == 9  # 18 batches / 2
    assert any(p.name.startswith("offline-run") for p in (out / "wandb").iterdir())
    ema_policy, _ = load_policy(str(latest), use_ema=True)
    raw_policy, _ = load_policy(str(latest), use_ema=False)
    ema_w = ema_policy.model.head.weight
    raw_w = raw_policy.model.head.weight
    assert not torch.equal(ema_w, raw_w)


def test_compiled_denoiser_trains_and_keeps_checkpoint_keys(tmp_path, dataset, full_run):
    """``training.compile=true`` compiles the denoiser in place (torch.compile, inductor on CPU):
    training runs, the loss is finite, and the checkpoint has exactly the eager run's keys."""
    import math

    out = tmp_path / "compiled"
    metrics = _train(out, dataset, ["training.num_epochs=1", "training.compile=true", "training.sample_every=0",
                                    "training.val_every=0", "training.max_train_steps=4"])
    assert math.isfinite(metrics["train_loss"])
    eager = _weights(full_run[0])
    compiled = _weights(out)
    assert set(compiled) == set(eager)
    assert all(compiled[k].shape == eager[k].shape for k in eager)
