"""Frozen-backbone feature cache: round trip, resume, jitter copies, refusals, training on it."""
import hydra
import numpy as np
import pytest
import torch
import zarr

from controller.dataset.cache_features import FeatureCacheError, main as cache_main
from tests.controller.conftest import compose_cfg
from tests.controller.dataset.factories import make_grasp_zarr

LENGTHS = (5, 12)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_grasp_zarr(str(tmp_path_factory.mktemp("fc") / "d.zarr"), episode_lengths=LENGTHS)


def _cache(store, out, *extra):
    return cache_main(["policy=tiny", f"task.dataset_paths=[{store}]", f"feature_cache.out={out}",
                       "feature_cache.batch_size=4", *extra])


@pytest.fixture(scope="module")
def clean_cache(store, tmp_path_factory):
    return _cache(store, str(tmp_path_factory.mktemp("fc") / "f.zarr"))


def _encoder_and_dataset(store, cache=None, overrides=()):
    cfg = compose_cfg(["policy=tiny", f"task.dataset_paths=[{store}]", *overrides]
                      + ([f"feature_cache.path={cache}"] if cache else []))
    torch.manual_seed(int(cfg.training.seed))
    policy = hydra.utils.instantiate(cfg.policy)
    return policy, hydra.utils.instantiate(cfg.task.dataset), cfg


def test_cached_tokens_equal_backbone_output(store, clean_cache):
    policy, ds, _ = _encoder_and_dataset(store)
    enc = policy.obs_encoder.eval()
    g = zarr.open_group(clean_cache, mode="r")["store_0"]
    assert g["head_tokens"].shape == (sum(LENGTHS), 1, 16, 32) and g["head_tokens"].dtype == np.float16
    for idx in (0, 7, len(ds) - 1):
        obs = {k: v[None] for k, v in ds[idx]["obs"].items()}       # images, batch of 1
        step = int(ds.samplers[0].window(idx)[0][0])
        with torch.no_grad():
            head = enc.head_rgb_tokens(obs["rgbm"], False)[0].numpy()          # (16, 32)
            wrist = enc.wrist_rgb_tokens(obs["right_cam_img"], False)[0].numpy()
        np.testing.assert_allclose(g["head_tokens"][step, 0].astype(np.float32), head, atol=1e-2, rtol=1e-3)
        np.testing.assert_allclose(g["wrist_tokens"][step, 0].astype(np.float32), wrist, atol=1e-2, rtol=1e-3)
        np.testing.assert_array_equal(g["mask"][step], obs["rgbm"][0, 0, 3:].numpy().astype(np.uint8))


def test_dataset_serves_cached_tokens(store, clean_cache):
    _, plain, _ = _encoder_and_dataset(store)
    _, cached, _ = _encoder_and_dataset(store, clean_cache)
    assert len(plain) == len(cached)
    g = zarr.open_group(clean_cache, mode="r")["store_0"]
    for idx in (0, 3, len(plain) - 1):
        a, b = plain[idx], cached[idx]
        assert set(b["obs"]) == {"rgbm", "head_tokens", "wrist_tokens", "right_state"}
        assert b["obs"]["rgbm"].shape == (1, 1, 56, 56) and b["obs"]["head_tokens"].shape == (1, 16, 32)
        assert torch.equal(a["obs"]["rgbm"][:, 3:], b["obs"]["rgbm"])
        assert torch.equal(a["action"], b["action"]) and torch.equal(a["obs"]["right_state"], b["obs"]["right_state"])
        step = int(cached.samplers[0].window(idx)[0][0])
        assert np.array_equal(b["obs"]["head_tokens"][0].numpy(), g["head_tokens"][step, 0])


def test_resume_fills_only_missing_batches(store, clean_cache, tmp_path):
    import shutil
    out = str(tmp_path / "f.zarr")
    shutil.copytree(clean_cache, out)
    g = zarr.open_group(out, mode="r+")["store_0"]
    g["done"][2:] = 0                          # "interrupted" after two batches of four frames
    g["head_tokens"][8:] = 0
    g["wrist_tokens"][8:] = 0
    g["head_tokens"][0:1] = 7                  # a finished batch must not be rewritten
    _cache(store, out)
    ref = zarr.open_group(clean_cache, mode="r")["store_0"]
    g = zarr.open_group(out, mode="r")["store_0"]
    assert np.asarray(g["done"][...]).all()
    assert np.array_equal(g["head_tokens"][8:], ref["head_tokens"][8:])
    assert np.array_equal(g["wrist_tokens"][8:], ref["wrist_tokens"][8:])
    assert (g["head_tokens"][0] == 7).all()
    with pytest.raises(FeatureCacheError, match="other settings"):
        _cache(store, out, "feature_cache.jitter_copies=2")


def test_jitter_copies_are_deterministic(store, tmp_path):
    a = _cache(store, str(tmp_path / "a.zarr"), "feature_cache.jitter_copies=2")
    g = zarr.open_group(a, mode="r+")["store_0"]
    ha = g["head_tokens"][...]
    g["done"][3:] = 0                                     # redo the last two batches (seeded per batch)
    g["head_tokens"][12:] = 0
    _cache(store, a, "feature_cache.jitter_copies=2")
    assert ha.shape[1] == 2 and np.array_equal(ha, g["head_tokens"][...])
    assert not np.array_equal(ha[:, 0], ha[:, 1])        # two different jitter draws
    _, ds, _ = _encoder_and_dataset(store, a)
    torch.manual_seed(0)
    seen = {int(np.array_equal(ds[4]["obs"]["head_tokens"][0].numpy(), ha[4, 1])) for _ in range(12)}
    assert seen == {0, 1}                                 # both copies get drawn


def test_trainable_backbones_are_refused(store, tmp_path):
    with pytest.raises(FeatureCacheError, match="trainable"):
        _cache(store, str(tmp_path / "x.zarr"), "policy.obs_encoder.head.frozen=false")


def test_mismatched_backbone_is_refused(store, clean_cache):
    policy, ds, _ = _encoder_and_dataset(store, clean_cache, ["training.seed=7"])  # other random backbones
    policy.set_normalizer(ds.get_normalizer())
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    with pytest.raises(FeatureCacheError, match="different head backbone"):
        policy.compute_loss(batch)
    with pytest.raises(Exception, match="not found"):  # raised inside hydra's instantiate
        _encoder_and_dataset(store, clean_cache + ".missing")


def test_training_on_cached_features_lowers_the_loss(store, clean_cache, one_thread):
    policy, ds, _ = _encoder_and_dataset(store, clean_cache)
    policy.set_normalizer(ds.get_normalizer())
    policy.train()
    torch.manual_seed(0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(0, len(ds), 2)])
    opt = policy.get_optimizer(lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(25):
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert all(p.grad is None for p in policy.obs_encoder.dino_head.parameters())
    policy.eval()
    _, rec = policy.predict_action({k: v[:2] for k, v in batch["obs"].items()}, return_attention=True)
    assert rec["attn"].shape[2] == 2


def test_workspace_trains_on_cached_features(store, clean_cache, tmp_path):
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    cfg = compose_cfg(["policy=tiny", "logging.mode=disabled", f"task.dataset_paths=[{store}]",
                       f"feature_cache.path={clean_cache}", "training.num_epochs=1", "training.max_train_steps=3"])
    metrics = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path)).run()
    assert np.isfinite(metrics["train_loss"]) and "train_action_mse_error" in metrics
