"""Wire format of the policy server: msgpack messages with numpy arrays, and their validation.

Arrays travel as a small map (no pickle, no msgpack extension types)::

    {"__ndarray__": 1, "dtype": "<f4", "shape": [64, 13], "data": <bytes, C order>}

Only the little-endian numeric dtypes in :data:`ALLOWED_DTYPES` are accepted (no object, string,
structured or complex arrays), at most :data:`MAX_NDIM` dimensions. Decoding checks the declared
dtype and shape (and, for images, the pixel count) *before* an array is built, and the byte count
must match the shape exactly; the array is then a read-only view of the received bytes (no copy).

Messages (protocol :data:`PROTOCOL` version :data:`PROTOCOL_VERSION`):

* server -> client, once on connect: the metadata map (:func:`build_metadata`): ``protocol``,
  ``protocol_version``, ``model_id``, ``checkpoint_sha256``, ``shape_meta``, ``action_horizon``,
  ``action_dim``, ``state_dim``, ``image_size``, ``obs_keys``, ``max_num_samples``, ``limits``, ...
* client -> server, a request: ``{"obs": {"right_cam_img": uint8 (H, W, 3), "rgbm": uint8
  (H, W, 4), "right_state": float (13,)}, "noise": optional float32 (horizon, 13) or
  (num_samples, horizon, 13), "num_samples": optional int, "request_id": optional int or str,
  "language": optional str (only for a policy that takes language: the handshake then says
  ``"accepts_language": true``; DexVLA, issue 23)}``.
* server -> client, the reply: ``{"actions": float32 (horizon, 13), "request_id": ...,
  "timing": {"decode_ms", "infer_ms", "server_ms"}}`` (a language policy adds ``"reasoning"``: the
  text it generated for this chunk) or ``{"error": {"type": ..., "message": ...},
  "request_id": ...}``. An error reply leaves the connection usable.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Optional

import msgpack
import numpy as np

PROTOCOL = "dexgraspvla-policy"
PROTOCOL_VERSION = 1
TOKEN_ENV_VAR = "DEXGRASPVLA_POLICY_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Largest message the server accepts (websocket ``max_size``): 32 MiB holds two 1920x1080 raw
#: frames (wrist BGR + head BGR-mask, 14.5 MB) with room to spare; two 640x480 frames are 2.2 MB.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
#: Largest image (height x width) the server accepts: 1920 x 1080.
DEFAULT_MAX_IMAGE_PIXELS = 1920 * 1080
#: Largest ``num_samples`` a request may ask for (chunks denoised per observation).
DEFAULT_MAX_NUM_SAMPLES = 16
#: Largest reply a client accepts (an action chunk is ~3 KB; the metadata ~2 KB).
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024

ARRAY_KEY = "__ndarray__"
ALLOWED_DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
MAX_NDIM = 4
IMAGE_KEYS = {"right_cam_img": 3, "rgbm": 4}
STATE_KEY = "right_state"
REQUEST_KEYS = frozenset({"obs", "noise", "num_samples", "request_id", "language"})
MAX_REQUEST_ID_CHARS = 128
MAX_LANGUAGE_CHARS = 1024   # longest instruction a request may carry
_MAX_STR = 1 << 16          # longest string in a message
_MAX_CONTAINER = 1 << 12    # most items in one list / map
_TOKEN_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RequestError(ValueError):
    """A request the server refuses; ``kind`` goes into the error reply's ``type``.

    Kinds: ``bad_message`` (not decodable msgpack / not binary), ``bad_request`` (structure, keys,
    request id, num_samples), ``bad_array`` (dtype, shape or byte count), ``image_too_large``,
    ``bad_observation`` (against the policy's shape_meta), ``bad_noise``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ProtocolError(RuntimeError):
    """The other side does not speak this protocol (wrong version, malformed reply)."""


# ---------------------------------------------------------------------------------------- encoding
def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = obj.astype(obj.dtype.newbyteorder("<")) if obj.dtype.byteorder == ">" else obj
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise TypeError(f"cannot send a numpy array of dtype {obj.dtype} (allowed: {sorted(ALLOWED_DTYPES)})")
        if arr.ndim > MAX_NDIM:
            raise TypeError(f"cannot send a {arr.ndim}-D array (at most {MAX_NDIM} dimensions)")
        arr = np.ascontiguousarray(arr)
        data = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b""
        return {ARRAY_KEY: 1, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": data}
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (maps, lists, numbers, strings, bytes, numpy arrays of allowed dtypes)."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: Any, max_bytes: Optional[int] = None) -> Any:
    """Decode one message *without* turning arrays into numpy (see :func:`array_from_wire`).

    Extension types are refused; strings, lists and maps are bounded. Raises :class:`RequestError`
    (``bad_message``) for anything that is not a single well-formed msgpack object.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RequestError("bad_message", "expected a binary msgpack message, got a text frame")
    if max_bytes is not None and len(data) > max_bytes:
        raise RequestError("bad_message", f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_ext_len=0,
                               max_str_len=_MAX_STR, max_bin_len=len(data), max_array_len=_MAX_CONTAINER,
                               max_map_len=_MAX_CONTAINER)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # ExtraData, OutOfData, limits
        raise RequestError("bad_message", f"not a valid msgpack message: {exc}") from None
    except RecursionError:
        raise RequestError("bad_message", "message nested too deeply") from None


def is_wire_array(node: Any) -> bool:
    return isinstance(node, dict) and ARRAY_KEY in node


def array_header(node: Any, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Declared ``(dtype, shape)`` of a wire array, checked against the allowed dtypes and
    :data:`MAX_NDIM`; nothing is allocated."""
    if not is_wire_array(node):
        raise RequestError("bad_array", f"{where}: expected an array ({{'{ARRAY_KEY}', 'dtype', 'shape', 'data'}}), "
                                        f"got {type(node).__name__}")
    if set(node) != {ARRAY_KEY, "dtype", "shape", "data"}:
        raise RequestError("bad_array", f"{where}: array keys must be {ARRAY_KEY}, dtype, shape, data; "
                                        f"got {sorted(node)}")
    dtype, shape = node["dtype"], node["shape"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise RequestError("bad_array", f"{where}: dtype {dtype!r} is not allowed (allowed: "
                                        f"{', '.join(sorted(ALLOWED_DTYPES))})")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestError("bad_array", f"{where}: shape must be a list of at most {MAX_NDIM} non-negative "
                                        f"integers, got {shape!r}")
    return np.dtype(dtype), tuple(shape)


def array_from_wire(node: Any, where: str, max_elements: Optional[int] = None) -> np.ndarray:
    """Build a (read-only, zero-copy) numpy array from a wire array after checking its header,
    its element count (``max_elements``) and that the bytes match the shape exactly."""
    dtype, shape = array_header(node, where)
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise RequestError("bad_array", f"{where}: {count} elements exceed the limit of {max_elements}")
    data = node["data"]
    if not isinstance(data, (bytes, bytearray)):
        raise RequestError("bad_array", f"{where}: data must be binary, got {type(data).__name__}")
    if len(data) != count * dtype.itemsize:
        raise RequestError("bad_array", f"{where}: {len(data)} data bytes do not match shape {list(shape)} of "
                                        f"{dtype.str} ({count * dtype.itemsize} bytes)")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def decode_arrays(node: Any, where: str = "message") -> Any:
    """Replace every wire array in a decoded message by its numpy array (for replies/metadata)."""
    if is_wire_array(node):
        return array_from_wire(node, where)
    if isinstance(node, dict):
        return {k: decode_arrays(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [decode_arrays(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


# ---------------------------------------------------------------------------------------- requests
class Request:
    """A validated request: raw observation arrays, optional noise, samples, request id and language."""

    __slots__ = ("obs", "noise", "num_samples", "request_id", "language")

    def __init__(self, obs: dict, noise: Optional[np.ndarray], num_samples: int, request_id: Any,
                 language: Optional[str] = None) -> None:
        self.obs, self.noise, self.num_samples, self.request_id = obs, noise, num_samples, request_id
        self.language = language


def peek_request_id(msg: Any) -> Any:
    """The request id of a decoded message if it is a valid one, else ``None`` (for error replies)."""
    if isinstance(msg, dict):
        rid = msg.get("request_id")
        if _valid_request_id(rid):
            return rid
    return None


def _valid_request_id(rid: Any) -> bool:
    return rid is None or (isinstance(rid, int) and not isinstance(rid, bool) and -(2 ** 63) <= rid < 2 ** 64) or (
        isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID_CHARS)


def parse_request(msg: Any, shape_meta: Mapping, *, max_image_pixels: int, max_num_samples: int,
                  default_num_samples: int = 1) -> Request:
    """Validate a decoded request message (see module docstring) for a policy with ``shape_meta``.

    Images are checked against ``max_image_pixels`` from their declared shape before any array is
    built; the observation is then checked with :func:`controller.common.shape_meta.check_raw_obs`.
    Raises :class:`RequestError`.
    """
    from controller.common.shape_meta import (OBS_KEYS, ShapeMetaError, action_dim_of, action_horizon_of,
                                              check_raw_obs)

    if not isinstance(msg, dict):
        raise RequestError("bad_request", f"a request must be a map, got {type(msg).__name__}")
    unknown = set(msg) - REQUEST_KEYS
    if unknown:
        raise RequestError("bad_request", f"unknown request keys {sorted(map(str, unknown))} "
                                          f"(allowed: {sorted(REQUEST_KEYS)})")
    rid = msg.get("request_id")
    if not _valid_request_id(rid):
        raise RequestError("bad_request", f"request_id must be an integer or a string of at most "
                                          f"{MAX_REQUEST_ID_CHARS} characters")
    k = msg.get("num_samples", default_num_samples)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_num_samples:
        raise RequestError("bad_request", f"num_samples must be an integer in [1, {max_num_samples}], got {k!r}")
    language = msg.get("language")
    if language is not None and (not isinstance(language, str) or len(language) > MAX_LANGUAGE_CHARS):
        raise RequestError("bad_request", f"language must be a string of at most {MAX_LANGUAGE_CHARS} characters")
    obs_msg = msg.get("obs")
    if not isinstance(obs_msg, dict):
        raise RequestError("bad_request", "a request needs 'obs', a map of observation arrays")
    missing = [key for key in OBS_KEYS if key not in obs_msg]
    if missing:
        raise RequestError("bad_observation", f"observation: missing key(s) {missing} (expected {list(OBS_KEYS)})")
    extra = set(obs_msg) - set(OBS_KEYS)
    if extra:
        raise RequestError("bad_observation", f"observation: unknown key(s) {sorted(map(str, extra))} "
                                              f"(expected {list(OBS_KEYS)})")
    obs = {}
    for key, channels in IMAGE_KEYS.items():
        _, shape = array_header(obs_msg[key], f"obs.{key}")
        if len(shape) == 3 and shape[0] * shape[1] > max_image_pixels:
            raise RequestError("image_too_large", f"obs.{key}: {shape[0]}x{shape[1]} image has more than "
                                                  f"{max_image_pixels} pixels (the server's limit)")
        obs[key] = array_from_wire(obs_msg[key], f"obs.{key}", max_elements=max_image_pixels * channels)
    state = array_from_wire(obs_msg[STATE_KEY], f"obs.{STATE_KEY}", max_elements=1024)
    if state.dtype.kind != "f":
        raise RequestError("bad_observation", f"obs.{STATE_KEY}: expected a float array, got dtype {state.dtype}")
    obs[STATE_KEY] = state
    try:
        check_raw_obs(obs, shape_meta, "obs")
    except ShapeMetaError as exc:
        raise RequestError("bad_observation", str(exc)) from None
    noise = None
    if msg.get("noise") is not None:
        horizon, adim = action_horizon_of(shape_meta), action_dim_of(shape_meta)
        want = (k, horizon, adim) if k > 1 else (horizon, adim)
        noise = array_from_wire(msg["noise"], "noise", max_elements=max_num_samples * horizon * adim)
        if noise.dtype != np.float32 or noise.shape != want:
            raise RequestError("bad_noise", f"noise: expected float32 {list(want)} for num_samples={k}, got "
                                            f"{noise.dtype} {list(noise.shape)}")
        if not np.all(np.isfinite(noise)):
            raise RequestError("bad_noise", "noise: contains NaN/inf")
    return Request(obs, noise, int(k), rid, language)


def error_reply(kind: str, message: str, request_id: Any = None) -> dict:
    """The error reply map."""
    return {"error": {"type": kind, "message": message}, "request_id": request_id}


# ---------------------------------------------------------------------------------------- metadata
def build_metadata(*, shape_meta: Mapping, model_id: str, checkpoint_sha256: Optional[str], policy_class: str,
                   device: str, precision: str, max_num_samples: int, default_num_samples: int,
                   max_message_bytes: int, max_image_pixels: int, max_clients: int, token_required: bool,
                   accepts_language: bool = False) -> dict:
    """The handshake map the server sends on every new connection (``accepts_language``: only
    present, as true, for a policy whose requests carry an instruction)."""
    from controller.common.shape_meta import (OBS_KEYS, action_dim_of, action_horizon_of, image_size_of,
                                              state_dim_of, validate_shape_meta)

    meta = {
        "protocol": PROTOCOL, "protocol_version": PROTOCOL_VERSION,
        "model_id": model_id, "checkpoint_sha256": checkpoint_sha256, "policy_class": policy_class,
        "shape_meta": validate_shape_meta(shape_meta), "obs_keys": list(OBS_KEYS),
        "action_horizon": action_horizon_of(shape_meta), "action_dim": action_dim_of(shape_meta),
        "state_dim": state_dim_of(shape_meta), "image_size": list(image_size_of(shape_meta)),
        "device": device, "precision": precision,
        "max_num_samples": int(max_num_samples), "default_num_samples": int(default_num_samples),
        "limits": {"max_message_bytes": int(max_message_bytes), "max_image_pixels": int(max_image_pixels),
                   "max_clients": int(max_clients)},
        "token_required": bool(token_required),
    }
    if accepts_language:
        meta["accepts_language"] = True
    return meta


def check_metadata(meta: Any) -> dict:
    """Check a server's handshake map (protocol name and version, the fields a client relies on)."""
    if not isinstance(meta, dict):
        raise ProtocolError(f"the server's handshake is not a map: {type(meta).__name__}")
    if meta.get("protocol") != PROTOCOL or meta.get("protocol_version") != PROTOCOL_VERSION:
        raise ProtocolError(f"the server speaks {meta.get('protocol')!r} version {meta.get('protocol_version')!r}; "
                            f"this client speaks {PROTOCOL!r} version {PROTOCOL_VERSION}")
    for key in ("action_horizon", "action_dim", "shape_meta", "max_num_samples"):
        if key not in meta:
            raise ProtocolError(f"the server's handshake lacks {key!r}")
    return meta


def valid_token_env_name(name: str) -> bool:
    """True if ``name`` can be an environment variable name."""
    return isinstance(name, str) and bool(_TOKEN_ENV_NAME.match(name))
