"""A checkpoint's ``config.yaml`` is data: it may build registered policy classes, nothing else.

Each test is an exploit that worked while ``loading.py`` accepted any ``_target_`` starting with
``controller.`` or ``diffusers.`` (module attributes reached through a package, Hydra's code keys,
resolver interpolations), plus the export checks: tampered configs are refused at export, and a
file edited after export is refused at load.
"""
from __future__ import annotations

import json
import os

import pytest
from omegaconf import OmegaConf

from controller.common.registry import UnsafeConfigError, check_config, instantiate, resolve_target
from controller.export_checkpoint import export_checkpoint
from controller.policy.loading import load_policy
from controller.workspace.checkpoint import CheckpointError, save_checkpoint
from tests.controller.conftest import build_policy, fitted_normalizer


@pytest.fixture(scope="module")
def clean_checkpoint(tmp_path_factory):
    """A tiny, honest training checkpoint (no EMA)."""
    policy, cfg = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "clean"), policy, cfg=cfg)


def _tampered(src: str, dst_dir, edit) -> str:
    """Copy ``src`` to a new directory and apply ``edit(cfg_dict)`` to its config.yaml."""
    import shutil
    dst = str(dst_dir / "tampered")
    shutil.copytree(src, dst)
    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(dst, "config.yaml")))
    edit(cfg)
    with open(os.path.join(dst, "config.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return dst


def _nest(key, value):
    def edit(cfg):
        cfg["policy"][key] = value
    return edit


def test_module_attribute_copyfile_is_not_run(clean_checkpoint, tmp_path):
    """The original report: shutil.copyfile reached through controller.export_checkpoint."""
    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("api key")
    ckpt = _tampered(clean_checkpoint, tmp_path, _nest(
        "extra", {"_target_": "controller.export_checkpoint.shutil.copyfile", "src": str(secret), "dst": str(stolen)}))
    with pytest.raises(CheckpointError, match="controller.export_checkpoint.shutil.copyfile"):
        load_policy(ckpt)
    assert not stolen.exists()


@pytest.mark.parametrize("target", [
    "controller.dataset.frame_cache.np.load",        # numpy.load (allow_pickle) through a package
    "controller.policy.loading.os.system",            # os.system through a module attribute
    "diffusers.utils.export_to_video",                # a function under an allowed prefix
    "controller.workspace.topk.TopKCheckpointManager",  # a real class, but not registered
    "controller.policy.dexgraspvla_controller.torch.nn.Module",  # a class reached through a module
    "builtins.eval",
])
def test_unregistered_targets_are_refused(clean_checkpoint, tmp_path, target):
    ckpt = _tampered(clean_checkpoint, tmp_path, _nest(
        "extra", {"_target_": target, "file": str(tmp_path / "x.npy"), "allow_pickle": True}))
    with pytest.raises(CheckpointError, match="not a registered class"):
        load_policy(ckpt)


def test_registered_class_of_the_wrong_kind_is_refused(clean_checkpoint, tmp_path):
    """A checkpoint's policy section may not build a dataset (which would read arbitrary paths)."""
    ckpt = _tampered(clean_checkpoint, tmp_path, _nest(
        "extra", {"_target_": "controller.dataset.grasp_dataset.GraspDataset", "dataset_paths": ["/"]}))
    with pytest.raises(CheckpointError, match="dataset class, not allowed here"):
        load_policy(ckpt)


@pytest.mark.parametrize("key", ["_partial_", "_call_", "_args_", "_recursive_", "_convert_", "_anything_"])
def test_code_keys_are_refused(clean_checkpoint, tmp_path, key):
    def edit(cfg):
        cfg["policy"]["noise_scheduler"][key] = ["os.system", "echo pwned"] if key == "_args_" else True
    ckpt = _tampered(clean_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError, match=f"'{key}' is treated as code"):
        load_policy(ckpt)


def test_top_level_target_swap_is_refused(clean_checkpoint, tmp_path):
    def edit(cfg):
        cfg["policy"]["_target_"] = "controller.export_checkpoint.main"
    with pytest.raises(CheckpointError, match="not a registered class"):
        load_policy(_tampered(clean_checkpoint, tmp_path, edit))


def test_resolver_interpolations_are_refused(clean_checkpoint, tmp_path):
    ckpt = _tampered(clean_checkpoint, tmp_path, _nest("note", "${oc.env:HOME}"))
    with pytest.raises(CheckpointError, match="resolver interpolations"):
        load_policy(ckpt)


def test_clean_checkpoint_still_loads(clean_checkpoint):
    policy, _ = load_policy(clean_checkpoint)
    assert policy.action_horizon == 64


def test_registry_checks_the_resolved_class():
    assert resolve_target("diffusers.DDIMScheduler").__name__ == "DDIMScheduler"
    with pytest.raises(UnsafeConfigError, match="not a registered class"):
        resolve_target("diffusers.DDIMScheduler.from_pretrained")
    with pytest.raises(UnsafeConfigError, match="not a registered class"):
        check_config({"a": [{"_target_": "subprocess.Popen", "args": ["true"]}]})
    with pytest.raises(UnsafeConfigError, match="no _target_"):
        instantiate({"x": 1})


@pytest.mark.parametrize("edit,match", [
    (_nest("extra", {"_target_": "controller.export_checkpoint.shutil.rmtree", "path": "/tmp/x"}),
     "not a registered class"),
    (_nest("_partial_", True), "treated as code"),
    (lambda cfg: cfg["task"]["dataset"].__setitem__("_target_", "controller.dataset.frame_cache.np.load"),
     "not a registered class"),
])
def test_export_refuses_tampered_configs(clean_checkpoint, tmp_path, edit, match):
    src = _tampered(clean_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        export_checkpoint(src, str(tmp_path / "out"), use_ema=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,change", [
    ("config.yaml", lambda text: text.replace("num_inference_steps:", "num_inference_steps: 1\n  old_steps:", 1)),
    ("normalizer.json", lambda text: text.replace("0", "1", 1)),
    ("model.safetensors", None),
])
def test_export_hash_covers_every_file(clean_checkpoint, tmp_path, name, change):
    dst = str(tmp_path / "shipped")
    meta = export_checkpoint(clean_checkpoint, dst, use_ema=False)
    assert set(meta["sha256"]) == {"model.safetensors", "config.yaml", "normalizer.json"}
    load_policy(dst)  # as exported: loads
    path = os.path.join(dst, name)
    if change is None:  # flip one byte of a weight
        data = bytearray(open(path, "rb").read())
        data[-1] ^= 0xFF
        open(path, "wb").write(bytes(data))
    else:
        text = open(path).read()
        assert change(text) != text
        open(path, "w").write(change(text))
    with pytest.raises(CheckpointError, match=f"{name}' does not match the SHA-256"):
        load_policy(dst)


def test_shipped_checkpoint_records_all_hashes():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "assets", "controller_small_sim")
    if not os.path.isfile(os.path.join(root, "meta.json")):
        pytest.skip("no shipped checkpoint")
    meta = json.load(open(os.path.join(root, "meta.json")))
    assert set(meta["sha256"]) == {"model.safetensors", "config.yaml", "normalizer.json"}
