"""The 'lerobot' format: the real LeRobot's fixture read exactly, our sink -> our reader, bad input.

``tests/fixtures/lerobot_v3_real`` was written by the real LeRobot 0.4.4 (scripts/make_lerobot_fixture.py,
run in a throwaway venv); ``expected.json`` / ``expected_frames.npz`` hold what LeRobot itself
returns for it, so these tests compare against the real thing without importing lerobot.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from controller.dataset.errors import DatasetError
from controller.dataset.formats import (EpisodeSource, SourceOptions, detect_format, open_sink, open_source,
                                        sink_names)
from controller.dataset.formats.video_io import clear_decoder_cache

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "lerobot_v3_real"
REAL = FIXTURE / "dataset"
H, W = 48, 64
LENGTHS = (6, 4, 7)


@pytest.fixture(scope="module")
def expected():
    doc = json.loads((FIXTURE / "expected.json").read_text())
    frames = np.load(FIXTURE / "expected_frames.npz", allow_pickle=False)
    return doc, {k.replace("__", "."): frames[k] for k in frames.files}


@pytest.fixture
def real_copy(tmp_path):
    """A writable copy of the real fixture (for the bad-input tests)."""
    clear_decoder_cache()
    dst = tmp_path / "real"
    shutil.copytree(REAL, dst)
    return dst


# ---------------------------------------------------------------------- the real LeRobot's dataset
def test_real_fixture_is_read_exactly(expected):
    doc, frames = expected
    src = open_source(REAL, low_dim_dims={"right_state": 6, "action": 6})
    assert isinstance(src, EpisodeSource) and detect_format(REAL) == "lerobot" and src.format_name == "lerobot"
    assert src.n_episodes == doc["num_episodes"] == 3 and src.n_steps == doc["num_frames"]
    assert src.episode_lengths.tolist() == doc["lengths"]
    rows = doc["frames"]
    np.testing.assert_array_equal(src["right_state"], np.asarray(rows["observation.state"], np.float32))
    np.testing.assert_array_equal(src["action"], np.asarray(rows["action"], np.float32))
    assert [src.language(e) for e in range(3)] == doc["tasks"]
    assert [src.reasoning(i) for i in range(src.n_steps)] == [r or None for r in rows["reasoning"]]
    assert src.cameras == {"head": "observation.images.top", "wrist": "observation.images.wrist_right"}
    head, wrist = np.asarray(src["rgbm"]), np.asarray(src["right_cam_img"])
    assert head.shape == (src.n_steps, H, W, 4) and head.dtype == np.uint8
    assert not head[..., 3].any()                                    # mask='zeros'
    for ours, key in ((head[..., 2::-1], "observation.images.top"), (wrist[..., ::-1], "observation.images.wrist_right")):
        diff = np.abs(ours.astype(int) - frames[key])                 # BGR -> RGB, vs LeRobot's decode
        assert diff.max() <= 2 and diff.mean() < 0.1, key
        for i, px in enumerate(doc["pixels"][key]):
            for yx, rgb in px["samples"].items():
                y, x = map(int, yx.split(","))
                assert np.abs(ours[i, y, x].astype(int) - rgb).max() <= 2


def test_real_fixture_describe_and_options():
    src = open_source(REAL, keys=["rgbm", "action"], options=SourceOptions(
        camera_map={"head": "wrist_right"}, mask="from-key", mask_key="observation.images.top",
        state_keys=("action",), action_keys=("observation.state", "action")))
    assert src.keys() == ["rgbm", "action"] and src["action"].shape == (15, 12)
    d = src.describe()
    assert d["codebase_version"] == "v3.0" and d["fps"] == 10 and d["cameras"]["head"] == "observation.images.wrist_right"
    assert d["mask"] == "observation.images.top" and d["tasks"] == ["pick up the red cube", "put the cup on the plate"]
    assert set(np.unique(src["rgbm"][3][..., 3])) <= {0, 255}
    with pytest.raises(DatasetError, match="camera_map head='nope'"):
        open_source(REAL, options=SourceOptions(camera_map={"head": "nope"}))
    with pytest.raises(DatasetError, match="width 6; expected 13"):
        open_source(REAL, low_dim_dims={"right_state": 13})


def test_random_access_equals_sequential_and_pickles():
    src = open_source(REAL)
    seq = np.asarray(src["rgbm"])
    clear_decoder_cache()
    np.testing.assert_array_equal(src["rgbm"][[13, 2, 7, 2, 0]], seq[[13, 2, 7, 2, 0]])
    np.testing.assert_array_equal(src["rgbm"][3:9:2], seq[3:9:2])
    lazy = pickle.loads(pickle.dumps(src["right_cam_img"]))
    np.testing.assert_array_equal(lazy[5], src["right_cam_img"][5])
    np.testing.assert_array_equal(src.get_episode(1)["rgbm"], seq[6:10])


# ---------------------------------------------------------------------- our sink -> our reader
def _episode(ep: int, n: int, rng: np.random.Generator, mask_value: int = 255) -> dict:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    rgbm = np.zeros((n, H, W, 4), np.uint8)
    for t in range(n):   # smooth BGR (video codecs are exact-ish on it) + a rectangular mask
        rgbm[t, ..., :3] = np.stack([40 + 2 * x + 5 * t, 40 + 3 * y, np.full_like(x, 60 + 30 * ep)], -1).clip(0, 255)
        rgbm[t, 8 + t:30 + t, 10:40, 3] = mask_value
    wrist = np.ascontiguousarray(rgbm[..., 2::-1] // 2 + 40)
    return {"rgbm": rgbm, "right_cam_img": wrist, "right_state": rng.standard_normal((n, 13)).astype(np.float32),
            "action": rng.standard_normal((n, 13)).astype(np.float32)}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A dataset written by our sink: (path, episodes, languages, reasoning)."""
    path = tmp_path_factory.mktemp("lerobot") / "ours"
    rng = np.random.default_rng(3)
    eps = [_episode(e, n, rng, mask_value=1 if e == 1 else 255) for e, n in enumerate(LENGTHS)]
    langs = ["grasp the bottle", None, "grasp the bottle"]
    reasoning = [[f"e{e}t{t}" if t % 3 else "" for t in range(n)] for e, n in enumerate(LENGTHS)]
    with open_sink(path, "lerobot", fps=20) as sink:
        for e, data in enumerate(eps):
            sink.add_episode(data, language=langs[e], reasoning=reasoning[e] if e != 2 else None)
    return path, eps, langs, reasoning


