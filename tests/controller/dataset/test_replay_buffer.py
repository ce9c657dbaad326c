"""ZarrReplayBuffer: v2/v3 reading, laziness, and a clear DatasetError for every bad-data case."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from controller.dataset import DatasetError, LazyZarrArray, ZarrReplayBuffer
from tests.controller.dataset.factories import DEFAULT_LENGTHS as LENGTHS, make_episode


def _write_raw_v2(path: Path, arrays: dict) -> None:
    """Write a store byte-for-byte the way zarr 2.x did (no zarr library involved):
    ``.zgroup`` files, ``.zarray`` JSON without ``dimension_separator``, Blosc chunks named 'i.j'."""
    path.mkdir(parents=True)
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    for key, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        grp = path / key.split("/")[0]
        grp.mkdir(exist_ok=True)
        (grp / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        d = path / key
        d.mkdir()
        chunks = (1,) + arr.shape[1:] if arr.ndim > 2 else arr.shape
        (d / ".zarray").write_text(json.dumps({
            "chunks": list(chunks), "compressor": blosc.get_config(), "dtype": arr.dtype.str,
            "fill_value": 0, "filters": None, "order": "C", "shape": list(arr.shape), "zarr_format": 2}))
        for i in range(0, arr.shape[0], chunks[0]):
            name = ".".join([str(i // chunks[0])] + ["0"] * (arr.ndim - 1))
            (d / name).write_bytes(blosc.encode(arr[i:i + chunks[0]]))


def test_reads_v2_and_v3(grasp_zarr, grasp_zarr_v3):
    a, b = ZarrReplayBuffer.open(grasp_zarr), ZarrReplayBuffer.open(grasp_zarr_v3)
    assert (a.zarr_format, b.zarr_format) == (2, 3)
    for rb in (a, b):
        assert rb.n_episodes == len(LENGTHS) and rb.n_steps == sum(LENGTHS)
        np.testing.assert_array_equal(rb.episode_lengths, LENGTHS)
        np.testing.assert_array_equal(rb.episode_ends, np.cumsum(LENGTHS))
        assert isinstance(rb["rgbm"], LazyZarrArray) and isinstance(rb["action"], np.ndarray)
        assert rb["rgbm"].shape == (sum(LENGTHS), 48, 64, 4)
    np.testing.assert_array_equal(a["action"], b["action"])
    np.testing.assert_array_equal(a["rgbm"][7], b["rgbm"][7])
    ep = make_episode(1, LENGTHS[1])  # episode 1 uses rng; compare only deterministic parts
    np.testing.assert_array_equal(a.get_episode(1, keys=["action"])["action"], ep["action"])


def test_reads_store_written_like_zarr2(tmp_path):
    ep0, ep1 = make_episode(0, 3), make_episode(1, 4)
    arrays = {k: np.concatenate([ep0[k], ep1[k]]) for k in ep0}
    arrays = {f"data/{k}": v for k, v in arrays.items()}
    arrays["meta/episode_ends"] = np.array([3, 7], dtype=np.int64)
    _write_raw_v2(tmp_path / "legacy.zarr", arrays)
    rb = ZarrReplayBuffer.open(tmp_path / "legacy.zarr")
    assert rb.zarr_format == 2 and rb.n_episodes == 2
    np.testing.assert_array_equal(rb["rgbm"][5], arrays["data/rgbm"][5])
    np.testing.assert_array_equal(rb["right_state"], arrays["data/right_state"])


def test_lazy_array_pickles_and_reopens(grasp_zarr):
    rb = ZarrReplayBuffer.open(grasp_zarr)
    lazy = pickle.loads(pickle.dumps(rb["right_cam_img"]))
    assert lazy._arr is None
    np.testing.assert_array_equal(lazy[3], rb["right_cam_img"][3])
    assert pickle.loads(pickle.dumps(rb)).n_steps == rb.n_steps


def test_zip_store(tmp_path, grasp_zarr):
    zpath = shutil.make_archive(str(tmp_path / "grasp"), "zip", root_dir=grasp_zarr)
    rb = ZarrReplayBuffer.open(zpath)
    assert rb.n_steps == sum(LENGTHS)
    np.testing.assert_array_equal(rb["rgbm"][2], ZarrReplayBuffer.open(grasp_zarr)["rgbm"][2])


# ---------------------------------------------------------------------------- bad data
def _copy(grasp_zarr, tmp_path) -> str:
    dst = tmp_path / "bad.zarr"
    shutil.copytree(grasp_zarr, dst)
    return str(dst)


def _replace(path: str, key: str, value: np.ndarray) -> None:
    root = zarr.open_group(path, mode="r+")
    grp_name, name = key.split("/")
    grp = root[grp_name]
    del grp[name]
    arr = grp.create_array(name, shape=value.shape, dtype=value.dtype)
    arr[...] = value


def _expect(path: str, *fragments: str) -> None:
    with pytest.raises(DatasetError) as info:
        ZarrReplayBuffer.open(path)
    msg = str(info.value)
    assert path in msg, msg
    for f in fragments:
        assert f in msg, msg


def test_missing_path(tmp_path):
    _expect(str(tmp_path / "nothing.zarr"), "no such file")


def test_missing_key(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    del zarr.open_group(path, mode="r+")["data"]["right_state"]
    _expect(path, "missing key 'data/right_state'")


def test_missing_episode_ends(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    del zarr.open_group(path, mode="r+")["meta"]["episode_ends"]
    _expect(path, "missing key 'meta/episode_ends'")


def test_wrong_image_channels(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "data/rgbm", np.zeros((sum(LENGTHS), 48, 64, 3), np.uint8))
    _expect(path, "key 'data/rgbm' has shape (137, 48, 64, 3); expected (K, H, W, 4)")


def test_wrong_image_dtype(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "data/right_cam_img", np.zeros((sum(LENGTHS), 48, 64, 3), np.float32))
    _expect(path, "key 'data/right_cam_img' has dtype float32; expected uint8")


def test_wrong_low_dim_width(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "data/action", np.zeros((sum(LENGTHS), 12), np.float32))
    _expect(path, "key 'data/action' has shape (137, 12); expected (K, 13)")


def test_wrong_low_dim_dtype(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "data/right_state", np.zeros((sum(LENGTHS), 13), np.int32))
    _expect(path, "key 'data/right_state' has dtype int32; expected a float dtype")


def test_episode_ends_not_increasing(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "meta/episode_ends", np.array([5, 45, 40, 137], np.int64))
    _expect(path, "key 'meta/episode_ends' is not strictly increasing", "episode 2")


def test_zero_length_episode(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "meta/episode_ends", np.array([5, 45, 45, 137], np.int64))
    _expect(path, "key 'meta/episode_ends'", "episode 2 has zero length")


def test_zero_length_first_episode(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "meta/episode_ends", np.array([0, 45, 125, 137], np.int64))
    _expect(path, "key 'meta/episode_ends'", "episode 0 has zero length")


def test_episode_ends_float_dtype(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "meta/episode_ends", np.array([5.0, 45, 125, 137]))
    _expect(path, "key 'meta/episode_ends' has dtype float64; expected an integer dtype")


@pytest.mark.parametrize("last", [120, 150])
def test_episode_ends_not_matching_length(grasp_zarr, tmp_path, last):
    path = _copy(grasp_zarr, tmp_path)
    _replace(path, "meta/episode_ends", np.array([5, 45, 100, last], np.int64))
    _expect(path, "key 'data/", f"'meta/episode_ends'[-1] is {last}", "expected them to match")


def test_empty_dataset(tmp_path):
    path = str(tmp_path / "empty.zarr")
    root = zarr.open_group(path, mode="w", zarr_format=2)
    for key, shape in {"right_cam_img": (0, 48, 64, 3), "rgbm": (0, 48, 64, 4),
                       "right_state": (0, 13), "action": (0, 13)}.items():
        root.require_group("data").create_array(key, shape=shape, dtype="uint8" if len(shape) == 4 else "f4")
    root.require_group("meta").create_array("episode_ends", shape=(0,), dtype="i8")
    _expect(path, "key 'meta/episode_ends' is empty", "no episodes")


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("hi")
    _expect(str(tmp_path / "plain"), "plain")


def test_non_finite_values(grasp_zarr, tmp_path):
    path = _copy(grasp_zarr, tmp_path)
    act = np.asarray(zarr.open_group(path)["data"]["action"][...])
    act[50, 3] = np.nan
    _replace(path, "data/action", act)
    _expect(path, "key 'data/action' has NaN/inf", "step 50", "episode 2")
    assert ZarrReplayBuffer.open(path, check_finite=False).n_steps == sum(LENGTHS)


def test_state_dim_from_caller(grasp_zarr):
    with pytest.raises(DatasetError, match=r"'data/right_state' has shape \(137, 13\); expected \(K, 7\)"):
        ZarrReplayBuffer.open(grasp_zarr, low_dim_dims={"right_state": 7})
