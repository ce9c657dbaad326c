"""Converting checkpoints written by the original DexGraspVLA code.

The inputs are built by tests/controller/reference_fixtures.py from the original's own layout
(its three empty ``_dummy_variable`` parameters, official DINOv2 keys with ``mask_token`` and a
518-px ``pos_embed``, the 2740-row ``cond_pos_emb``, an OmegaConf cfg, dill pickling) -- never
from our policy's keys. The "direct" side of each comparison loads the same tensors into our
policy by hand, with the test's own mapping.
"""
import contextlib
import io
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from controller.convert_checkpoint import ConversionError, choose_preset, convert, main
from controller.policy.loading import load_policy
from controller.reference_format import cfg_tree, reference_model_fields
from tests.controller.conftest import build_policy, compose_cfg, random_obs
from tests.controller.reference_fixtures import (DUMMY_KEYS, OriginalSpec, dinov2_runtime_pos_embed,
                                                 original_cfg, original_trainable_names, write_original_checkpoint)

dill = pytest.importorskip("dill")

SPEC = OriginalSpec()
BACKBONE_OVERRIDES = SPEC.converter_overrides()   # the tiny ViTs are not a hub model the cfg can name
CFG_OVERRIDES = ["image_size=56", "policy.obs_encoder.head.model_type=dinov2_vits14",
                 "policy.obs_encoder.wrist.model_type=dinov2_vits14", "policy.num_inference_steps=4",
                 "policy.n_layer=2"]
MASK_TOKENS = ("obs_encoder.dino_head.mask_token", "obs_encoder.dino_wrist.mask_token")


def _cli(ref, out, *flags):
    args = [str(ref), str(out), "--trust-pickle", *flags]
    for o in BACKBONE_OVERRIDES:
        args += ["--override", o]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.warns(UserWarning, match="unpickling"):
        code = main(args)
    return code, buf.getvalue()


def _convert(ref, out, **kw):
    with pytest.warns(UserWarning, match="unpickling"):
        return convert(str(ref), str(out), trust_pickle=True, extra_overrides=BACKBONE_OVERRIDES, **kw)


def _direct_policy(sd):
    """Our policy with the original's tensors loaded by hand: dummies and mask tokens left out,
    pos_embed as DINOv2 interpolates it at run time, cond_pos_emb's rows the original reads."""
    policy, _ = build_policy("paper", CFG_OVERRIDES + BACKBONE_OVERRIDES)
    own = policy.state_dict()
    hand = {}
    for k, v in sd.items():
        if k in DUMMY_KEYS or k in MASK_TOKENS:
            continue
        if k.endswith(".pos_embed"):
            v = dinov2_runtime_pos_embed(v, SPEC.grid)
        if k == "model.cond_pos_emb":
            v = v[:, :own[k].shape[1]]
        hand[k] = v
    policy.normalizer.load_state_dict({k[len("normalizer."):]: v for k, v in hand.items()
                                       if k.startswith("normalizer.")})
    policy.load_state_dict(hand, strict=True)
    return policy.eval()


def _actions(policy):
    torch.manual_seed(0)
    noise = torch.randn(2, 64, 13)
    return policy.predict_action(random_obs(2, SPEC.image_size), noise=noise)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """An original-layout file with EMA and optimizer, converted once with the CLI (raw weights)."""
    d = tmp_path_factory.mktemp("orig")
    ref = d / "ref.ckpt"
    written = write_original_checkpoint(ref, ema=True, optimizer=True)
    code, stdout = _cli(ref, d / "out")
    assert code == 0, stdout
    return {"ref": ref, "out": d / "out", "stdout": stdout, **written}


