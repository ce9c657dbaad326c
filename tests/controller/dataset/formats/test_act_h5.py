"""act_h5 format: ACT / DexVLA HDF5 episodes in every storage variant -> our keys; writer round trip; bad input."""
from __future__ import annotations

import pickle

import cv2
import h5py
import numpy as np
import pytest

from controller.dataset.errors import DatasetError
from controller.dataset.formats import SourceOptions, detect_format, open_sink, open_source
from controller.dataset.formats.act_h5 import ActH5Source
from tests.controller.dataset.factories import make_episode

H, W = 24, 32
STR = h5py.string_dtype("utf-8")


def _frames(rng, n: int, smooth: bool = False) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB; smooth images keep JPEG errors small."""
    if not smooth:
        return rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 255 // W, y * 255 // H, (x + y) * 255 // (H + W)], -1).astype(np.uint8)  # (H, W, 3)
    return np.stack([np.roll(base, i, axis=1) for i in range(n)])


def _jpeg_rows(rgb: np.ndarray) -> list:
    """ALOHA-style: cv2.imencode on the RGB arrays (decoding gives the same channel order back)."""
    return [cv2.imencode(".jpg", fr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].reshape(-1) for fr in rgb]


def write_act(file, n: int, cams: dict, seed: int = 0, text_bytes: bool = True, language="fold the shirt",
              storage: str = "raw", reasoning=True, extra=None) -> dict:
    """One ACT episode file; ``cams`` name -> (T, H, W, 3) RGB; storage raw|gzip|lzf|vlen|padded."""
    rng = np.random.default_rng(seed)
    qpos = rng.normal(size=(n, 14))                                         # float64 like ALOHA
    action = rng.normal(size=(n, 14))
    subs = [f"step {t // 2}" for t in range(n)]
    with h5py.File(file, "w") as f:
        f["action"] = action
        if language is not None:
            f.create_dataset("language_raw", data=[language.encode() if text_bytes else language],
                             dtype=None if text_bytes else STR)
        if reasoning:
            f.create_dataset("substep_reasonings", data=[s.encode() for s in subs] if text_bytes else subs,
                             dtype=None if text_bytes else STR)
        f["observations/qpos"] = qpos
        f["observations/qvel"] = np.zeros_like(qpos)
        f["observations/joint_positions"] = qpos[:, :7]
        for name, rgb in cams.items():
            key = f"observations/images/{name}"
            if storage in ("raw", "gzip", "lzf"):
                f.create_dataset(key, data=rgb, compression=None if storage == "raw" else storage,
                                 chunks=(1, H, W, 3) if storage != "raw" else None)
            elif storage == "vlen":
                ds = f.create_dataset(key, (n,), dtype=h5py.vlen_dtype(np.uint8))
                for t, row in enumerate(_jpeg_rows(rgb)):
                    ds[t] = row
            else:                                                           # padded fixed-size rows
                rows = _jpeg_rows(rgb)
                pad = np.zeros((n, max(len(r) for r in rows) + 7), np.uint8)
                for t, row in enumerate(rows):
                    pad[t, :len(row)] = row
                f[key] = pad
        for k, v in (extra or {}).items():
            f[k] = v
    return {"qpos": qpos, "action": action, "subs": subs, "cams": cams}


@pytest.mark.parametrize("storage", ["raw", "gzip", "lzf", "vlen", "padded"])
@pytest.mark.parametrize("text_bytes", [True, False])
def test_read_variants(tmp_path, storage, text_bytes):
    rng = np.random.default_rng(1)
    jpeg = storage in ("vlen", "padded")
    lengths = (3, 4, 2)
    made = []
    for i, n in enumerate(lengths):  # names chosen so that plain sorting would put episode_10 first
        cams = {c: _frames(rng, n, smooth=jpeg) for c in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")}
        made.append(write_act(tmp_path / f"episode_{[2, 10, 11][i]}.hdf5", n, cams, seed=i,
                              text_bytes=text_bytes, storage=storage))
    assert detect_format(tmp_path) == "act_h5"
    src = open_source(tmp_path)
    assert isinstance(src, ActH5Source) and src.format_name == "act_h5"
    assert src.cameras == {"head": "cam_high", "wrist": "cam_right_wrist"}
    assert list(src.episode_ends) == [3, 7, 9] and sorted(src.keys()) == ["action", "rgbm", "right_cam_img", "right_state"]
    tol = 20 if jpeg else 0  # JPEG: mean |error| <= 5 grey levels (a B/R swap gives ~60)
    for ep, m in enumerate(made):
        got = src.get_episode(ep)
        np.testing.assert_array_equal(got["action"], m["action"].astype(np.float32))
        np.testing.assert_array_equal(got["right_state"], m["qpos"].astype(np.float32))
        head_bgr = m["cams"]["cam_high"][..., ::-1]
        assert np.abs(got["rgbm"][..., :3].astype(int) - head_bgr).mean() <= tol / 4
        if not jpeg:
            np.testing.assert_array_equal(got["rgbm"][..., :3], head_bgr)
        assert not got["rgbm"][..., 3].any()                                  # mask 'zeros'
        wrist_bgr = m["cams"]["cam_right_wrist"][..., ::-1]
        assert np.abs(got["right_cam_img"].astype(int) - wrist_bgr).mean() <= tol / 4
        assert src.language(ep) == "fold the shirt"
        start = int(src.episode_starts[ep])
        assert [src.reasoning(start + t) for t in range(len(m["subs"]))] == m["subs"]
    d = src.describe()
    assert d["format"] == "act_h5" and d["files"] == 3 and d["first_files"][0] == "episode_2.hdf5"
    assert d["cameras"] == ["cam_high", "cam_left_wrist", "cam_low", "cam_right_wrist"]


def test_options_single_file_and_pickle(tmp_path):
    rng = np.random.default_rng(2)
    cams = {"top": _frames(rng, 5), "left": _frames(rng, 5), "mask": (_frames(rng, 5)[..., 0] > 128).astype(np.uint8)}
    with h5py.File(tmp_path / "x.hdf5", "w"):
        pass
    m = write_act(tmp_path / "one.hdf5", 5, {"top": cams["top"], "left": cams["left"]},
                  extra={"observations/images/seg": cams["mask"] * 255})
    opts = SourceOptions(camera_map={"wrist": "left"}, state_keys=("qpos", "observations/joint_positions"),
                         action_keys=("action",), mask="from-key", mask_key="seg")
    src = open_source(tmp_path / "one.hdf5", options=opts)
    assert src.cameras == {"head": "top", "wrist": "left"}
    np.testing.assert_array_equal(src["right_state"], np.concatenate([m["qpos"], m["qpos"][:, :7]], 1).astype(np.float32))
    np.testing.assert_array_equal(src["rgbm"][2][..., 3], cams["mask"][2] * 255)
    np.testing.assert_array_equal(src["right_cam_img"][[4, 0]], cams["left"][[4, 0]][..., ::-1])
    clone = pickle.loads(pickle.dumps(src["rgbm"]))                        # DataLoader workers
    np.testing.assert_array_equal(clone[1:3], src["rgbm"][1:3])
    with pytest.raises(DatasetError, match="computed by `python -m controller.dataset.convert"):
        open_source(tmp_path / "one.hdf5", options=SourceOptions(mask="segment"))
    with pytest.raises(DatasetError, match=r"no head camera for 'rgbm' among 'observations/images' \['a', 'b'\]"):
        write_act(tmp_path / "two.hdf5", 2, {"a": _frames(rng, 2), "b": _frames(rng, 2)})
        open_source(tmp_path / "two.hdf5")


def test_writer_round_trip_exact(tmp_path):
    eps = [make_episode(i, n, hw=(H, W), mask_value=255) for i, n in enumerate((3, 5))]
    texts = [("pick up the cup", ["reach", "reach", "grasp"]), (None, None)]
    dest = tmp_path / "out_h5"
    with open_sink(dest, "act_h5", fps=10.0) as sink:
        for ep, (lang, reas) in zip(eps, texts):
            sink.add_episode(ep, language=lang, reasoning=reas)
    assert detect_format(dest) == "act_h5"
    src = open_source(dest)
    assert src.cameras == {"head": "head", "wrist": "wrist"} and src.describe()["fps"] == 10.0
    for i, ep in enumerate(eps):
        got = src.get_episode(i)
        for key in ep:
            np.testing.assert_array_equal(got[key], ep[key], err_msg=key)
    assert src.language(0) == "pick up the cup" and src.language(1) is None
    assert [src.reasoning(s) for s in range(8)] == ["reach", "reach", "grasp"] + [None] * 5
    with h5py.File(dest / "episode_0.hdf5") as f:                          # the ACT layout itself
        assert f["language_raw"][0] == b"pick up the cup"
        np.testing.assert_array_equal(f["observations/images/head"][1], eps[0]["rgbm"][1, ..., 2::-1])
        assert f["observations/qvel"].shape == (3, 13) and not f["observations/qvel"][()].any()
    sink = open_sink(tmp_path / "aborted_h5", "act_h5")
    sink.add_episode(eps[0])
    sink.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_h5"]


# ---------------------------------------------------------------------- bad input
def _two_eps(tmp_path, **kw):
    rng = np.random.default_rng(3)
    for i in range(2):
        write_act(tmp_path / f"episode_{i}.hdf5", 4, {"top": _frames(rng, 4), "wrist": _frames(rng, 4)}, seed=i,
                  **(kw if i == 1 else {}))
    return tmp_path / "episode_1.hdf5"


def test_truncated_file(tmp_path):
    bad = _two_eps(tmp_path)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"{bad}: cannot open the HDF5 file .*truncated"):
        open_source(tmp_path, fmt="act_h5")


def test_missing_language_only_fails_when_text_is_requested(tmp_path):
    bad = _two_eps(tmp_path, language=None)
    src = open_source(tmp_path)
    assert src["action"].shape == (8, 14)                                  # arrays read fine
    assert src.language(0) == "fold the shirt"
    with pytest.raises(DatasetError, match=rf"{bad}: missing key 'language_raw' \(episode 1\)"):
        src.language(1)


def test_lengths_disagree(tmp_path):
    bad = _two_eps(tmp_path, extra={"action_is_pad": np.zeros(5, bool)})
    with pytest.raises(DatasetError, match=rf"{bad}: per-step keys disagree in length \(episode 1\).*'action_is_pad': 5"):
        open_source(tmp_path)


def test_undecodable_frame(tmp_path):
    rng = np.random.default_rng(4)
    write_act(tmp_path / "episode_0.hdf5", 3, {"top": _frames(rng, 3, True), "wrist": _frames(rng, 3, True)},
              storage="vlen")
    with h5py.File(tmp_path / "episode_0.hdf5", "a") as f:
        f["observations/images/top"][2] = np.arange(50, dtype=np.uint8)     # not a JPEG
    src = open_source(tmp_path)
    src["rgbm"][1]
    with pytest.raises(DatasetError, match=r"episode_0.hdf5: key 'observations/images/top' frame 2 of episode 0 "
                                           r"\(step 2\) could not be read .*cv2.imdecode"):
        src["rgbm"][2]
