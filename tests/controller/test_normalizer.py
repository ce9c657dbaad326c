"""LinearNormalizer: limits/gaussian fits, round trips, reference state-dict layout, (de)serialisation."""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from controller.model.common.normalizer import LinearNormalizer, SingleFieldLinearNormalizer


def _data(seed=0):
    rng = np.random.default_rng(seed)
    action = rng.uniform(-3, 5, size=(200, 13)).astype(np.float32)
    action[:, 12] = 0.25  # constant dim
    state = rng.normal(size=(200, 13)).astype(np.float32)
    return {"action": action, "right_state": state}


def _fitted():
    return LinearNormalizer().fit(_data())


def test_limits_map_min_max_to_unit_range():
    d = _data()
    norm = _fitted()
    n = norm["action"].normalize(d["action"])
    assert isinstance(n, np.ndarray) and n.dtype == np.float32
    np.testing.assert_allclose(n[:, :12].min(0), -1, atol=1e-5)
    np.testing.assert_allclose(n[:, :12].max(0), 1, atol=1e-5)
    np.testing.assert_allclose(n[:, 12], 0, atol=1e-7)  # constant dim sits in the middle
    out = norm.get_output_stats()["action"]
    np.testing.assert_allclose(out["min"][:12].numpy(), -1, atol=1e-5)


def test_custom_output_range_and_gaussian():
    d = _data()["action"][:, :12]
    n = LinearNormalizer().fit({"a": d}, output_min=0.0, output_max=2.0).normalize({"a": d})["a"]
    np.testing.assert_allclose([n.min(), n.max()], [0, 2], atol=1e-5)
    g = LinearNormalizer().fit(d, mode="gaussian").normalize(d)
    np.testing.assert_allclose(g.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(g.std(0, ddof=1), 1, atol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        LinearNormalizer().fit(d, mode="minmax")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_tensor(dtype):
    d = _data()
    norm = _fitted()
    x = torch.from_numpy(d["action"]).to(dtype).reshape(10, 20, 13)   # (B, T, D)
    n = norm["action"].normalize(x)
    assert n.dtype == dtype and n.shape == x.shape
    back = norm["action"].unnormalize(n)
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 0.1}[dtype]
    torch.testing.assert_close(back.float(), x.float(), atol=tol, rtol=tol)


def test_round_trip_numpy_and_dict():
    d = _data()
    norm = _fitted()
    n = norm.normalize(d)
    assert set(n) == {"action", "right_state"}
    back = norm.unnormalize(n)
    for k in d:
        np.testing.assert_allclose(back[k], d[k], atol=1e-5)
    np.testing.assert_allclose(norm(d)["right_state"], n["right_state"])


def test_state_dict_keys_match_reference():
    sd = _fitted().state_dict()
    expected = {f"params_dict.{k}.{p}" for k in ("action", "right_state")
                for p in ("scale", "offset", "input_stats.min", "input_stats.max",
                          "input_stats.mean", "input_stats.std")}
    assert set(sd) == expected
    assert all(v.shape == (13,) and v.dtype == torch.float32 for v in sd.values())
    assert all(not p.requires_grad for p in _fitted().parameters())


def test_load_into_empty_and_as_submodule():
    src = _fitted()
    dst = LinearNormalizer()
    dst.load_state_dict(src.state_dict())
    x = _data(1)["action"]
    np.testing.assert_array_equal(dst["action"].normalize(x), src["action"].normalize(x))
    assert all(not p.requires_grad for p in dst.parameters())

    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.normalizer = LinearNormalizer()
            self.lin = nn.Linear(2, 2)
    p = Policy()
    p.normalizer.load_state_dict(src.state_dict())
    fresh = Policy()
    fresh.load_state_dict(p.state_dict(), strict=True)
    assert fresh.normalizer.keys() == ["action", "right_state"]
    torch.testing.assert_close(fresh.normalizer.params_dict["action"]["scale"], src.params_dict["action"]["scale"])


def test_params_follow_module_device_and_dtype():
    norm = _fitted().to(torch.float64)
    assert norm.params_dict["action"]["scale"].dtype == torch.float64
    meta = _fitted().to("meta")
    assert meta.params_dict["action"]["input_stats"]["min"].device.type == "meta"
    x = torch.zeros(4, 13)
    assert _fitted()["action"].normalize(x).device == x.device


def test_to_dict_from_dict_json_and_flat():
    src = _fitted()
    nested = src.to_dict()
    assert set(nested["action"]) == {"scale", "offset", "input_stats"}
    as_json = json.loads(json.dumps({k: {n: (v.tolist() if isinstance(v, np.ndarray) else
                                              {s: a.tolist() for s, a in v.items()})
                                          for n, v in f.items()} for k, f in nested.items()}))
    flat = src.to_dict(flat=True)
    assert "action.input_stats.min" in flat and all(isinstance(v, np.ndarray) for v in flat.values())
    x = _data(2)["right_state"]
    for d in (nested, as_json, flat):
        rebuilt = LinearNormalizer.from_dict(d)
        np.testing.assert_allclose(rebuilt["right_state"].normalize(x), src["right_state"].normalize(x), rtol=1e-6)
        assert set(rebuilt.state_dict()) == set(src.state_dict())


def test_errors_and_misc():
    norm = _fitted()
    with pytest.raises(KeyError, match="no field 'rgbm'"):
        norm.normalize({"rgbm": np.zeros((2, 13))})
    with pytest.raises(KeyError, match="_default"):
        norm.normalize(np.zeros((2, 13)))
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 13\)"):
        norm["action"].normalize(np.zeros((2, 12)))
    with pytest.raises(ValueError, match="'action'.*NaN"):
        LinearNormalizer().fit({"action": np.full((3, 2), np.nan)})
    ident = SingleFieldLinearNormalizer.create_identity(3)
    np.testing.assert_array_equal(ident.normalize(np.ones((2, 3), np.float32)), np.ones((2, 3)))
    norm["extra"] = ident
    assert "extra" in norm and pickle.loads(pickle.dumps(norm)).keys() == norm.keys()
    assert copy.deepcopy(norm)["action"].normalize(np.zeros(13, np.float32)).shape == (13,)
