"""Released ScaleDP weights -> safetensors (``convert_checkpoint --format scaledp``): a fixture in
the released layout ({'nets': {'nets': state_dict}} with the reference's key names, pickled with
torch.save here), the key-mapping report, identical outputs after conversion, errors naming keys,
and a DexVLA policy starting from the file (``policy.init_from``)."""
import json

import pytest
import torch
from safetensors import safe_open

from controller.convert_checkpoint import main
from controller.convert_scaledp import convert_scaledp, report_path_for
from controller.model.scaledp import ScaleDP, ScaleDPConfig
from controller.reference_format import ConversionError

# the dexvla_tiny expert inside a stage-2 tiny policy: backbone width 64, 13-D state/action, 16 steps
CFG = ScaleDPConfig(action_dim=13, horizon=16, cond_dim=64, state_dim=13, depth=2, width=32, num_heads=2,
                    mlp_ratio=2.0, combine_hidden=64)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _source_net():
    """A ScaleDP with every tensor random (the zero-initialised adaLN/final layers too)."""
    torch.manual_seed(0)
    net = ScaleDP(CFG)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def _released(tmp_path, net, extra=None, name="scale_dp_tiny.ckpt"):
    """The released layout: ckpt['nets']['nets'] = the stage-1 policy's state dict."""
    sd = {f"policy.noise_pred_net.{k}": v.clone() for k, v in net.state_dict().items()}
    sd["policy.backbones.0.conv1.weight"] = torch.randn(4, 3, 3, 3)        # a stage-1 observation encoder
    sd["policy.noise_pred_net.norm_after_pool.weight"] = torch.ones(CFG.cond_dim)
    sd.update(extra or {})
    path = tmp_path / name
    torch.save({"nets": {"nets": sd, "ema": {}}, "epoch": 7}, path)
    return path


def test_convert_report_and_identical_outputs(tmp_path, capsys):
    net = _source_net()
    ref = _released(tmp_path, net)
    out = tmp_path / "expert.safetensors"
    with pytest.warns(UserWarning, match="unpickling"):
        assert main([str(ref), str(out), "--trust-pickle", "--format", "scaledp", "--num-heads", "2"]) == 0
    assert "kept" in capsys.readouterr().out
    report = json.load(open(report_path_for(str(out))))
    n = len(net.state_dict())
    assert report["mapping"]["counts"] == {"source": n + 2, "kept": 0, "renamed": n, "dropped": 2}
    assert {"from": "policy.noise_pred_net.x_embedder.weight", "to": "x_embedder.weight"} in report["mapping"]["renamed"]
    assert set(report["mapping"]["dropped"]) == {"policy.backbones.0.conv1.weight",
                                                 "policy.noise_pred_net.norm_after_pool.weight"}
    assert report["config"]["depth"] == 2 and report["config"]["state_dim"] == 13 and report["config"]["mlp_ratio"] == 2
    assert report["unused_entries"] == {"top_level": ["epoch"], "nets": ["ema"]}
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "scaledp-expert-v1"
        loaded = {k: f.get_tensor(k) for k in f.keys()}
    copy = ScaleDP(ScaleDPConfig(**json.loads(meta["config"])))
    copy.load_state_dict(loaded, strict=True)
    g = torch.Generator().manual_seed(1)
    x, cond, state = torch.randn(3, 16, 13, generator=g), torch.randn(3, 64, generator=g), torch.randn(3, 13, generator=g)
    t = torch.tensor([0, 40, 99])
    with torch.no_grad():
        assert torch.equal(copy(x, t, cond, state), net(x, t, cond, state))


def test_unknown_key_is_an_error_naming_it(tmp_path):
    ref = _released(tmp_path, _source_net(), {"policy.noise_pred_net.extra_head.weight": torch.ones(3)})
    with pytest.raises(ConversionError, match=r"unknown key 'policy\.noise_pred_net\.extra_head\.weight'"):
        convert_scaledp(str(ref), str(tmp_path / "o.safetensors"))
    # an empty one is dropped and reported
    ref = _released(tmp_path, _source_net(), {"policy.noise_pred_net.extra_head.weight": torch.ones(0)}, "e.ckpt")
    rep = convert_scaledp(str(ref), str(tmp_path / "e.safetensors"), num_heads=2)
    assert rep["mapping"]["dropped"]["policy.noise_pred_net.extra_head.weight"] == "empty tensor"


def test_missing_tensor_and_wrong_layout_are_errors(tmp_path):
    net = _source_net()
    sd = {f"noise_pred_net.{k}": v for k, v in net.state_dict().items() if k != "blocks.1.mlp.fc2.bias"}
    torch.save({"nets": {"nets": sd}}, tmp_path / "m.ckpt")
    with pytest.raises(ConversionError, match=r"missing .*blocks\.1\.mlp\.fc2\.bias"):
        convert_scaledp(str(tmp_path / "m.ckpt"), str(tmp_path / "m.safetensors"))
    torch.save({"state_dicts": {}}, tmp_path / "w.ckpt")
    with pytest.raises(ConversionError, match=r"not a released ScaleDP checkpoint.*\['state_dicts'\]"):
        convert_scaledp(str(tmp_path / "w.ckpt"), str(tmp_path / "w.safetensors"))
    assert main([str(tmp_path / "w.ckpt"), str(tmp_path / "w2.safetensors"), "--format", "scaledp"]) == 2
    ref = _released(tmp_path, net, name="h.ckpt")
    with pytest.raises(ConversionError, match="width 32 is not a preset width.*--num-heads"):
        convert_scaledp(str(ref), str(tmp_path / "h.safetensors"))


def test_drop_cond_obs_emb_and_policy_starts_from_the_file(tmp_path):
    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    from tests.controller.conftest import build_policy

    net = _source_net()
    out = tmp_path / "x.safetensors"
    rep = convert_scaledp(str(_released(tmp_path, net)), str(out), num_heads=2, drop_cond_obs_emb=True)
    assert rep["cond_obs_emb"] == "dropped" and "policy.noise_pred_net.cond_obs_emb.weight" in rep["mapping"]["dropped"]
    policy, _ = build_policy("dexvla_tiny", ["task=sim_grasp", "n_action_steps=16", f"policy.init_from={out}"])
    src, own = net.state_dict(), policy.expert.model.state_dict()
    assert all(torch.equal(own[k], src[k]) for k in src if not k.startswith("cond_obs_emb."))
    assert not torch.equal(own["cond_obs_emb.weight"], src["cond_obs_emb.weight"])   # kept at init
    r = policy.init_report
    assert r["mode"] == "expert" and "expert.model.cond_obs_emb.weight" in r["kept_init"]
    assert any(k.startswith("expert.reasoning_film.") for k in r["kept_init"]) and r["unused"] == []
