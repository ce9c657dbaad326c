"""ZarrEpisodeWriter: appending, validation before writing, and crash safety."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from controller.dataset import DatasetError, ZarrEpisodeWriter, ZarrReplayBuffer
from tests.controller.dataset.factories import make_episode


@pytest.mark.parametrize("fmt", [2, 3])
def test_append_and_reopen(tmp_path, fmt):
    path = tmp_path / "w.zarr"
    with ZarrEpisodeWriter(path, zarr_format=fmt) as w:
        assert w.add_episode(make_episode(0, 4)) == 1
    w = ZarrEpisodeWriter(path, zarr_format=5 - fmt)  # existing store keeps its own format
    assert w.zarr_format == fmt and w.n_episodes == 1 and not w.repaired
    w.add_episode(make_episode(1, 6))
    rb = ZarrReplayBuffer.open(path)
    assert rb.zarr_format == fmt
    np.testing.assert_array_equal(rb.episode_ends, [4, 10])
    np.testing.assert_array_equal(rb["action"][4:], make_episode(1, 6)["action"])
    root = zarr.open_group(str(path))
    assert root["data"]["rgbm"].chunks == (1, 48, 64, 4)


def test_image_chunks(tmp_path):
    w = ZarrEpisodeWriter(tmp_path / "c.zarr", image_chunks=4)
    w.add_episode(make_episode(0, 6))
    assert zarr.open_group(str(tmp_path / "c.zarr"))["data"]["right_cam_img"].chunks == (4, 48, 64, 3)


def test_float64_cast_to_existing_dtype(tmp_path):
    w = ZarrEpisodeWriter(tmp_path / "d.zarr")
    w.add_episode(make_episode(0, 3))
    ep = make_episode(1, 3)
    ep["action"] = ep["action"].astype(np.float64)
    w.add_episode(ep)
    assert ZarrReplayBuffer.open(tmp_path / "d.zarr")["action"].dtype == np.float32


@pytest.mark.parametrize("mutate, fragment", [
    (lambda e: e.update(action=e["action"][:-1]), "share a length"),
    (lambda e: e.pop("rgbm"), "differ from the store"),
    (lambda e: e.update(rgbm=e["rgbm"][..., :3]), "expected (T, H, W, 4)"),
    (lambda e: e.update(right_cam_img=e["right_cam_img"].astype(np.float32)), "expected uint8"),
    (lambda e: e.update(action=e["action"][:, :12]), "per-step shape (12,)"),
    (lambda e: e["action"].__setitem__((0, 0), np.inf), "NaN/inf"),
])
def test_bad_episode_rejected_before_writing(tmp_path, mutate, fragment):
    path = tmp_path / "v.zarr"
    w = ZarrEpisodeWriter(path)
    w.add_episode(make_episode(0, 5))
    ep = make_episode(1, 5)
    mutate(ep)
    with pytest.raises(DatasetError, match="v.zarr") as info:
        w.add_episode(ep)
    assert fragment in str(info.value)
    rb = ZarrReplayBuffer.open(path)  # untouched and valid
    assert rb.n_episodes == 1 and rb.n_steps == 5


def test_failure_mid_append_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "r.zarr"
    w = ZarrEpisodeWriter(path)
    w.add_episode(make_episode(0, 5))

    def boom(self, end):
        raise RuntimeError("disk full")
    monkeypatch.setattr(ZarrEpisodeWriter, "_commit_episode_end", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        w.add_episode(make_episode(1, 7))
    rb = ZarrReplayBuffer.open(path)  # data written before the failure was truncated again
    assert rb.n_episodes == 1 and rb["rgbm"].shape[0] == 5


def test_crash_leaves_trailing_steps_which_reopen_truncates(tmp_path):
    """Simulate a process killed after the data write: arrays longer than episode_ends[-1]."""
    path = tmp_path / "k.zarr"
    ZarrEpisodeWriter(path).add_episode(make_episode(0, 5))
    root = zarr.open_group(str(path), mode="r+")
    for key in ("rgbm", "right_cam_img", "right_state"):  # partial: 'action' never grew
        arr = root["data"][key]
        arr.resize((8,) + arr.shape[1:])
    with pytest.raises(DatasetError, match="ZarrEpisodeWriter"):
        ZarrReplayBuffer.open(path)
    w = ZarrEpisodeWriter(path)
    assert w.repaired and w.n_steps == 5
    assert ZarrReplayBuffer.open(path).n_steps == 5
    w.add_episode(make_episode(1, 3))
    rb = ZarrReplayBuffer.open(path)
    np.testing.assert_array_equal(rb.episode_ends, [5, 8])
    np.testing.assert_array_equal(rb["right_state"][5:], make_episode(1, 3)["right_state"])


def test_crash_during_episode_ends_write_is_repaired(tmp_path):
    """Killed between growing meta/episode_ends and writing its value: a trailing fill value 0."""
    path = tmp_path / "e.zarr"
    w = ZarrEpisodeWriter(path)
    w.add_episode(make_episode(0, 5))
    w._append_data(w._validate(make_episode(1, 4)), 5)
    w.episode_ends.resize((2,))
    with pytest.raises(DatasetError, match="episode 1"):
        ZarrReplayBuffer.open(path)
    w2 = ZarrEpisodeWriter(path)
    assert w2.repaired and w2.n_episodes == 1 and w2.n_steps == 5
    assert ZarrReplayBuffer.open(path).n_steps == 5
