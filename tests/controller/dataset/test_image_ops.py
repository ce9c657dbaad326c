"""Image preprocessing shared by the dataset and the runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from controller.dataset.image_ops import (bgr_uint8_to_float_chw, float_chw_to_bgr_uint8,
                                          mask_uint8_to_float, rgbm_uint8_to_float_chw)


def test_bgr_kept_and_matches_torch_interpolate():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    out = bgr_uint8_to_float_chw(img, (32, 40))
    assert out.shape == (3, 32, 40) and out.dtype == np.float32
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0, size=(32, 40),
                        mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # channel order is kept: a pure-blue BGR image stays in channel 0
    blue = np.zeros((10, 10, 3), np.uint8)
    blue[..., 0] = 255
    o = bgr_uint8_to_float_chw(blue, 7)
    assert o.shape == (3, 7, 7) and np.allclose(o[0], 1) and np.allclose(o[1:], 0)


def test_same_size_is_exact_and_batched():
    img = np.random.default_rng(1).integers(0, 256, (2, 5, 8, 6, 3), dtype=np.uint8)
    out = bgr_uint8_to_float_chw(img, (8, 6))
    assert out.shape == (2, 5, 3, 8, 6)
    np.testing.assert_array_equal(out[1, 2], np.moveaxis(img[1, 2], -1, 0) / np.float32(255))
    np.testing.assert_array_equal(float_chw_to_bgr_uint8(out[1, 2]), img[1, 2])


@pytest.mark.parametrize("fg", [1, 255, 7])
def test_mask_nearest_and_threshold(fg):
    img = np.zeros((48, 64, 4), np.uint8)
    img[..., :3] = 200
    img[12:24, 16:32, 3] = fg
    out = rgbm_uint8_to_float_chw(img, (24, 32))
    assert out.shape == (4, 24, 32) and out.dtype == np.float32
    assert set(np.unique(out[3]).tolist()) == {0.0, 1.0}
    expected = np.zeros((24, 32), np.float32)
    expected[6:12, 8:16] = 1.0   # nearest at exactly half size picks every other pixel
    np.testing.assert_array_equal(out[3], expected)
    np.testing.assert_allclose(out[:3], 200 / 255.0, atol=1e-6)
    np.testing.assert_array_equal(mask_uint8_to_float(img[..., 3], (24, 32)), expected)


def test_rgbm_colour_channels_match_bgr_path():
    img = np.random.default_rng(2).integers(0, 256, (30, 50, 4), dtype=np.uint8)
    np.testing.assert_array_equal(rgbm_uint8_to_float_chw(img, 20)[:3],
                                  bgr_uint8_to_float_chw(np.ascontiguousarray(img[..., :3]), 20))


def test_errors():
    with pytest.raises(ValueError, match="expected a"):
        bgr_uint8_to_float_chw(np.zeros((4, 4, 4), np.uint8), 2)
    with pytest.raises(ValueError, match="uint8"):
        rgbm_uint8_to_float_chw(np.zeros((4, 4, 4), np.float32), 2)
    with pytest.raises(ValueError, match="size"):
        bgr_uint8_to_float_chw(np.zeros((4, 4, 3), np.uint8), (0, 3))
