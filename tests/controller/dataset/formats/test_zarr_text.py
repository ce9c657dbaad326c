"""zarr format: text storage (language per episode, reasoning per step), detection, the zarr sink."""
from __future__ import annotations

import numpy as np
import pytest

from controller.dataset.errors import DatasetError
from controller.dataset.formats import EpisodeSource, detect_format, open_sink, open_source
from controller.dataset.replay_buffer import ZarrReplayBuffer
from controller.dataset.writer import ZarrEpisodeWriter
from tests.controller.dataset.factories import make_episode

LENGTHS = (3, 5, 4)
LANGS = ["pick the red cup", None, "grasp the bottle"]


def _reasoning(ep: int, n: int) -> list:
    """Two sub-steps per episode, the last steps of episode 1 without reasoning."""
    out = [f"approach {ep}" if t < n // 2 else "close the hand" for t in range(n)]
    if ep == 1:
        out[-2:] = [None, ""]
    return out


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_text_round_trip(tmp_path, zarr_format):
    path = tmp_path / f"text_v{zarr_format}.zarr"
    with ZarrEpisodeWriter(path, zarr_format=zarr_format) as w:
        for ep, n in enumerate(LENGTHS):
            w.add_episode(make_episode(ep, n, hw=(8, 8)), language=LANGS[ep], reasoning=_reasoning(ep, n))
    assert detect_format(path) == "zarr"
    rb = open_source(path)
    assert isinstance(rb, ZarrReplayBuffer) and isinstance(rb, EpisodeSource)
    assert rb.format_name == "zarr"
    assert "reasoning_id" not in rb.keys()                        # text is not a data key
    assert [rb.language(e) for e in range(3)] == LANGS
    want = [s or None for ep, n in enumerate(LENGTHS) for s in _reasoning(ep, n)]
    assert [rb.reasoning(k) for k in range(rb.n_steps)] == want
    d = rb.describe()
    assert d["format"] == "zarr" and d["n_episodes"] == 3 and d["language"] and d["reasoning"]
    assert d["keys"]["rgbm"]["shape"] == (sum(LENGTHS), 8, 8, 4)


def test_no_text_and_late_text(tmp_path):
    """A store without text reads None; text added by a later episode back-fills the earlier ones."""
    path = tmp_path / "late.zarr"
    with ZarrEpisodeWriter(path) as w:
        w.add_episode(make_episode(0, 3, hw=(8, 8)))
    rb = ZarrReplayBuffer.open(path)
    assert rb.language(0) is None and rb.reasoning(2) is None
    with ZarrEpisodeWriter(path) as w:
        w.add_episode(make_episode(1, 2, hw=(8, 8)), language="lift", reasoning=["a", "b"])
        w.add_episode(make_episode(2, 2, hw=(8, 8)))
    rb = ZarrReplayBuffer.open(path)
    assert [rb.language(e) for e in range(3)] == [None, "lift", None]
    assert [rb.reasoning(k) for k in range(7)] == [None, None, None, "a", "b", None, None]


def test_interrupted_text_is_trimmed(tmp_path):
    """Text of an append that never reached episode_ends is dropped by the writer's repair."""
    path = tmp_path / "crash.zarr"
    with ZarrEpisodeWriter(path) as w:
        w.add_episode(make_episode(0, 3, hw=(8, 8)), language="one", reasoning=["x"] * 3)
        # simulate a crash after the data and attrs were written, before episode_ends
        w.meta.attrs["language"] = ["one", "two"]
        w._append_reasoning(np.zeros(2, np.int32), 3)
    rb = ZarrReplayBuffer.open(path, keys=["action"])
    with pytest.raises(DatasetError, match=r"key 'data/reasoning_id' has 5 steps .* repairs it"):
        rb.language(0)
    w = ZarrEpisodeWriter(path)
    assert w.repaired and w.meta.attrs["language"] == ["one"]
    assert w.data["reasoning_id"].shape == (3,)
    rb = ZarrReplayBuffer.open(path)
    assert rb.language(0) == "one" and rb.reasoning(2) == "x"


def test_bad_text_arguments(tmp_path):
    with ZarrEpisodeWriter(tmp_path / "bad.zarr") as w:
        with pytest.raises(DatasetError, match="reasoning has 2 entries; expected a list of 3"):
            w.add_episode(make_episode(0, 3, hw=(8, 8)), reasoning=["a", "b"])
        assert w.n_episodes == 0


def test_bad_reasoning_ids_named(tmp_path):
    path = tmp_path / "ids.zarr"
    with ZarrEpisodeWriter(path) as w:
        w.add_episode(make_episode(0, 3, hw=(8, 8)), reasoning=["a", "a", "b"])
        w.data["reasoning_id"][1] = 7
    with pytest.raises(DatasetError, match=r"key 'data/reasoning_id' holds 7 at step 1 \(episode 0\)"):
        ZarrReplayBuffer.open(path).reasoning(0)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_sink(tmp_path, zarr_format):
    dest = tmp_path / "out.zarr"
    with open_sink(dest, "zarr", fps=15.0, zarr_format=zarr_format) as sink:
        sink.add_episode(make_episode(0, 4, hw=(8, 8)), language="go", reasoning=["r"] * 4)
        assert not dest.exists()                                  # written under a temp name
    rb = open_source(dest)
    assert rb.zarr_format == zarr_format and rb.language(0) == "go" and rb.reasoning(3) == "r"
    assert rb.describe()["fps"] == 15.0
    with pytest.raises(DatasetError, match="exists; pass --overwrite"):
        open_sink(dest, "zarr")
    sink = open_sink(dest, "zarr", overwrite=True)
    sink.add_episode(make_episode(1, 2, hw=(8, 8)))
    sink.abort()
    assert open_source(dest).n_episodes == 1                      # abort left the destination alone
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]   # and removed its temp store
    with pytest.raises(RuntimeError):
        with open_sink(tmp_path / "failed.zarr", "zarr") as sink:
            sink.add_episode(make_episode(0, 2, hw=(8, 8)))
            raise RuntimeError("conversion failed")
    assert not (tmp_path / "failed.zarr").exists()
