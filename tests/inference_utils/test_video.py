"""inference_utils.video: the one MP4 route (imageio-ffmpeg), BGR and RGB input, size checks."""
from __future__ import annotations

import numpy as np
import pytest

from inference_utils.video import Mp4Writer, write_mp4


def _read(path):
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = gen.__next__()
    frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in gen]
    return meta, frames


@pytest.mark.parametrize("rgb", [False, True])
def test_write_mp4_round_trip(tmp_path, rgb):
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[..., 2 if not rgb else 0] = 200  # red, in the given channel order
    path = write_mp4(tmp_path / "v.mp4", [frame] * 10, fps=20, rgb=rgb, macro_block_size=1)
    meta, frames = _read(path)
    assert meta["size"] == (64, 48) and len(frames) == 10
    r, g, b = frames[5][24, 32].astype(int)  # read back as RGB
    assert r > 150 and g < 60 and b < 60


def test_writer_rejects_size_change(tmp_path):
    with Mp4Writer(tmp_path / "v.mp4", 10) as w:
        w.append(np.zeros((32, 32, 3), np.uint8))
        with pytest.raises(ValueError):
            w.append(np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(ValueError):
        Mp4Writer(tmp_path / "g.mp4", 10).append(np.zeros((32, 32), np.uint8))
