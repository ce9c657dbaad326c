"""DexVLA stage chaining (``policy.init_from``, controller/policy/dexvla_init.py): stage 1 -> 2 -> 3
through train.py in subprocesses (2 steps each), expert weights carried over exactly, the report of
every key not loaded, and the errors (shape mismatch naming the key, strict ``full`` mode, foreign
sources)."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
from controller.policy.dexvla_init import InitFromError
from controller.workspace.checkpoint import save_checkpoint
from tests.controller.conftest import REPO, build_policy, fitted_normalizer, run_cli
from tests.controller.dexvla_helpers import write_text_store

COMMON = ["policy=dexvla_tiny", "task=sim_grasp", "n_action_steps=16"]
TRAIN = ["logging.mode=disabled", "training.num_epochs=1", "training.max_train_steps=2",
         "training.max_val_steps=1", "task.dataset.val_ratio=0.5"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_store = write_text_store


def _policy(overrides=()):
    policy, _ = build_policy("dexvla_tiny", [*COMMON[1:], *overrides])
    return policy


def _weights(run):
    return load_file(os.path.join(run, "checkpoints", "latest", "model.safetensors"))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Stage 1, then 2 from 1, then 3 from 2: ``train.py --config-name train_dexvla_workspace
    training.stage=N``, 2 steps each."""
    root = tmp_path_factory.mktemp("stages")
    store = _store(root / "sim.zarr")
    runs, outs = {}, {}
    for stage, parent in ((1, None), (2, 1), (3, 2)):
        runs[stage] = str(root / f"stage{stage}")
        extra = [f"training.stage={stage}", f"hydra.run.dir={runs[stage]}"]
        if parent:
            extra.append(f"policy.init_from={runs[parent]}/checkpoints/latest")
        res = run_cli(["train.py", "--config-name", "train_dexvla_workspace", *COMMON, f"task.dataset_paths=[{store}]", *TRAIN, *extra], timeout=120)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outs[stage] = res.stdout + res.stderr
    return runs, outs


def test_train_py_runs_stages_1_2_3_and_reports(chain):
    runs, outs = chain
    for stage in (1, 2, 3):
        assert os.path.isfile(os.path.join(runs[stage], "checkpoints", "latest", "model.safetensors"))
    assert "init_from" not in outs[1]
    for stage in (1, 2, 3):  # the workspace's sampling metric runs on DexVLA (instruction from the batch)
        assert "train_action_mse_error" in outs[stage] or "train_mse" in outs[stage], outs[stage][-2000:]
    assert "mode expert: loaded" in outs[2]
    assert "kept at init (not in source / not mapped): backbone.* (" in outs[2] and "prompt_proj.* (4)" in outs[2]
    assert "unused source tensors: stage1_encoder.* (" in outs[2]
    assert "mode full: loaded" in outs[3] and "kept at init (not in source / not mapped): none" in outs[3]
    s1, s2 = _weights(runs[1]), _weights(runs[2])
    assert not any(k.startswith("backbone.") for k in s1) and any(k.startswith("backbone.") for k in s2)


def test_stage2_starts_from_the_stage1_expert_exactly(chain):
    runs, _ = chain
    s1 = _weights(runs[1])
    policy = _policy(["policy.training_stage=2", f"policy.init_from={runs[1]}/checkpoints/latest"])
    own = policy.state_dict()
    expert = [k for k in own if k.startswith("expert.")]
    assert expert and all(torch.equal(own[k], s1[k]) for k in expert)
    rep = policy.init_report
    assert rep["mode"] == "expert" and sorted(rep["loaded"]) == sorted(expert)
    assert all(k.startswith(("backbone.", "prompt_proj.")) for k in rep["kept_init"])
    assert rep["unused"] and all(k.startswith("stage1_encoder.") for k in rep["unused"])


def test_stage3_starts_from_the_whole_stage2_network(chain):
    runs, _ = chain
    s2 = _weights(runs[2])
    policy = _policy(["policy.training_stage=3", f"policy.init_from={runs[2]}/checkpoints/latest"])
    own = {k: v for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    assert own and all(torch.equal(v, s2[k]) for k, v in own.items())
    assert policy.init_report["mode"] == "full" and policy.init_report["kept_init"] == []
    # the trained stage-3 checkpoint loads in a new process's way (load_policy) and predicts
    from controller.policy.loading import load_policy
    from tests.controller.conftest import random_obs
    loaded, _ = load_policy(os.path.join(runs[3], "checkpoints", "latest"))
    out = loaded.predict_action(random_obs(1, 56, 0))
    assert out["action"].shape == (1, 16, 13) and len(out["reasoning"]) == 1


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    policy = _policy(["policy.training_stage=1"])
    policy.set_normalizer(fitted_normalizer())
    return save_checkpoint(str(tmp_path_factory.mktemp("s1") / "ckpt"), policy)


def test_shape_mismatch_names_the_key(stage1_ckpt):
    with pytest.raises(InitFromError, match=r"shape mismatch: expert\.model\.\S+: source \(\d+, ?\d*\)? ?"):
        _policy(["policy.training_stage=2", "policy.expert.width=64", f"policy.init_from={stage1_ckpt}"])


def test_full_mode_is_strict_and_lists_keys(stage1_ckpt):
    with pytest.raises(InitFromError, match=r"missing in the source: backbone\..*unexpected .*stage1_encoder\."):
        _policy(["policy.training_stage=2", "policy.init_from_mode=full", f"policy.init_from={stage1_ckpt}"])


def test_stage1_from_stage1_is_full_and_exact(stage1_ckpt):
    policy = _policy(["policy.training_stage=1", f"policy.init_from={stage1_ckpt}"])
    src = load_file(os.path.join(stage1_ckpt, "model.safetensors"))
    assert policy.init_report["mode"] == "full"
    assert all(torch.equal(v, src[k]) for k, v in policy.state_dict().items() if not k.startswith("normalizer."))


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(InitFromError, match="does not exist"):
        _policy(["policy.training_stage=1", f"policy.init_from={tmp_path / 'nothing'}"])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(InitFromError, match="not a ScaleDP expert file"):
        _policy(["policy.training_stage=1", f"policy.init_from={foreign}"])
    with pytest.raises(InitFromError, match="init_from_mode must be one of"):
        _policy(["policy.training_stage=1", f"policy.init_from={REPO}", "policy.init_from_mode=bogus"])


def test_checkpoint_loads_after_its_init_source_is_gone(chain, tmp_path):
    """A trained checkpoint holds all its weights: load_policy does not read ``init_from`` again."""
    import shutil
    from controller.policy.loading import load_policy
    from tests.controller.conftest import random_obs
    runs, _ = chain
    src = os.path.join(runs[2], "checkpoints", "latest")
    copy = tmp_path / "stage3"
    shutil.copytree(os.path.join(runs[3], "checkpoints", "latest"), copy)
    moved = tmp_path / "moved_source"
    shutil.move(src, moved)                           # the stage-2 source disappears
    try:
        loaded, _ = load_policy(str(copy))
        out = loaded.predict_action(random_obs(1, 56, 0))
        assert out["action"].shape == (1, 16, 13)
        ref = _weights(runs[3])
        assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items() if k in ref)
    finally:
        shutil.move(str(moved), src)
