"""The data contract (``shape_meta``), declared once and checked everywhere.

Every component that produces or consumes observations/actions -- the zarr dataset, the policy,
the simulator and the robot runtime -- validates against the same description, so a mismatch
(for example a 12-D state, or a 224 px image fed to a 518 px model) is reported at start-up with
the component and field named, rather than as a shape error deep inside a matmul.

Layout (DESIGN.md section 1)::

    obs:
      right_cam_img: {shape: [3, H, W], type: rgb,  horizon: 1}   # wrist camera, BGR, float [0, 1]
      rgbm:          {shape: [4, H, W], type: rgbm, horizon: 1}   # head camera BGR + target mask
      right_state:   {shape: [13],      type: low_dim, horizon: 1}
    action:          {shape: [13], horizon: 64}

Raw (recorded / live) frames are uint8 HxWxC at camera resolution; model inputs are float CxHxW
at ``image_size``. :func:`check_raw_obs` validates the former, :func:`check_model_obs` the latter.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

STATE_DIM = 13
ARM_DOF = 7
HAND_DOF = 6
ACTION_DIM = 13
ACTION_HORIZON = 64
OBS_KEYS = ("right_cam_img", "rgbm", "right_state")
RAW_IMAGE_HW = (480, 640)


class ShapeMetaError(ValueError):
    """Raised when data, a model or a device does not match the declared ``shape_meta``."""


def make_shape_meta(image_size: int | tuple[int, int] = 518, action_horizon: int = ACTION_HORIZON,
                    n_obs_steps: int = 1, state_dim: int = STATE_DIM,
                    action_dim: int = ACTION_DIM) -> dict:
    """Build the canonical shape_meta dict for a model input size."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return {
        "obs": {
            "right_cam_img": {"shape": [3, h, w], "type": "rgb", "horizon": n_obs_steps},
            "rgbm": {"shape": [4, h, w], "type": "rgbm", "horizon": n_obs_steps},
            "right_state": {"shape": [state_dim], "type": "low_dim", "horizon": n_obs_steps},
        },
        "action": {"shape": [action_dim], "horizon": action_horizon},
    }


def _to_plain(obj: Any) -> Any:
    try:  # OmegaConf DictConfig / ListConfig
        from omegaconf import OmegaConf
        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


def validate_shape_meta(shape_meta: Mapping, where: str = "shape_meta") -> dict:
    """Check a shape_meta mapping is well formed and return it as a plain dict.

    Raises :class:`ShapeMetaError` naming the offending field.
    """
    sm = _to_plain(shape_meta)
    if not isinstance(sm, Mapping):
        raise ShapeMetaError(f"{where}: expected a mapping with 'obs' and 'action', got {type(sm).__name__}")
    for top in ("obs", "action"):
        if top not in sm:
            raise ShapeMetaError(f"{where}: missing key '{top}'")
    obs = sm["obs"]
    for key in OBS_KEYS:
        if key not in obs:
            raise ShapeMetaError(f"{where}.obs: missing key '{key}' (expected {list(OBS_KEYS)})")
        if "shape" not in obs[key]:
            raise ShapeMetaError(f"{where}.obs.{key}: missing 'shape'")
    c_w, h_w, w_w = obs["right_cam_img"]["shape"]
    c_h, h_h, w_h = obs["rgbm"]["shape"]
    if c_w != 3:
        raise ShapeMetaError(f"{where}.obs.right_cam_img.shape: expected 3 channels, got {c_w}")
    if c_h != 4:
        raise ShapeMetaError(f"{where}.obs.rgbm.shape: expected 4 channels (BGR + mask), got {c_h}")
    for key, h, w in (("right_cam_img", h_w, w_w), ("rgbm", h_h, w_h)):
        if h <= 0 or w <= 0:
            raise ShapeMetaError(f"{where}.obs.{key}.shape: image size must be positive, got {h}x{w}")
    act = sm["action"]
    if "shape" not in act or len(act["shape"]) != 1:
        raise ShapeMetaError(f"{where}.action.shape: expected a 1-D shape like [13], got {act.get('shape')}")
    if int(act.get("horizon", 0)) < 1:
        raise ShapeMetaError(f"{where}.action.horizon: expected >= 1, got {act.get('horizon')}")
    state_dim = obs["right_state"]["shape"][0]
    if state_dim != act["shape"][0]:
        raise ShapeMetaError(
            f"{where}: right_state dim {state_dim} != action dim {act['shape'][0]} (joint-space policy)")
    return dict(sm)


def image_size_of(shape_meta: Mapping) -> tuple[int, int]:
    """(H, W) of the model's image inputs."""
    sm = validate_shape_meta(shape_meta)
    _, h, w = sm["obs"]["rgbm"]["shape"]
    return int(h), int(w)


def state_dim_of(shape_meta: Mapping) -> int:
    return int(validate_shape_meta(shape_meta)["obs"]["right_state"]["shape"][0])


def action_dim_of(shape_meta: Mapping) -> int:
    return int(validate_shape_meta(shape_meta)["action"]["shape"][0])


def action_horizon_of(shape_meta: Mapping) -> int:
    return int(validate_shape_meta(shape_meta)["action"]["horizon"])


def check_raw_obs(obs: Mapping[str, Any], shape_meta: Mapping, where: str = "observation") -> None:
    """Validate one raw observation (as cameras/robot/sim produce it, no batch dim).

    Expected: ``right_cam_img`` uint8 (H, W, 3) BGR; ``rgbm`` uint8 (H, W, 4) with the mask in
    channel 3; ``right_state`` float (state_dim,). Raw image resolution is free (it is resized to the
    model's size), but head and wrist channels must match.
    """
    sd = state_dim_of(shape_meta)
    for key in OBS_KEYS:
        if key not in obs:
            raise ShapeMetaError(f"{where}: missing key '{key}' (expected {list(OBS_KEYS)})")
    for key, ch in (("right_cam_img", 3), ("rgbm", 4)):
        arr = np.asarray(obs[key])
        if arr.ndim != 3 or arr.shape[2] != ch:
            raise ShapeMetaError(f"{where}.{key}: expected (H, W, {ch}) image, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ShapeMetaError(f"{where}.{key}: expected dtype uint8, got {arr.dtype}")
    st = np.asarray(obs["right_state"])
    if st.shape != (sd,):
        raise ShapeMetaError(f"{where}.right_state: expected shape ({sd},), got {st.shape}")
    if not np.all(np.isfinite(st)):
        raise ShapeMetaError(f"{where}.right_state: contains NaN/inf: {st}")


def check_model_obs(obs: Mapping[str, Any], shape_meta: Mapping, where: str = "policy input") -> int:
    """Validate a batched model observation dict; returns the batch size.

    Expected (torch tensors or arrays): ``rgbm`` (B, T, 4, H, W), ``right_cam_img`` (B, T, 3, H, W),
    ``right_state`` (B, T, state_dim) with T == horizon and H, W from shape_meta.
    """
    sm = validate_shape_meta(shape_meta)
    batch = None
    for key in OBS_KEYS:
        if key not in obs:
            raise ShapeMetaError(f"{where}: missing key '{key}' (expected {list(OBS_KEYS)})")
        spec = sm["obs"][key]
        shape = tuple(obs[key].shape)
        want = (int(spec.get("horizon", 1)), *[int(s) for s in spec["shape"]])
        if len(shape) != len(want) + 1 or shape[1:] != want:
            raise ShapeMetaError(f"{where}.{key}: expected (B, {', '.join(map(str, want))}), got {shape}")
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise ShapeMetaError(f"{where}.{key}: batch size {shape[0]} differs from {batch}")
    return int(batch)