def test_fixture_has_the_original_layout(original):
    payload = torch.load(original["ref"], weights_only=False, pickle_module=dill)
    assert set(payload) == {"cfg", "state_dicts", "pickles"}
    assert OmegaConf.is_config(payload["cfg"])
    assert set(payload["state_dicts"]) == {"model", "ema_model", "optimizer"}
    sd = payload["state_dicts"]["model"]
    assert list(sd)[0] == "_dummy_variable"
    for k in DUMMY_KEYS:
        assert sd[k].shape == (0,)
    for k in ("obs_encoder.dino_head.mask_token", "obs_encoder.dino_wrist.blocks.1.ls2.gamma",
              "obs_encoder.dino_head.blocks.0.attn.qkv.weight",
              "obs_encoder.mask_process_net.transformer.layers.3.self_attn.in_proj_weight",
              "model.blocks.1.cross_attn.kv.weight", "normalizer.params_dict.right_state.input_stats.std"):
        assert k in sd, k
    assert sd["obs_encoder.dino_head.pos_embed"].shape == (1, 37 * 37 + 1, 64)
    assert sd["model.cond_pos_emb"].shape == (1, 2740, 64)
    assert isinstance(payload["pickles"]["epoch"], bytes)


def test_conversion_report(original):
    out, stdout = original["out"], original["stdout"]
    report = json.loads((out / "conversion_report.json").read_text())
    m = report["mapping"]
    assert m["counts"] == {"kept": 206, "renamed": 0, "resampled": 2, "truncated": 1, "dropped": 5}
    assert sum(m["counts"].values()) == len(original["model"])
    assert set(m["dropped"]) == set(DUMMY_KEYS) | set(MASK_TOKENS)
    assert set(m["resampled"]) == {"obs_encoder.dino_head.pos_embed", "obs_encoder.dino_wrist.pos_embed"}
    assert m["truncated"]["model.cond_pos_emb"]["to"] == [1, 34, 64]
    assert report["weights"] == "model" and report["unused_state_dicts"] == ["ema_model", "optimizer"]
    assert report["preset"]["name"] == "paper"
    assert report["cfg_overrides"] == CFG_OVERRIDES  # the file's cfg fits no preset exactly
    assert report["original_run"] == {"epoch": SPEC.epoch, "global_step": SPEC.global_step}
    assert report["training_state"] is None
    for line in ("kept 206, renamed 0, resampled 2, truncated 1, dropped 5", "dropped:   _dummy_variable:",
                 "dropped:   model._dummy_variable:", "dropped:   obs_encoder._dummy_variable:",
                 "dropped:   obs_encoder.dino_head.mask_token:", "preset: paper", "conversion_report.json"):
        assert line in stdout, line


