"""controller.dataset.formats.video_io: PyAV writing and frame-accurate random access."""
from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from controller.dataset.errors import DatasetError
from controller.dataset.formats.video_io import (VideoError, VideoWriter, clear_decoder_cache, probe_video,
                                                 read_frame)

FPS, H, W, N = 10, 48, 64, 24
TOL = 0.4 / FPS


def smooth_frame(i: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([40 + 3 * x + 2 * i, 40 + 3 * y, np.full_like(x, 120.0 + 4 * i)], -1)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "v.mp4")
    w = VideoWriter(path, FPS, W, H, crf=18, gop=4)
    for i in range(N):
        w.add(smooth_frame(i))
    w.close()
    return path


def test_probe(video):
    info = probe_video(video)
    assert (info["width"], info["height"], info["codec"], info["pix_fmt"]) == (W, H, "h264", "yuv420p")
    assert info["frames"] == N and info["fps"] == FPS


def test_frames_within_codec_tolerance(video):
    for i in range(N):
        got = read_frame(video, i / FPS, TOL)
        assert got.shape == (H, W, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - smooth_frame(i)).mean() < 2.0


def test_random_access_equals_sequential(video):
    clear_decoder_cache()
    seq = [read_frame(video, i / FPS, TOL).copy() for i in range(N)]
    clear_decoder_cache()
    for i in (17, 3, 3, 22, 0, 9, 10, 23, 1):
        np.testing.assert_array_equal(read_frame(video, i / FPS, TOL), seq[i])


def _child_read(args):
    path, i = args
    return read_frame(path, i / FPS, TOL).sum()


def test_forked_child_opens_its_own_decoder(video):
    parent = read_frame(video, 5 / FPS, TOL).sum()   # the parent has the file open now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_child_read, [(video, 5), (video, 12)])[0] == parent


def test_no_frame_at_timestamp(video):
    with pytest.raises(VideoError) as e:
        read_frame(video, N / FPS + 1.0, TOL)
    assert video in str(e.value) and "no frame at t=" in str(e.value)
    with pytest.raises(VideoError):
        read_frame(video, 0.55 / FPS * 1.0 + 0.5 / FPS, 0.001)   # between two frames


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(VideoError, match="missing"):
        read_frame(str(tmp_path / "nope.mp4"), 0.0, TOL)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError) as e:
        read_frame(str(bad), 0.0, TOL)
    assert str(bad) in str(e.value) and isinstance(e.value, DatasetError)


def test_writer_rejects_wrong_frame(tmp_path):
    w = VideoWriter(str(tmp_path / "x.mp4"), FPS, W, H)
    with pytest.raises(DatasetError, match="expected"):
        w.add(np.zeros((H + 2, W, 3), np.uint8))
    w.abort()


def test_corrupt_stream_is_an_error(tmp_path, video):
    path = tmp_path / "corrupt.mp4"
    data = bytearray(open(video, "rb").read())
    path.write_bytes(bytes(data[: len(data) // 2]))   # moov at the end: cut off
    with pytest.raises(VideoError) as e:
        read_frame(str(path), 0.0, TOL)
    assert str(path) in str(e.value)
    assert not os.path.exists(str(path) + ".tmp")
