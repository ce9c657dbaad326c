"""Reference-format checkpoint conversion: a payload built like the reference's torch.save(...,
pickle_module=dill) -- OmegaConf cfg, official-DINOv2 backbone keys (with mask_token), the
condition-mask buffers -- converts into our safetensors format and predicts identically."""
import pytest
import torch
from omegaconf import OmegaConf

from controller.convert_checkpoint import ConversionError, convert, main
from controller.policy.loading import load_policy
from tests.controller.conftest import random_obs

dill = pytest.importorskip("dill")


def _reference_payload(policy, path, drop_key=None):
    sd = dict(policy.state_dict())
    for prefix in ("obs_encoder.dino_head.", "obs_encoder.dino_wrist."):
        sd[prefix + "mask_token"] = torch.zeros(1, 32)  # official DINOv2 layout
    for i in range(2):
        sd[f"model.blocks.{i}.cross_attn.masks"] = torch.ones(4, 64, 35, dtype=torch.bool)
        sd[f"model.blocks.{i}.cross_attn.probs"] = torch.tensor([0.1, 0.1, 0.1, 0.7])
    if drop_key:
        sd.pop(drop_key)
    cfg = OmegaConf.create({
        "policy": {"n_layer": 2, "n_head": 2, "num_inference_steps": 4, "use_attn_mask": False,
                   "obs_encoder": {"model_config": {"head": {"model_type": "dinov2_vits14"},
                                                    "wrist": {"model_type": "dinov2_vits14"}}},
                   "noise_scheduler": {"num_train_timesteps": 50, "beta_schedule": "squaredcos_cap_v2",
                                       "prediction_type": "epsilon"}},
        "task": {"image_shape": [3, 56, 56]}, "n_action_steps": 64})
    torch.save({"cfg": cfg, "state_dicts": {"model": sd, "optimizer": {}}, "pickles": {}}, path, pickle_module=dill)


def test_convert_round_trip(tmp_path, make_policy):
    policy, _ = make_policy()
    policy.eval()
    ref = tmp_path / "ref.ckpt"
    _reference_payload(policy, ref)
    # without the explicit flag nothing is unpickled
    assert main([str(ref), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="unpickling"):
        convert(str(ref), str(tmp_path / "out"), trust_pickle=True, preset="tiny")
    converted, cfg = load_policy(str(tmp_path / "out"))
    assert cfg.policy.n_layer == 2 and cfg.image_size == 56
    obs, noise = random_obs(2, 56), torch.randn(2, 64, 13)
    assert torch.equal(policy.predict_action(obs, noise=noise), converted.predict_action(obs, noise=noise))


def test_convert_reports_mismatch(tmp_path, make_policy):
    policy, _ = make_policy()
    ref = tmp_path / "ref.ckpt"
    _reference_payload(policy, ref, drop_key="model.head.weight")
    with pytest.warns(UserWarning), pytest.raises(ConversionError, match="missing keys: model.head.weight"):
        convert(str(ref), str(tmp_path / "out"), trust_pickle=True, preset="tiny")
    bad = tmp_path / "not_ref.ckpt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ConversionError, match="not a reference checkpoint"):
        convert(str(bad), str(tmp_path / "out2"), trust_pickle=False, preset="tiny")
