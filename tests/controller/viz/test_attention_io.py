"""The attention-map file format: writer, reader and their validation."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from controller.viz.attention_io import (AttentionMapFileError, AttentionMaps,
                                         load_attention_maps, save_attention_maps, to_uint8_hwc)

from .conftest import make_maps


def test_round_trip_is_exact(tmp_path, synth_kwargs):
    path = save_attention_maps(tmp_path / "a.npz", **synth_kwargs)
    assert path == tmp_path / "a.npz" and path.is_file()
    maps = load_attention_maps(path)
    assert isinstance(maps, AttentionMaps)
    assert maps.attn.dtype == np.float16 and maps.attn.shape == (3, 4, 2, 2, 256 + 120 + 2)
    np.testing.assert_array_equal(maps.attn, synth_kwargs["attn"].astype(np.float16))
    np.testing.assert_array_equal(maps.timesteps, synth_kwargs["timesteps"])
    assert maps.timesteps.dtype == np.int64
    assert maps.token_part_names == ("head", "wrist", "state", "time")
    assert maps.token_part_sizes == (256, 120, 1, 1)
    assert maps.head_grid == (16, 16) and maps.wrist_grid == (12, 10)
    np.testing.assert_array_equal(maps.rgbm, synth_kwargs["rgbm"])
    np.testing.assert_array_equal(maps.right_cam_img, synth_kwargs["right_cam_img"])
    np.testing.assert_array_equal(maps.right_state, synth_kwargs["right_state"])
    assert maps.meta == {"epoch": 3, "split": "train", "global_step": 120}
    assert maps.source == str(path)
    assert (maps.num_steps, maps.num_blocks, maps.num_samples, maps.num_heads) == (3, 4, 2, 2)
    assert maps.part_slice("wrist") == slice(256, 376) and maps.grid("wrist") == (12, 10)
    # plain arrays only: loadable with pickle disabled, strings stored as unicode
    with np.load(path, allow_pickle=False) as npz:
        assert npz["token_part_names"].dtype.kind == "U"
        assert json.loads(str(npz["meta_json"][()]))["epoch"] == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_meta_is_optional_and_torch_tensors_are_accepted(tmp_path, synth_kwargs):
    torch = pytest.importorskip("torch")
    kw = dict(synth_kwargs, meta=None)
    kw["attn"] = torch.from_numpy(kw["attn"]).to(torch.bfloat16)
    kw["rgbm"] = torch.from_numpy(kw["rgbm"])
    path = save_attention_maps(tmp_path / "b.npz", **kw)
    with np.load(path) as npz:
        assert "meta_json" not in npz.files
    maps = load_attention_maps(path)
    assert maps.meta == {}
    np.testing.assert_allclose(maps.attn.astype(np.float32), synth_kwargs["attn"], atol=2e-3)


def test_to_uint8_hwc_converts_model_inputs():
    x = np.zeros((2, 1, 4, 6, 5), np.float32)   # (B, T=1, C, H, W) in [0, 1], mask 0/1
    x[:, :, 3, 2:4, 1:3] = 1.0
    x[:, :, 0] = 0.5
    out = to_uint8_hwc(x)
    assert out.shape == (2, 6, 5, 4) and out.dtype == np.uint8
    assert set(np.unique(out[..., 3])) == {0, 255} and out[0, 0, 0, 0] == 128
    assert to_uint8_hwc(out) is not None and to_uint8_hwc(out).shape == out.shape


@pytest.mark.parametrize("change, field", [
    (dict(token_part_sizes=[256, 120, 1, 2]), "token_part_sizes"),
    (dict(token_part_sizes=[256, 120, 2]), "token_part_sizes"),
    (dict(head_grid=[16, 15]), "head_grid"),
    (dict(wrist_grid=[10, 12, 1]), "wrist_grid"),
    (dict(wrist_grid=[10, 11]), "wrist_grid"),
    (dict(token_part_names=["head", "wrist", "state", "state"]), "token_part_names"),
    (dict(token_part_names=["head", "hand", "state", "time"]), "token_part_names"),
    (dict(timesteps=np.arange(4)), "timesteps"),
    (dict(rgbm=np.zeros((3, 8, 8, 4), np.uint8)), "rgbm"),
    (dict(rgbm=np.zeros((2, 4, 8, 8), np.uint8)), "rgbm"),
    (dict(right_cam_img=np.zeros((2, 8, 8, 3), np.float32)), "right_cam_img"),
    (dict(right_state=np.zeros((1, 13), np.float32)), "right_state"),
    (dict(meta={"x": object()}), "meta"),
])
def test_writer_rejects_inconsistent_fields(tmp_path, synth_kwargs, change, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        save_attention_maps(tmp_path / "bad.npz", **dict(synth_kwargs, **change))
    assert not list(tmp_path.iterdir())            # nothing (not even a temp file) was left


def test_writer_checks_attention_values_and_path(tmp_path, synth_kwargs):
    attn = synth_kwargs["attn"]
    with_nan = attn.copy()
    with_nan[0, 0, 0, 0, 7] = np.nan
    for bad, msg in [(attn * 2.0, "sum to 1"), (attn[0], "5-D"), (np.log(attn), ">= 0"),
                     (with_nan, "NaN"),
                     (attn.astype(np.int64), "floating")]:
        with pytest.raises(ValueError, match=rf"^attn: .*{msg}"):
            save_attention_maps(tmp_path / "bad.npz", **dict(synth_kwargs, attn=bad))
    with pytest.raises(ValueError, match="^path:"):
        save_attention_maps(tmp_path / "bad.pkl", **synth_kwargs)


def test_reader_names_the_file_for_corrupt_or_incomplete_files(tmp_path, synth_kwargs):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(AttentionMapFileError, match="garbage.npz.*cannot read"):
        load_attention_maps(garbage)

    good = save_attention_maps(tmp_path / "good.npz", **synth_kwargs)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AttentionMapFileError, match="truncated.npz"):
        load_attention_maps(truncated)

    arrays = {k: v for k, v in np.load(good).items() if k != "wrist_grid"}
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(AttentionMapFileError, match=r"missing.npz.*missing key.*wrist_grid"):
        load_attention_maps(tmp_path / "missing.npz")

    np.savez(tmp_path / "sizes.npz", **dict(arrays, wrist_grid=np.array([12, 10]),
                                            token_part_sizes=np.array([256, 100, 1, 1])))
    with pytest.raises(AttentionMapFileError, match=r"sizes.npz: token_part_sizes: .*sum to"):
        load_attention_maps(tmp_path / "sizes.npz")

    # an object array would need pickle: refused, not unpickled
    np.savez(tmp_path / "pickled.npz", **dict(arrays, wrist_grid=np.array([12, 10]),
                                              token_part_names=np.array(["head", "wrist", "state",
                                                                         "time"], dtype=object)))
    with pytest.raises(AttentionMapFileError, match="pickled.npz"):
        load_attention_maps(tmp_path / "pickled.npz")

    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_attention_maps(tmp_path / "nope.npz")
    assert zipfile.is_zipfile(good)


def test_write_is_atomic_replace(tmp_path, synth_kwargs):
    path = tmp_path / "maps.npz"
    save_attention_maps(path, **synth_kwargs)
    save_attention_maps(path, **make_maps(S=2, L=1, B=1, Hh=1))
    assert load_attention_maps(path).attn.shape[:4] == (2, 1, 1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]
