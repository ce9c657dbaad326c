"""LoRA (peft) on DexVLA's language model, tiny preset: the trainable set, identity at init, only
trainable tensors move, checkpoint round trip (in process and in a fresh process), stage chaining
with LoRA on both sides or one side (merge / into the base layers)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy with the registry
from controller.policy.dexvla_lora import DEFAULT_TARGETS, is_lora_key, merge_lora_state_dict
from tests.controller.policy.test_dexvla_policy import A, B, H, _batch, _obs, _one_thread, _policy  # noqa: F401

REPO = Path(__file__).resolve().parents[3]
LORA = ["policy.lora_rank=4", "policy.lora_alpha=8.0", "policy.lora_dropout=0.0"]
LAYERS = 2  # decoder layers of the tiny backbone


def _noise(seed=2):
    return torch.randn(B, H, A, generator=torch.Generator().manual_seed(seed))


def _trained_lora_policy(steps=2, overrides=()):
    """A tiny LoRA policy after a few AdamW steps, with the zero-initialised output layers (expert
    adaLN-Zero, LoRA B) moved off zero so that every part changes the actions."""
    policy, cfg = _policy(LORA + list(overrides))
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for n, p in policy.named_parameters():
            if ".lora_B." in n or "final_layer" in n or "adaLN" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    opt = policy.get_optimizer(lr=1e-3, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        policy.compute_loss(_batch()).backward()
        opt.step()
    return policy.eval(), cfg


def test_trainable_set_is_lora_projector_and_expert():
    policy, _ = _policy(LORA)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if is_lora_key(n)}
    assert len(lora) == LAYERS * len(DEFAULT_TARGETS) * 2                     # A and B per projection
    assert all(".language_model.layers." in n for n in lora)                  # vision tower untouched
    assert trainable - lora == {n for n, _ in policy.named_parameters() if n.startswith(("expert.", "prompt_proj."))}
    frozen_backbone = [n for n, p in policy.named_parameters() if n.startswith("backbone.") and not is_lora_key(n)]
    assert frozen_backbone and all(not p.requires_grad for n, p in policy.named_parameters() if n in frozen_backbone)
    assert not any(is_lora_key(n) for n, _ in policy.backbone.model.model.visual.named_parameters())
    plain, _ = _policy()
    lora_numel = sum(p.numel() for n, p in policy.named_parameters() if n in lora)
    expected = sum(p.numel() for n, p in plain.named_parameters() if n.startswith(("expert.", "prompt_proj.")))
    assert policy.num_trainable_parameters() == expected + lora_numel
    only_qv, _ = _policy(LORA + ["policy.lora_target_modules=[q_proj,v_proj]"])
    assert sum(".lora_A." in n for n, _ in only_qv.named_parameters()) == LAYERS * 2


def test_fresh_lora_model_equals_the_plain_model():
    """lora_B starts at zero and LoRA init uses its own RNG: same weights, bit-identical outputs."""
    plain, _ = _policy()
    lora, _ = _policy(LORA)
    assert all(torch.equal(p, torch.zeros_like(p)) for n, p in lora.named_parameters() if ".lora_B." in n)
    merged = merge_lora_state_dict(lora.state_dict(), alpha=8.0)
    ref = plain.state_dict()
    assert merged.keys() == ref.keys() and all(torch.equal(merged[k], ref[k]) for k in ref)
    a = plain.eval().predict_action(_obs(), noise=_noise())
    b = lora.eval().predict_action(_obs(), noise=_noise())
    assert torch.equal(a["action"], b["action"]) and a["reasoning"] == b["reasoning"]
    torch.manual_seed(7)
    la = plain.compute_loss(_batch())
    torch.manual_seed(7)
    lb = lora.compute_loss(_batch())
    assert torch.equal(la, lb)


def test_training_changes_only_trainable_tensors():
    torch.manual_seed(0)
    policy, _ = _policy(LORA)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    policy.train()
    opt = policy.get_optimizer(lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        policy.compute_loss(_batch()).backward()
        opt.step()
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable, sorted(changed - trainable)
    assert any(".lora_B." in k for k in changed) and any(".lora_A." in k for k in changed)
    assert any(k.startswith("expert.") for k in changed) and any(k.startswith("prompt_proj.") for k in changed)


def test_checkpoint_round_trip_keeps_adapter_keys(tmp_path):
    from safetensors import safe_open

    from controller.policy.loading import load_policy
    from controller.workspace.checkpoint import save_checkpoint

    policy, cfg = _trained_lora_policy()
    ckpt = save_checkpoint(str(tmp_path / "ckpt"), policy, cfg=cfg)
    with safe_open(os.path.join(ckpt, "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert any(".lora_A.default." in k for k in keys) and any(".base_layer." in k for k in keys)
    loaded, _ = load_policy(ckpt)
    assert loaded.lora_rank == 4
    a, b = policy.predict_action(_obs(), noise=_noise()), loaded.predict_action(_obs(), noise=_noise())
    assert torch.equal(a["action"], b["action"]) and a["reasoning"] == b["reasoning"]
    assert a["action"].abs().sum() > 0
    # a fresh process (nothing imported beforehand): the registry builds the LoRA policy from the config
    from safetensors.torch import load_file, save_file
    save_file({"noise": _noise(), "state": _obs()["right_state"], "rgbm": _obs()["rgbm"],
               "wrist": _obs()["right_cam_img"]}, str(tmp_path / "inputs.safetensors"))
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from controller.policy.loading import load_policy\n"
        "torch.set_num_threads(1)\n"
        "x = load_file(sys.argv[2])\n"
        "policy, _ = load_policy(sys.argv[1])\n"
        "obs = {'rgbm': x['rgbm'], 'right_cam_img': x['wrist'], 'right_state': x['state'],\n"
        "       'language': ['grasp the red box', 'grasp the blue cylinder']}\n"
        "save_file({'action': policy.predict_action(obs, noise=x['noise'])['action']}, sys.argv[3])\n")
    out = tmp_path / "action.safetensors"
    subprocess.run([sys.executable, "-c", script, ckpt, str(tmp_path / "inputs.safetensors"), str(out)],
                   cwd=REPO, check=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert torch.equal(load_file(str(out))["action"], a["action"])


def test_stage_chaining_with_lora(tmp_path):
    """Stage 2 with LoRA -> stage 3 with LoRA (one to one), -> stage 3 without LoRA (merged), and a
    plain stage 2 -> stage 3 with LoRA (base layers filled, LoRA at init)."""
    from controller.workspace.checkpoint import save_checkpoint

    s2, cfg = _trained_lora_policy()
    ckpt = save_checkpoint(str(tmp_path / "s2"), s2, cfg=cfg)
    ref = s2.predict_action(_obs(), noise=_noise())["action"]

    s3, _ = _policy(LORA + ["policy.training_stage=3", f"policy.init_from={ckpt}"])
    assert s3.init_report["mode"] == "full" and not s3.init_report["kept_init"] and not s3.init_report["unused"]
    own = s2.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in s3.state_dict().items() if not k.startswith("normalizer."))
    s3.set_normalizer(s2.normalizer)
    assert torch.equal(s3.eval().predict_action(_obs(), noise=_noise())["action"], ref)

    merged, _ = _policy(["policy.training_stage=3", f"policy.init_from={ckpt}"])
    assert f"merged into {LAYERS * len(DEFAULT_TARGETS)} weights" in merged.init_report["lora"]
    assert not merged.init_report["unused"]
    merged.set_normalizer(s2.normalizer)
    out = merged.eval().predict_action(_obs(), noise=_noise())
    torch.testing.assert_close(out["action"], ref, rtol=1e-4, atol=1e-4)

    plain, pcfg = _policy()
    plain_ckpt = save_checkpoint(str(tmp_path / "plain"), plain.eval(), cfg=pcfg)
    wrapped, _ = _policy(LORA + ["policy.training_stage=3", f"policy.init_from={plain_ckpt}"])
    assert sorted(wrapped.init_report["kept_init"]) == sorted(k for k in wrapped.state_dict() if is_lora_key(k))
    assert torch.equal(wrapped.eval().predict_action(_obs(), noise=_noise())["action"],
                       plain.predict_action(_obs(), noise=_noise())["action"])


def test_two_training_steps_through_the_workspace_with_lora(tmp_path):
    """train.py's workspace (optimiser over the trainable parameters, EMA if configured, checkpoint)
    with policy.lora_rank=4; the saved checkpoint loads with load_policy and predicts."""
    import numpy as np

    from controller.policy.loading import load_policy
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    from tests.controller.conftest import compose_cfg
    from tests.controller.dexvla_helpers import write_text_store

    store = write_text_store(tmp_path / "sim_grasp.zarr")
    cfg = compose_cfg(["policy=dexvla_tiny", "task=sim_grasp", f"task.dataset_paths=[{store}]", *LORA,
                       "logging.mode=disabled", "training.num_epochs=1", "training.max_train_steps=2",
                       "training.max_val_steps=1", "task.dataset.val_ratio=0.5", "n_action_steps=16"])
    workspace = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path / "run"))
    metrics = workspace.run()
    assert np.isfinite(metrics["train_loss"]) and workspace.global_step == 2
    loaded, _ = load_policy(str(tmp_path / "run" / "checkpoints" / "latest"))
    assert loaded.lora_rank == 4 and any(is_lora_key(k) for k in loaded.state_dict())
    assert loaded.predict_action(_obs())["action"].shape == (B, loaded.action_horizon, A)