def test_nothing_is_unpickled_without_the_flag(original, tmp_path):
    assert main([str(original["ref"]), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "not_ref.ckpt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ConversionError, match="not a reference checkpoint"):
        convert(str(bad), str(tmp_path / "out2"), trust_pickle=False, preset="tiny")


def test_converted_actions_equal_the_direct_computation(original):
    converted, cfg = load_policy(str(original["out"]))
    assert cfg.image_size == 56 and cfg.policy.n_layer == 2
    direct = _direct_policy(original["model"])
    assert torch.equal(_actions(converted), _actions(direct))


def test_use_ema_selects_ema_model(original, tmp_path):
    report = _convert(original["ref"], tmp_path / "ema", use_ema=True)
    assert report["weights"] == "ema_model" and "model" in report["unused_state_dicts"]
    converted, _ = load_policy(str(tmp_path / "ema"))
    ema_actions = _actions(converted)
    assert torch.equal(ema_actions, _actions(_direct_policy(original["ema_model"])))
    assert not torch.allclose(ema_actions, _actions(_direct_policy(original["model"])))
    raw_only = tmp_path / "raw.ckpt"
    write_original_checkpoint(raw_only)
    with pytest.raises(ConversionError, match="no 'ema_model'.*training.use_ema=true"):
        _convert(raw_only, tmp_path / "none", use_ema=True)


def test_unknown_or_missing_tensors_fail_with_their_names(tmp_path):
    bad = tmp_path / "bad.ckpt"
    write_original_checkpoint(bad, extra_tensors={"obs_encoder.extra_proj.weight": torch.randn(4, 4)},
                              drop_keys=("model.head.weight",))
    with pytest.raises(ConversionError) as err:
        _convert(bad, tmp_path / "out")
    msg = str(err.value)
    assert "unknown non-empty tensors in the file: obs_encoder.extra_proj.weight [4, 4]" in msg
    assert "missing keys" in msg and "model.head.weight [13, 64]" in msg
    assert not (tmp_path / "out").exists()
    # an empty tensor the original might add elsewhere is dropped and listed, not an error
    ok = tmp_path / "ok.ckpt"
    write_original_checkpoint(ok, extra_tensors={"obs_encoder.aux._dummy_variable": torch.empty(0)})
    report = _convert(ok, tmp_path / "ok")
    assert "obs_encoder.aux._dummy_variable" in report["mapping"]["dropped"]


def _paper_cfg(**changes):
    cfg = original_cfg(OriginalSpec(image_size=518, n_layer=12, num_inference_steps=16))
    OmegaConf.update(cfg, "policy.obs_encoder.model_config.head.model_type", "dinov2_vitb14")
    OmegaConf.update(cfg, "policy.obs_encoder.model_config.wrist.model_type", "dinov2_vitl14")
    for k, v in changes.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


def test_the_files_cfg_picks_the_preset():
    name, how, diffs = choose_preset(reference_model_fields(cfg_tree(_paper_cfg())), None)
    assert (name, diffs) == ("paper", []) and "matches it in all" in how
    name, how, diffs = choose_preset(reference_model_fields(cfg_tree(_paper_cfg(**{
        "policy.n_layer": 8, "policy.eta": 0.0}))), None)
    assert name == "paper" and "fits no preset" in how
    assert [d["override"] for d in diffs] == ["policy.n_layer=8", "+policy.eta=0.0"]
    with pytest.raises(ConversionError, match="no cfg.*--preset"):
        choose_preset(None, None)


@pytest.mark.parametrize("field,value,match", [
    ("policy.noise_scheduler.prediction_type", "v_prediction", "'policy.noise_scheduler.prediction_type'"),
    ("policy.obs_encoder.model_config.wrist.model_type", "dinov2_vitb14_reg",
     "'policy.obs_encoder.model_config.wrist.model_type'"),
    ("task.image_shape", [3, 480, 640], "'task.image_shape'"),
    ("n_action_steps", "${eval:'32*2'}", "'n_action_steps'.*interpolation"),
])
def test_a_cfg_field_we_cannot_express_is_named(field, value, match):
    with pytest.raises(ConversionError, match=match):
        reference_model_fields(cfg_tree(_paper_cfg(**{field: value})))


class _OneProcess:
    """The slice of accelerate's Accelerator that TrainDexGraspVLAControllerWorkspace._resume uses."""
    num_processes, process_index = 1, 0

    @staticmethod
    def unwrap_model(m):
        return m

    @staticmethod
    def print(*_args):
        pass


def test_with_optimizer_resumes_the_original_run(original, tmp_path):
    from diffusers.optimization import get_scheduler

    from controller.model.diffusion.ema_model import EMAModel
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace

    out = tmp_path / "resume"
    report = _convert(original["ref"], out, with_optimizer=True)
    ts = report["training_state"]
    assert ts["optimizer"]["status"].startswith("AdamW state mapped by name")
    state = torch.load(out / "training_state.pt", weights_only=True)
    assert state["epoch"] == SPEC.epoch and state["global_step"] == SPEC.global_step + 1
    assert "training.num_epochs=125" in ts["train_overrides"]

    cfg = compose_cfg(["policy=paper", *CFG_OVERRIDES, *BACKBONE_OVERRIDES, "training.use_ema=true",
                       f"training.resume_from={out}"])
    policy, _ = build_policy("paper", CFG_OVERRIDES + BACKBONE_OVERRIDES)  # fresh weights, replaced by _resume
    ws = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path / "run"))
    ws.policy = ws.model = policy
    ws.optimizer = policy.get_optimizer(**cfg.optimizer)
    ws.lr_scheduler = get_scheduler("cosine", optimizer=ws.optimizer, num_warmup_steps=10, num_training_steps=1000)
    ws.ema = EMAModel(policy, **cfg.ema)
    ws._resume(_OneProcess())
    assert ws.epoch == SPEC.epoch + 1 and ws.global_step == SPEC.global_step + 1
    assert ws.ema.optimization_step == SPEC.global_step + 1

    # the moments sit on the right parameters, by name
    orig_opt, orig_params = original["opt"], original["params"]
    ours = dict(policy.named_parameters())
    rows = ours["model.cond_pos_emb"].shape[1]
    cut = (lambda n, t: t[:, :rows] if n == "model.cond_pos_emb" else t)
    for name, p in orig_params.items():
        assert torch.equal(ours[name].detach(), cut(name, p.detach())), name
        assert torch.equal(ws.optimizer.state[ours[name]]["exp_avg"], cut(name, orig_opt.state[p]["exp_avg"])), name
    for name in original_trainable_names(original["model"]):
        assert torch.equal(ws.ema.shadow[name], cut(name, original["ema_model"][name]).float()), name

    # one more step on both sides with the same gradients: the same weights
    g = torch.Generator().manual_seed(5)
    grads = {n: torch.randn(p.shape, generator=g) * 1e-2 for n, p in orig_params.items()}
    for n, p in orig_params.items():
        p.grad = grads[n].clone()
    orig_opt.step()
    for n, p in ours.items():
        if p.requires_grad:
            p.grad = cut(n, grads[n]).clone()
    ws.optimizer.step()
    for n, p in orig_params.items():
        torch.testing.assert_close(ours[n].detach(), cut(n, p.detach()), rtol=1e-6, atol=1e-8, msg=n)


