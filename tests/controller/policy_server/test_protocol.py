"""The wire format: numpy arrays as msgpack maps, a fixed set of numeric dtypes, nothing pickled."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from controller.common.shape_meta import make_shape_meta
from controller.policy_server.protocol import (ALLOWED_DTYPES, RequestError, array_from_wire, decode_arrays, packb,
                                               parse_request, unpackb)

SHAPE_META = make_shape_meta(112)
LIMITS = {"max_image_pixels": 640 * 480, "max_num_samples": 4}


def wire(obj):
    return unpackb(packb(obj))


def request(**overrides):
    rng = np.random.default_rng(0)
    msg = {"obs": {"right_cam_img": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                   "rgbm": rng.integers(0, 256, (48, 64, 4), dtype=np.uint8),
                   "right_state": np.zeros(13, np.float32)}, "request_id": 7}
    msg.update(overrides)
    return wire(msg)


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
def test_arrays_round_trip_exactly(dtype):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(np.dtype(dtype))
    out = decode_arrays(wire({"a": arr, "nested": [arr[0]]}))
    for got, want in ((out["a"], arr), (out["nested"][0], arr[0])):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def test_big_endian_non_contiguous_and_scalars_are_normalised():
    arr = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    out = decode_arrays(wire({"a": arr, "s": np.float32(1.5), "i": np.int64(3), "t": (1, 2)}))
    assert out["a"].dtype == np.dtype("<f4") and np.array_equal(out["a"], arr)
    assert out["s"] == 1.5 and out["i"] == 3 and out["t"] == [1, 2]


@pytest.mark.parametrize("bad", [np.array([object()], dtype=object), np.array(["text"]), np.zeros(2, np.complex64),
                                 np.zeros(2, dtype=[("a", "f4")]), np.zeros((1,) * 5, np.uint8)])
def test_unsupported_arrays_are_never_sent(bad):
    with pytest.raises(TypeError):
        packb({"a": bad})


def test_unsupported_python_objects_are_never_sent():
    with pytest.raises(TypeError):
        packb({"a": {1, 2}})


@pytest.mark.parametrize("node, match", [
    ({"__ndarray__": 1, "dtype": "|O", "shape": [1], "data": b"\0" * 8}, "not allowed"),
    ({"__ndarray__": 1, "dtype": ">f4", "shape": [1], "data": b"\0" * 4}, "not allowed"),
    ({"__ndarray__": 1, "dtype": "<f4", "shape": [-1], "data": b""}, "non-negative"),
    ({"__ndarray__": 1, "dtype": "<f4", "shape": [1, 1, 1, 1, 1], "data": b"\0" * 4}, "at most 4"),
    ({"__ndarray__": 1, "dtype": "<f4", "shape": [3], "data": b"\0" * 4}, "do not match"),
    ({"__ndarray__": 1, "dtype": "<f4", "shape": [1], "data": "text"}, "binary"),
    ({"__ndarray__": 1, "dtype": "<f4", "shape": [1], "data": b"\0" * 4, "x": 1}, "array keys"),
])
def test_malformed_arrays_are_refused(node, match):
    with pytest.raises(RequestError, match=match) as err:
        array_from_wire(node, "a")
    assert err.value.kind == "bad_array"


def test_extension_types_and_garbage_are_refused():
    for data in (msgpack.packb(msgpack.ExtType(1, b"\x80\x04N.")), b"\xc1", packb(1) + packb(2), "text"):
        with pytest.raises(RequestError) as err:
            unpackb(data)
        assert err.value.kind == "bad_message"


def test_a_good_request_parses_to_read_only_views():
    req = parse_request(request(), SHAPE_META, **LIMITS)
    assert req.request_id == 7 and req.num_samples == 1 and req.noise is None
    assert req.obs["rgbm"].shape == (48, 64, 4) and not req.obs["rgbm"].flags.writeable


@pytest.mark.parametrize("change, kind", [
    ({"obs": None}, "bad_request"),
    ({"extra": 1}, "bad_request"),
    ({"request_id": 1.5}, "bad_request"),
    ({"num_samples": 5}, "bad_request"),
    ({"num_samples": True}, "bad_request"),
    ({"noise": np.zeros((64, 13), np.float64)}, "bad_noise"),
    ({"noise": np.zeros((2, 64, 13), np.float32)}, "bad_noise"),
    ({"noise": np.full((64, 13), np.nan, np.float32)}, "bad_noise"),
])
def test_bad_requests_name_their_problem(change, kind):
    with pytest.raises(RequestError) as err:
        parse_request(request(**change), SHAPE_META, **LIMITS)
    assert err.value.kind == kind


@pytest.mark.parametrize("key, value, match", [
    ("rgbm", np.zeros((48, 64, 3), np.uint8), "rgbm"),
    ("rgbm", np.zeros((48, 64, 4), np.float32), "uint8"),
    ("right_state", np.zeros(12, np.float32), "right_state"),
    ("right_state", np.zeros(13, np.int32), "float"),
    ("right_state", np.full(13, np.inf, np.float32), "NaN/inf"),
    ("right_cam_img", None, "missing"),
    ("depth", np.zeros((2, 2), np.uint8), "unknown"),
])
def test_bad_observations_are_refused(key, value, match):
    msg = request()
    obs = dict(msg["obs"])
    if value is None:
        del obs[key]
    else:
        obs[key] = wire(value)
    msg["obs"] = obs
    with pytest.raises(RequestError, match=match) as err:
        parse_request(msg, SHAPE_META, **LIMITS)
    assert err.value.kind == "bad_observation"


def test_image_pixels_are_checked_from_the_declared_shape():
    """A header declaring a huge image is refused as too large before the array is built (the byte
    count would not even match: the size check comes first)."""
    msg = request()
    msg["obs"]["rgbm"] = {"__ndarray__": 1, "dtype": "|u1", "shape": [100000, 100000, 4], "data": b"\0" * 16}
    with pytest.raises(RequestError, match="pixels") as err:
        parse_request(msg, SHAPE_META, **LIMITS)
    assert err.value.kind == "image_too_large"
