"""Fast inference paths give the straightforward path's outputs (tiny preset)."""
import json
import platform

import numpy as np
import pytest
import torch

from tests.controller.conftest import REPO, random_obs, run_cli


@pytest.fixture(scope="module")
def tiny(request):
    from tests.controller.conftest import build_policy, fitted_normalizer
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(n))
    policy, cfg = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    return policy.eval(), cfg


def _predict(policy, obs, noise, cached: bool, capture: bool):
    policy.cache_condition_kv = cached
    return policy.predict_action(obs, noise=noise, return_attention=capture)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("capture", [False, True])
def test_cached_kv_equals_straightforward(tiny, seed, capture):
    policy, cfg = tiny
    obs = random_obs(3, cfg.image_size, seed)
    noise = torch.randn(3, 64, 13, generator=torch.Generator().manual_seed(seed))
    fast, slow = _predict(policy, obs, noise, True, capture), _predict(policy, obs, noise, False, capture)
    if capture:
        (fast, rf), (slow, rs) = fast, slow
        assert np.abs(rf["attn"].astype(np.float32) - rs["attn"].astype(np.float32)).max() <= 1e-3
    assert (fast - slow).abs().max().item() <= 1e-4
    # capturing attention maps does not change the actions
    plain = _predict(policy, obs, noise, True, False)
    assert (plain - fast).abs().max().item() <= 1e-6


@pytest.mark.parametrize("seed", [0, 1])
def test_optimised_path_equals_the_benchmarks_straightforward_path(tiny, seed):
    """Explicit attention + K/V recomputed per step (the benchmark's baseline) vs fused SDPA + K/V
    cache + inference_mode: same actions within 1e-4 (the issue's tolerance), backbones included."""
    policy, cfg = tiny
    obs = random_obs(2, cfg.image_size, seed + 10)
    noise = torch.randn(2, 64, 13, generator=torch.Generator().manual_seed(seed))
    try:
        policy.set_fused_attention(False)
        slow = _predict(policy, obs, noise, False, False)
    finally:
        policy.set_fused_attention(True)
    with torch.inference_mode():
        fast = _predict(policy, obs, noise, True, False)
    assert (fast - slow).abs().max().item() <= 1e-4
    n_switchable = sum(hasattr(m, "fused_attn") for m in policy.modules())
    assert n_switchable >= 2 * policy.model.blocks.__len__() + 2  # DiT blocks + both backbones' blocks


def test_inference_mode_matches_no_grad(tiny):
    policy, cfg = tiny
    obs = random_obs(2, cfg.image_size, 5)
    noise = torch.randn(2, 64, 13, generator=torch.Generator().manual_seed(5))
    ref = _predict(policy, obs, noise, True, False)
    with torch.inference_mode():
        fast = _predict(policy, obs, noise, True, False)
    assert torch.equal(ref, fast)


def test_cached_backbone_tokens_give_the_image_path_actions(tiny):
    """Feeding precomputed backbone tokens (+ mask-only rgbm) reproduces the image path."""
    policy, cfg = tiny
    obs = random_obs(2, cfg.image_size, 6)
    noise = torch.randn(2, 64, 13, generator=torch.Generator().manual_seed(6))
    enc = policy.obs_encoder
    with torch.no_grad():
        head = enc.head_rgb_tokens(obs["rgbm"], False).unflatten(0, (2, 1))       # (B, T, n, C)
        wrist = enc.wrist_rgb_tokens(obs["right_cam_img"], False).unflatten(0, (2, 1))
    tok_obs = {"rgbm": obs["rgbm"][:, :, 3:], "right_state": obs["right_state"],
               "head_tokens": head, "wrist_tokens": wrist}
    ref = _predict(policy, obs, noise, True, False)
    assert (policy.predict_action(tok_obs, noise=noise) - ref).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="only the mask"):
        enc({**obs, "rgbm": obs["rgbm"][:, :, 3:]}, training=False)


def test_benchmark_quick_runs(tmp_path):
    res = run_cli(["benchmarks/controller_speed.py", "--policy", "tiny", "--quick", "--no-compile",
                   "--out", str(tmp_path)], cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "straightforward" in res.stdout and "cached features" in res.stdout
    files = [p for p in tmp_path.iterdir() if p.name.startswith("controller_speed_")]
    assert len(files) == 1
    rows = {r["row"]: r for r in json.loads(files[0].read_text())["presets"]["tiny"]["inference"]}
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        # the allocator phase: same actions as the first phase's rows, ratios against both baselines
        tuned = [r for r in rows.values() if r["keep_freed_memory"]]
        assert len(tuned) == 2 and "glibc keeps freed memory" in res.stdout
        for r in tuned:
            assert r["max_abs_diff"] <= 1e-5 and r["speedup_same_allocator"] > 0
    # the sampling rows: K batched samples from one encoding equal K sequential ones
    from controller.policy import defaults
    sampling = json.loads(files[0].read_text())["presets"]["tiny"]["sampling"]
    assert [r["samples"] for r in sampling] == [1, defaults.NUM_SAMPLES, defaults.NUM_SAMPLES]
    assert sampling[2]["max_abs_diff_vs_sequential"] <= 1e-5 and sampling[2]["speedup_vs_sequential"] > 0
    assert "sampling, " in res.stdout
    # the shared-backbone rows: one batched call of one ViT gives the two calls' condition tokens
    shared = json.loads(files[0].read_text())["presets"]["tiny"]["shared_backbone"]
    assert len(shared) == 2 and shared[1]["max_abs_diff"] <= 1e-5 and shared[1]["speedup"] > 0
    assert shared[0]["params_m"] > shared[1]["params_m"] and "one shared" in res.stdout


def test_compiled_for_inference_equals_eager_and_refuses_stale_weights():
    """compile_for_inference (torch.compile, frozen weights): same actions as the eager optimised
    path; changing a weight afterwards raises instead of running the old frozen weights."""
    from controller.policy.inference_compile import StaleCompiledPolicyError
    from tests.controller.conftest import build_policy, fitted_normalizer
    policy, cfg = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    policy.eval()
    obs = random_obs(2, cfg.image_size, 7)
    noise = torch.randn(2, 64, 13, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = policy.predict_action(obs, noise=noise)
    policy.compile_for_inference()
    with torch.inference_mode():
        out = policy.predict_action(obs, noise=noise)
        again = policy.predict_action(obs, noise=noise)
        _, record = policy.predict_action(obs, noise=noise, return_attention=True)  # eager capture path
    assert (out - ref).abs().max().item() <= 1e-5 and torch.equal(out, again)
    assert record["attn"].shape[0] == policy.num_inference_steps
    with torch.no_grad():
        policy.model.head.bias.add_(0.1)
    with pytest.raises(StaleCompiledPolicyError, match="changed after compile_for_inference"):
        policy.predict_action(obs, noise=noise)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compile_refuses_cuda_graph_modes(mode):
    """CUDA-graph modes reuse output buffers, which the in-place key/value cache would corrupt."""
    from tests.controller.conftest import build_policy
    policy, _ = build_policy("tiny")
    with pytest.raises(ValueError, match="no-cudagraphs"):
        policy.compile_for_inference(mode=mode)
