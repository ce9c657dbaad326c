"""Synthetic attention-map files for the visualiser tests."""
from __future__ import annotations

import numpy as np
import pytest

from controller.viz.attention_io import save_attention_maps


def make_maps(S=3, L=4, B=2, Hh=2, head_grid=(16, 16), wrist_grid=(12, 10),
              head_peak=(5, 11), wrist_peak=(9, 2), head_hw=(112, 112), wrist_hw=(120, 100),
              seed=0):
    """Keyword arguments for ``save_attention_maps``: softmax-normalised attention of every
    step/block/sample/head with a clear peak at ``head_peak`` in the head grid and at
    ``wrist_peak`` in the wrist grid (row, col), plus noise and some mass on state/time."""
    rng = np.random.default_rng(seed)
    nh, nw = head_grid[0] * head_grid[1], wrist_grid[0] * wrist_grid[1]
    sizes = [nh, nw, 1, 1]
    N = sum(sizes)
    logits = rng.normal(0.0, 0.3, size=(S, L, B, Hh, N))

    def blob(grid, peak, height):  # a Gaussian bump (row-major tokens) centred on ``peak``
        yy, xx = np.mgrid[0:grid[0], 0:grid[1]]
        d2 = (yy - peak[0]) ** 2 + (xx - peak[1]) ** 2
        return (height * np.exp(-d2 / (2.0 * (0.06 * max(grid)) ** 2))).reshape(-1)

    logits[..., :nh] += blob(head_grid, head_peak, 5.0)
    logits[..., nh:nh + nw] += blob(wrist_grid, wrist_peak, 4.5)
    logits[..., nh + nw] += np.linspace(2.0, 4.0, L)[None, :, None, None]     # state
    logits[..., nh + nw + 1] += np.linspace(3.0, 1.0, S)[:, None, None, None]  # time
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)

    def image(hw, channels):
        h, w = hw
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                        np.full_like(xx, 90)], -1).astype(np.uint8)
        img = np.repeat(img[None], B, 0)
        if channels == 4:
            mask = np.zeros((B, h, w, 1), np.uint8)
            mask[:, h // 4: h // 2, w // 2: 3 * w // 4] = 255
            img = np.concatenate([img, mask], -1)
        return img

    return dict(attn=attn.astype(np.float32), timesteps=np.linspace(45, 0, S).astype(np.int64),
                token_part_names=["head", "wrist", "state", "time"], token_part_sizes=sizes,
                head_grid=list(head_grid), wrist_grid=list(wrist_grid), rgbm=image(head_hw, 4),
                right_cam_img=image(wrist_hw, 3),
                right_state=rng.uniform(-1, 1, (B, 13)).astype(np.float32),
                meta={"epoch": 3, "split": "train", "global_step": 120})


@pytest.fixture
def synth_kwargs():
    return make_maps()


@pytest.fixture
def attn_dir(tmp_path):
    d = tmp_path / "attention_maps"
    save_attention_maps(d / "epoch_2_step_10.npz", **make_maps(seed=1))
    save_attention_maps(d / "epoch_10_step_20.npz", **make_maps(seed=2))
    return d