@pytest.mark.parametrize("case", ["no optimizer in the file", "optimizer of another model"])
def test_with_optimizer_carries_epoch_and_step_when_the_state_cannot_be_mapped(case, tmp_path):
    ref = tmp_path / "ref.ckpt"
    if case == "no optimizer in the file":
        write_original_checkpoint(ref)
        why = "training.resume=true"
    else:
        import dill as _dill
        write_original_checkpoint(ref, optimizer=True)
        payload = torch.load(ref, weights_only=False, pickle_module=_dill)
        groups = payload["state_dicts"]["optimizer"]["param_groups"]
        groups[1]["params"].append(groups[0]["params"].pop())  # one tensor in the other group
        with open(ref, "wb") as fh:
            torch.save(payload, fh, pickle_module=_dill)
        why = "split"
    report = _convert(ref, tmp_path / "out", with_optimizer=True)
    opt = report["training_state"]["optimizer"]
    assert opt["status"].startswith("NOT carried") and why in opt["reason"]
    state = torch.load(tmp_path / "out" / "training_state.pt", weights_only=True)
    assert state["epoch"] == SPEC.epoch and state["global_step"] == SPEC.global_step + 1
    assert state["optimizer"]["state"] == {}
    assert os.path.isfile(tmp_path / "out" / "conversion_report.json")


def test_official_backbone_names_are_renamed_to_timms():
    """ViT-g's SwiGLU (mlp.w12/w3) and block-chunked official checkpoints: renamed and listed."""
    from controller.reference_format import map_model_state

    p = "obs_encoder.dino_head."
    target = {p + "blocks.0.mlp.fc1.weight": (8, 4), p + "blocks.0.mlp.fc2.weight": (4, 4),
              p + "blocks.1.norm1.weight": (4,)}
    ref = {p + "blocks.0.mlp.w12.weight": torch.randn(8, 4), p + "blocks.0.mlp.w3.weight": torch.randn(4, 4),
           p + "blocks.0.1.norm1.weight": torch.randn(4), "normalizer.params_dict.action.scale": torch.ones(13)}
    mapped, km = map_model_state(ref, target)
    assert km.renamed == {p + "blocks.0.mlp.w12.weight": p + "blocks.0.mlp.fc1.weight",
                          p + "blocks.0.mlp.w3.weight": p + "blocks.0.mlp.fc2.weight",
                          p + "blocks.0.1.norm1.weight": p + "blocks.1.norm1.weight"}
    assert torch.equal(mapped[p + "blocks.0.mlp.fc1.weight"], ref[p + "blocks.0.mlp.w12.weight"])
