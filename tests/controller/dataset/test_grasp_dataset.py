"""GraspDataset: sample contract, padding, split, multi-store, normaliser, workers, config use."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from controller.common.shape_meta import ShapeMetaError, make_shape_meta
from controller.dataset import DatasetError, GraspDataset, ZarrReplayBuffer
from controller.dataset.image_ops import rgbm_uint8_to_float_chw
from tests.controller.dataset.factories import DEFAULT_LENGTHS as LENGTHS, decode_action


def test_sample_contract(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta)
    assert len(ds) == sum(LENGTHS)  # a window starts at every step
    s = ds[0]
    assert set(s) == {"obs", "action", "action_is_pad"}
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in s["obs"].items()}
    assert shapes == {"rgbm": ((1, 4, 32, 40), torch.float32), "right_cam_img": ((1, 3, 32, 40), torch.float32),
                      "right_state": ((1, 13), torch.float32)}
    assert s["action"].shape == (64, 13) and s["action"].dtype == torch.float32
    assert s["action_is_pad"].shape == (64,) and s["action_is_pad"].dtype == torch.bool
    assert 0 <= s["obs"]["right_cam_img"].min() and s["obs"]["right_cam_img"].max() <= 1
    assert set(torch.unique(s["obs"]["rgbm"][:, 3]).tolist()) <= {0.0, 1.0}


def test_images_match_runtime_preprocessing(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta)
    raw = ZarrReplayBuffer.open(grasp_zarr)["rgbm"][17]
    np.testing.assert_array_equal(ds[17]["obs"]["rgbm"][0].numpy(), rgbm_uint8_to_float_chw(raw, (32, 40)))


def test_padding_and_windows_stay_in_episode(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta)
    ends = np.cumsum(LENGTHS)
    for i in range(len(ds)):
        s = ds[i]
        ep = int(np.searchsorted(ends, i, side="right"))
        t = i - (ends[ep] - LENGTHS[ep])
        pad = s["action_is_pad"].numpy()
        n_real = min(64, LENGTHS[ep] - t)
        np.testing.assert_array_equal(pad, np.arange(64) >= n_real)
        decoded = [decode_action(r) for r in s["action"].numpy()]
        assert decoded[:n_real] == [(ep, t + k) for k in range(n_real)]
        assert all(d == (ep, LENGTHS[ep] - 1) for d in decoded[n_real:])  # last action repeated
        assert decode_action(s["obs"]["right_state"][0].numpy()) == (ep, max(t - 1, 0))  # state = prev target


def test_no_padding_option(grasp_zarr, shape_meta):
    sm = make_shape_meta((32, 40), action_horizon=16)
    ds = GraspDataset([grasp_zarr], sm, pad_action=False)
    assert len(ds) == sum(max(0, n - 16 + 1) for n in LENGTHS)
    assert not any(ds[i]["action_is_pad"].any() for i in range(0, len(ds), 7))


def test_val_split_by_episode(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta, val_ratio=0.5, seed=3)
    val = ds.get_validation_dataset()
    train_eps = {decode_action(ds[i]["action"][0])[0] for i in range(len(ds))}
    val_eps = {decode_action(val[i]["action"][0])[0] for i in range(len(val))}
    assert train_eps and val_eps and not train_eps & val_eps and train_eps | val_eps == {0, 1, 2, 3}
    assert len(ds) + len(val) == sum(LENGTHS)
    again = GraspDataset([grasp_zarr], shape_meta, val_ratio=0.5, seed=3)
    assert len(again) == len(ds) and torch.equal(again[0]["action"], ds[0]["action"])
    other = [GraspDataset([grasp_zarr], shape_meta, val_ratio=0.5, seed=s).train_masks[0] for s in range(6)]
    assert len({tuple(m) for m in other}) > 1  # the seed matters


def test_max_train_episodes(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta, max_train_episodes=2, seed=0)
    eps = {decode_action(ds[i]["action"][0])[0] for i in range(len(ds))}
    assert len(eps) == 2 and ds.n_episodes == 2
    assert len(ds.get_validation_dataset()) == 0  # val_ratio=0: dropped episodes are not val


def test_multiple_paths(make_zarr, shape_meta):
    a = make_zarr("a.zarr", episode_lengths=(5, 6))
    b = make_zarr("b.zarr", episode_lengths=(7,), zarr_format=3, first_episode=5, hw=(24, 30))
    ds = GraspDataset([a, b], shape_meta)
    assert len(ds) == 18
    eps = [decode_action(ds[i]["action"][0])[0] for i in range(len(ds))]
    assert eps == [0] * 5 + [1] * 6 + [5] * 7
    assert ds[-1]["obs"]["rgbm"].shape == (1, 4, 32, 40)  # each store resized to the model size
    with pytest.raises(IndexError):
        ds[18]


def test_normalizer_fitted_on_training_episodes(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta, val_ratio=0.25, seed=1)
    norm = ds.get_normalizer()
    assert set(norm.keys()) == {"action", "right_state"}
    rb = ZarrReplayBuffer.open(grasp_zarr)
    steps = np.repeat(ds.train_masks[0], rb.episode_lengths)
    acts = rb["action"][steps]
    stats = norm.get_input_stats()["action"]
    np.testing.assert_allclose(stats["min"].numpy(), acts.min(0))
    np.testing.assert_allclose(stats["max"].numpy(), acts.max(0))
    n = norm["action"].normalize(torch.from_numpy(acts))
    np.testing.assert_allclose(n.min(0).values[:12].numpy(), -1, atol=1e-5)
    np.testing.assert_allclose(n.max(0).values[:12].numpy(), 1, atol=1e-5)
    np.testing.assert_allclose(n[:, 12].numpy(), 0, atol=1e-6)  # constant dim -> middle of range


def test_shape_meta_mismatches(grasp_zarr):
    with pytest.raises(ShapeMetaError, match="horizon"):
        GraspDataset([grasp_zarr], make_shape_meta(32), horizon=16)
    with pytest.raises(DatasetError, match=r"'data/right_state' has shape \(137, 13\); expected \(K, 12\)"):
        GraspDataset([grasp_zarr], make_shape_meta(32, state_dim=12, action_dim=12))
    with pytest.raises(DatasetError, match="nowhere.zarr"):
        GraspDataset([grasp_zarr, "/nowhere.zarr"], make_shape_meta(32))


def test_dataloader_with_workers(grasp_zarr, shape_meta):
    ds = GraspDataset([grasp_zarr], shape_meta)
    ds.replay_buffers[0]["rgbm"][0]  # open a handle in the parent before forking
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    n = 0
    for batch in loader:
        assert batch["obs"]["rgbm"].shape[1:] == (1, 4, 32, 40)
        n += batch["action"].shape[0]
    assert n == len(ds)


def test_frame_cache(grasp_zarr, shape_meta, tmp_path):
    plain = GraspDataset([grasp_zarr], shape_meta)
    cached = GraspDataset([grasp_zarr], shape_meta, cache_dir=tmp_path / "cache")
    for i in (0, 50, 50, 136):
        a, b = plain[i]["obs"], cached[i]["obs"]
        np.testing.assert_allclose(a["right_cam_img"], b["right_cam_img"], atol=3e-4)
        assert torch.equal(a["rgbm"][:, 3], b["rgbm"][:, 3])
    reopened = GraspDataset([grasp_zarr], shape_meta, cache_dir=tmp_path / "cache")
    assert torch.equal(reopened[50]["obs"]["rgbm"], cached[50]["obs"]["rgbm"])


def test_frame_cache_fill_cli(make_zarr, tmp_path, capsys):
    """Filling the cache ahead of training (2 worker processes) marks every frame ready, the
    dataset then reads exactly what it would have filled lazily, and a second run does nothing."""
    from controller.dataset.frame_cache import main as fill_main
    a, b = make_zarr("a.zarr", episode_lengths=(9, 7)), make_zarr("b.zarr", episode_lengths=(5,), seed=3)
    meta = make_shape_meta(image_size=(28, 28))
    assert fill_main([str(tmp_path / "c"), a, b, "--size", "28", "--workers", "2"]) == 0
    assert "42 frames filled" in capsys.readouterr().out      # (16 + 5) frames x 2 cameras
    filled = GraspDataset([a, b], meta, cache_dir=tmp_path / "c")
    assert all(filled.cache.missing(i, k).size == 0 for i in (0, 1) for k in ("rgbm", "right_cam_img"))
    lazy = GraspDataset([a, b], meta, cache_dir=tmp_path / "lazy")
    for i in (0, 8, 17, len(lazy) - 1):
        for key in ("rgbm", "right_cam_img"):
            assert torch.equal(filled[i]["obs"][key], lazy[i]["obs"][key])
    assert fill_main([str(tmp_path / "c"), a, b, "--size", "28"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert fill_main([str(tmp_path / "c"), a, "--size", "8"]) == 2


def test_config_friendly(grasp_zarr):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "shape_meta": make_shape_meta((32, 40), action_horizon=8),
        "dataset": {"_target_": "controller.dataset.grasp_dataset.GraspDataset",
                    "dataset_paths": [grasp_zarr], "shape_meta": "${shape_meta}", "horizon": 8,
                    "seed": 42, "val_ratio": 0.25, "image_keys": ["rgbm", "right_cam_img"]}})
    ds = instantiate(cfg.dataset)
    assert isinstance(ds, GraspDataset) and ds.dataset_paths == [grasp_zarr]
    assert ds[0]["action"].shape == (8, 13)
    assert len(GraspDataset(grasp_zarr, cfg.shape_meta)) == sum(LENGTHS)  # a single str path