def test_roundtrip(ours):
    path, eps, langs, reasoning = ours
    src = open_source(path)
    assert "lerobot" in sink_names() and src.episode_lengths.tolist() == list(LENGTHS)
    for e, data in enumerate(eps):
        got = src.get_episode(e)
        np.testing.assert_array_equal(got["right_state"], data["right_state"])
        np.testing.assert_array_equal(got["action"], data["action"])
        np.testing.assert_array_equal(got["rgbm"][..., 3], np.where(data["rgbm"][..., 3] > 0, 255, 0))
        for key, ref in (("rgbm", data["rgbm"][..., :3]), ("right_cam_img", data["right_cam_img"])):
            img = got[key][..., :3].astype(int)
            assert np.abs(img - ref).mean() < 3.0 and np.abs(img - ref).max() <= 24, (e, key)  # yuv420p + crf 18
        assert src.language(e) == langs[e]
    start = int(src.episode_starts[1])
    assert [src.reasoning(start + t) for t in range(LENGTHS[1])] == [r or None for r in reasoning[1]]
    assert src.reasoning(int(src.episode_starts[2])) is None


def test_written_layout_is_lerobot_v3(ours):
    path = ours[0]
    info = json.loads((path / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["total_episodes"] == 3
    assert info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [13], "names": [f"right_state_{i}" for i in range(13)]}
    assert feats["reasoning"] == {"dtype": "string", "shape": [1], "names": None}
    for key in ("observation.images.head", "observation.images.head_mask", "observation.images.wrist"):
        assert feats[key]["dtype"] == "video" and feats[key]["shape"] == [H, W, 3]
        assert feats[key]["info"]["video.codec"] == "h264" and feats[key]["info"]["video.pix_fmt"] == "yuv420p"
        assert (path / "videos" / key / "chunk-000" / "file-000.mp4").is_file()
    stats = json.loads((path / "meta" / "stats.json").read_text())
    assert np.asarray(stats["observation.images.head"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [sum(LENGTHS)] and len(stats["action"]["q99"]) == 13
    tasks = pq.read_table(path / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["grasp the bottle", ""]
    ep = pq.read_table(path / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pydict()
    assert ep["dataset_from_index"] == [0, 6, 10] and ep["dataset_to_index"] == [6, 10, 17]
    assert ep["videos/observation.images.head/from_timestamp"] == [0.0, 0.3, 0.5]
    data = pq.read_table(path / "data" / "chunk-000" / "file-000.parquet")
    assert data.column("index").to_pylist() == list(range(17)) and str(data.schema.field("action").type).startswith(
        "fixed_size_list<element: float>[13]")


def test_abort_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with open_sink(dest, "lerobot") as sink:
            sink.add_episode(_episode(0, 3, np.random.default_rng(0)))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    sink = open_sink(dest, "lerobot")
    sink.add_episode(_episode(0, 3, np.random.default_rng(0)))
    sink.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(DatasetError, match="no episodes"):
        open_sink(dest, "lerobot").close()
    assert os.listdir(tmp_path) == []


def test_writer_checks(tmp_path):
    with pytest.raises(DatasetError, match="not a positive integer"):
        open_sink(tmp_path / "a", "lerobot", fps=12.5)
    rng = np.random.default_rng(0)
    with pytest.raises(DatasetError, match="width 7; expected 13"):
        with open_sink(tmp_path / "b", "lerobot") as sink:
            sink.add_episode(_episode(0, 3, rng))
            bad = _episode(1, 3, rng)
            bad["action"] = bad["action"][:, :7]
            sink.add_episode(bad)
    with pytest.raises(DatasetError, match="2 reasoning strings; expected 3"):
        with open_sink(tmp_path / "c", "lerobot") as sink:
            sink.add_episode(_episode(0, 3, rng), reasoning=["a", "b"])
    assert os.listdir(tmp_path) == []
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match="exists"):
        open_sink(tmp_path / "d", "lerobot")
    with open_sink(tmp_path / "d", "lerobot", overwrite=True) as sink:
        sink.add_episode({k: v for k, v in _episode(0, 2, rng).items() if k in ("right_state", "action")})
    src = open_source(tmp_path / "d")
    assert src.keys() == ["right_state", "action"] and sorted(os.listdir(tmp_path)) == ["d"]


# ---------------------------------------------------------------------- bad input
def test_unsupported_codebase_version(real_copy):
    info_path = real_copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError) as e:
        open_source(real_copy)
    msg = str(e.value)
    assert str(info_path) in msg and "'codebase_version'" in msg and "'v2.1'" in msg and "'v3.0'" in msg


def test_missing_video_file(real_copy):
    video = real_copy / "videos" / "observation.images.wrist_right" / "chunk-000" / "file-000.mp4"
    video.unlink()
    with pytest.raises(DatasetError) as e:
        open_source(real_copy)
    msg = str(e.value)
    assert str(video) in msg and "'observation.images.wrist_right'" in msg and "episode 0" in msg and "expected" in msg


def test_missing_parquet_column(real_copy):
    data = real_copy / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(data).drop_columns(["action"]), data)
    with pytest.raises(DatasetError) as e:
        open_source(real_copy)
    msg = str(e.value)
    assert str(data) in msg and "column 'action'" in msg and "episode 0..2" in msg and "expected" in msg
    data.unlink()
    with pytest.raises(DatasetError, match="missing"):
        open_source(real_copy)


def test_frame_that_fails_to_decode(real_copy):
    video = real_copy / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    raw = video.read_bytes()
    video.write_bytes(raw[: int(len(raw) * 0.6)])     # moov first (LeRobot's files): later frames cut off
    src = open_source(real_copy)
    src["rgbm"][0]
    with pytest.raises(DatasetError) as e:
        np.asarray(src["rgbm"])
    msg = str(e.value)
    assert str(video) in msg and "'observation.images.top'" in msg and "episode " in msg and "frame " in msg
    assert "expected" in msg


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset in any known format"):
        detect_format(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not readable JSON"):
        open_source(tmp_path)


def test_real_fixture_with_image_features():
    """Cameras stored as 'image' features (PNG bytes in the data parquet, use_videos=False)."""
    exp = np.load(FIXTURE / "expected_images.npz", allow_pickle=False)
    src = open_source(FIXTURE / "dataset_images")
    assert src.n_steps == len(exp["state"]) == 5 and src.episode_lengths.tolist() == [3, 2]
    np.testing.assert_array_equal(src["right_state"], exp["state"])
    np.testing.assert_array_equal(src["action"], exp["action"])
    np.testing.assert_array_equal(np.asarray(src["rgbm"])[..., 2::-1], exp["observation__images__top"])
    np.testing.assert_array_equal(np.asarray(src["right_cam_img"])[..., ::-1], exp["observation__images__wrist_right"])
    assert src.language(1) == str(exp["task"][-1])


def test_roundtrip_across_files_and_chunks(tmp_path):
    """Tiny file limits: every episode starts a new data file (and chunk-001 after 2 files)."""
    rng = np.random.default_rng(5)
    eps = [_episode(e, n, rng) for e, n in enumerate((3, 4, 2, 5))]
    with open_sink(tmp_path / "multi", "lerobot", fps=10, chunks_size=2, data_files_size_in_mb=1e-6,
                   video_files_size_in_mb=1e-6) as sink:
        for data in eps:
            sink.add_episode(data, language="grasp")
    files = sorted(str(p.relative_to(tmp_path / "multi")) for p in (tmp_path / "multi" / "data").rglob("*.parquet"))
    assert files == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                     "data/chunk-001/file-000.parquet", "data/chunk-001/file-001.parquet"]
    src = open_source(tmp_path / "multi")
    assert src.describe()["files"]["data"] == 4
    for e, data in enumerate(eps):
        got = src.get_episode(e)
        np.testing.assert_array_equal(got["action"], data["action"])
        np.testing.assert_array_equal(got["rgbm"][..., 3], data["rgbm"][..., 3])
        assert np.abs(got["rgbm"][..., :3].astype(int) - data["rgbm"][..., :3]).mean() < 3.0


def test_odd_frame_size_is_refused(tmp_path):
    data = _episode(0, 2, np.random.default_rng(0))
    data["right_cam_img"] = data["right_cam_img"][:, :47]
    with pytest.raises(DatasetError, match="47x64; expected an even height and width"):
        with open_sink(tmp_path / "odd", "lerobot") as sink:
            sink.add_episode(data)
    assert os.listdir(tmp_path) == []


def test_subtask_index_as_reasoning(real_copy):
    """LeRobot 0.4-0.5 datasets: per-frame subtask_index + meta/subtasks.parquet (pandas-indexed)."""
    import pyarrow as pa
    info_path = real_copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["reasoning"]
    info["features"]["subtask_index"] = {"dtype": "int64", "shape": [1], "names": None}
    info_path.write_text(json.dumps(info))
    data = real_copy / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data).drop_columns(["reasoning"])
    pq.write_table(table.append_column("subtask_index", pa.array(np.arange(15) % 2, pa.int64())), data)
    pandas_md = {"index_columns": ["__index_level_0__"], "columns": []}
    sub = pa.table({"subtask_index": pa.array([0, 1], pa.int64()), "__index_level_0__": ["reach", "close hand"]})
    pq.write_table(sub.replace_schema_metadata({b"pandas": json.dumps(pandas_md).encode()}),
                   real_copy / "meta" / "subtasks.parquet")
    src = open_source(real_copy)
    assert [src.reasoning(i) for i in range(4)] == ["reach", "close hand", "reach", "close hand"]


def test_default_keys_follow_the_features(real_copy):
    info_path = real_copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["observation.state"]
    info_path.write_text(json.dumps(info))
    src = open_source(real_copy)
    assert src.keys() == ["rgbm", "right_cam_img", "action"]
    with pytest.raises(DatasetError, match="feature 'observation.state' \\(for our key 'right_state'\\)"):
        open_source(real_copy, keys=["right_state"])
