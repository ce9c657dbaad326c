"""The ``act_h5`` format: ACT / act-plus-plus / DexVLA HDF5 episodes (reader; writer in :mod:`.act_h5_write`).

A directory of ``*.hdf5`` / ``*.h5`` files, one episode each, in natural order (``episode_2``
before ``episode_10``), or a single such file. Per file (T steps)::

    action                       (T, D)            float
    language_raw                 (1,)              bytes or str: the instruction (DexVLA)
    substep_reasonings           (T,)              bytes or str: sub-step reasoning (DexVLA, optional)
    observations/images/<cam>    (T, H, W, 3)      uint8 RGB (raw, gzip or lzf), or JPEG rows:
                                 (T,) vlen uint8 or (T, N) zero-padded uint8 (ALOHA exports)
    observations/qpos            (T, D_state)      float
    observations/qvel            (T, D_state)      float (not read)
    observations/joint_positions (T, D)            optional (usable through state_keys)
    action_is_pad                (T,)              optional (length-checked only)

Mapping onto our keys (:class:`~controller.dataset.formats.base.SourceOptions`):

* ``rgbm`` = head camera (RGB -> BGR) + mask channel; ``right_cam_img`` = wrist camera (-> BGR).
* Default cameras (``camera_map`` empty), looked up in the first file's ``observations/images``:
  head = the first of :data:`HEAD_NAMES` present, else the only camera whose name contains neither
  ``wrist`` nor ends in ``_mask``; wrist = the first of :data:`WRIST_NAMES` present, else the only
  camera whose name contains ``wrist``. Otherwise a :class:`DatasetError` lists the cameras found.
* ``state_keys`` default ``observations/qpos``, ``action_keys`` default ``action`` (paths inside the
  file, or relative to ``observations/``; several are concatenated along the last axis).
* Mask: ``zeros`` -> the file's own ``observations/images/<head>_mask`` if present (what our writer
  stores), else an empty channel; ``from-key`` -> ``mask_key`` (an image dataset, path inside the
  file or name under ``observations/images``); ``segment`` is done by ``convert``, not here.

Text: ``language(ep)`` raises a :class:`DatasetError` naming the file when its ``language_raw`` is
missing (the DexVLA layout requires it; arrays of such files read fine, so training without text
works, but ``GraspDataset(load_text=True)`` or a conversion carrying text fails). A missing
``substep_reasonings`` reads as no reasoning (None).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.episodes import EpisodeArrays
from controller.dataset.errors import IMAGE_CHANNELS, LOW_DIM_DIMS, DatasetError
from controller.dataset.formats.base import SourceOptions, register_format, register_sink
from controller.dataset.formats.h5_frames import (Channel, LazyH5Frames, as_text, decode_row, image_kind,
                                                  list_h5_files, open_h5)

IMAGES = "observations/images"
#: Head camera names tried in order when ``camera_map`` has no ``head``.
HEAD_NAMES = ("head", "top", "cam_high", "high", "front", "cam_front")
#: Wrist camera names tried in order when ``camera_map`` has no ``wrist``.
WRIST_NAMES = ("wrist", "right_wrist", "cam_right_wrist", "cam_wrist")
MASK_SUFFIX = "_mask"
DEFAULT_STATE_KEYS = ("observations/qpos",)
DEFAULT_ACTION_KEYS = ("action",)
LANGUAGE_KEY, REASONING_KEY, PAD_KEY = "language_raw", "substep_reasonings", "action_is_pad"

__all__ = ["ActH5Source", "detect_act_h5", "open_act_h5", "default_cameras", "HEAD_NAMES", "WRIST_NAMES"]


def detect_act_h5(path: str) -> bool:
    """A ``.hdf5``/``.h5`` file, or a directory of them, whose first file has ``observations/`` and ``action``."""
    files = list_h5_files(path)
    if not files:
        return False
    try:
        with open_h5(files[0]) as f:
            return "observations" in f and "action" in f
    except DatasetError:
        return False


def default_cameras(file: str, cameras: Sequence[str], camera_map: Mapping[str, str]) -> dict[str, Optional[str]]:
    """Our role -> the source camera (see module docstring); None for a role no camera fills."""
    cams = [c for c in cameras if not c.endswith(MASK_SUFFIX)]
    out: dict[str, Optional[str]] = {}
    for role, names, pick in (("head", HEAD_NAMES, lambda c: "wrist" not in c.lower()),
                              ("wrist", WRIST_NAMES, lambda c: "wrist" in c.lower())):
        if role in camera_map:
            if camera_map[role] not in cameras:
                raise DatasetError(f"{file}: camera_map {role}={camera_map[role]!r} but '{IMAGES}' holds "
                                   f"{sorted(cameras)}; expected one of those")
            out[role] = camera_map[role]
            continue
        found = [n for n in names if n in cams]
        others = [c for c in cams if pick(c)]
        out[role] = found[0] if found else (others[0] if len(others) == 1 else None)
    return out


def _resolve(f: Any, file: str, name: str) -> str:
    """A dataset path inside the file: as given, or under ``observations/``."""
    for cand in (name, f"observations/{name}"):
        if cand in f:
            return cand
    raise DatasetError(f"{file}: missing key '{name}' (top level: {sorted(f.keys())}); expected it in every "
                       f"episode file (see state_keys / action_keys)")


def _low_dim(f: Any, file: str, names: Sequence[str], what: str, ep: int) -> tuple[np.ndarray, list[str]]:
    """Concatenate the (T, D) / (T,) datasets ``names`` -> (T, sum D) float32."""
    parts, keys = [], []
    for name in names:
        key = _resolve(f, file, name)
        ds = f[key]
        if ds.ndim not in (1, 2) or np.dtype(ds.dtype).kind not in "fiub":
            raise DatasetError(f"{file}: key '{key}' ({what}, episode {ep}) has shape {ds.shape} dtype {ds.dtype}; "
                               f"expected a numeric (T, D) array")
        try:
            arr = np.asarray(ds[()], dtype=np.float32)
        except OSError as exc:
            raise DatasetError(f"{file}: key '{key}' (episode {ep}) could not be read ({exc})") from exc
        parts.append(arr.reshape(len(arr), -1))                            # (T, D_i)
        keys.append(key)
    lengths = {k: len(p) for k, p in zip(keys, parts)}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{file}: {what} keys have different lengths {lengths} (episode {ep}); expected every "
                           f"per-step key to have the same length")
    out = np.concatenate(parts, axis=1)                                    # (T, D)
    if not np.isfinite(out).all():
        step = int(np.nonzero(~np.isfinite(out).all(axis=1))[0][0])
        raise DatasetError(f"{file}: {what} ({', '.join(keys)}) has NaN/inf at step {step} of episode {ep}; "
                           f"expected finite values")
    return out, keys


def _image_channel(f: Any, file: str, key: str, ep: int, rgb: bool, mask: bool) -> tuple[Channel, tuple, int]:
    """Channel of the image dataset ``key``, its (H, W, C) frame shape and length (decodes frame 0)."""
    if key not in f:
        raise DatasetError(f"{file}: missing key '{key}' (episode {ep}); found under '{IMAGES}': "
                           f"{sorted(f[IMAGES].keys()) if IMAGES in f else 'nothing'}")
    ds = f[key]
    kind = image_kind(ds)
    if kind is None:
        raise DatasetError(f"{file}: key '{key}' (episode {ep}) has shape {ds.shape} dtype {ds.dtype}; expected "
                           f"uint8 (T, H, W, 3) images, (T,) vlen uint8 or (T, N) uint8 JPEG rows")
    ch = Channel(file, key, kind, rgb, mask)
    if len(ds) == 0:
        return ch, (), 0
    try:
        first = decode_row(ch, ds[0])                                      # (H, W, C)
    except Exception as exc:
        raise DatasetError(f"{file}: key '{key}' frame 0 of episode {ep} could not be decoded "
                           f"({type(exc).__name__}: {exc}); expected a {kind} uint8 image") from exc
    return ch, first.shape, len(ds)


class ActH5Source(EpisodeArrays):
    """Read-only :class:`~controller.dataset.formats.base.EpisodeSource` over ACT/DexVLA HDF5 episodes.

    Use :meth:`open`. Low-dim keys are loaded at open; images are :class:`LazyH5Frames`.
    """

    format_name = "act_h5"

    def __init__(self, path: str, files: list[str], ends: np.ndarray, data: Mapping[str, Any],
                 cameras: Mapping[str, Optional[str]], all_cameras: list[str], info: Mapping[str, Any]):
        self.path, self.files = path, files
        self._episode_ends = np.asarray(ends, dtype=np.int64)
        self._data = dict(data)
        self.cameras, self.all_cameras, self.info = dict(cameras), all_cameras, dict(info)
        self._language: dict[int, str] = {}
        self._reasoning: dict[int, Optional[list[Optional[str]]]] = {}

    @classmethod
    def open(cls, path: str, keys: Optional[Sequence[str]] = None, low_dim_dims: Optional[Mapping[str, int]] = None,
             verify: bool = True, options: Optional[SourceOptions] = None) -> "ActH5Source":
        """Open and check every episode file (lengths, shapes, first frames); see the module docstring."""
        options = options or SourceOptions()
        if options.mask == "segment":
            raise DatasetError(f"{path}: mask='segment' is computed by `python -m controller.dataset.convert "
                               f"--mask segment`, not by the act_h5 reader; read with mask 'zeros' or 'from-key'")
        files = list_h5_files(path)
        if not files:
            raise DatasetError(f"{path}: no *.hdf5 / *.h5 episode files found")
        want = list(keys) if keys is not None else list(IMAGE_CHANNELS) + list(LOW_DIM_DIMS)
        state_keys = tuple(options.state_keys) or DEFAULT_STATE_KEYS
        action_keys = tuple(options.action_keys) or DEFAULT_ACTION_KEYS
        with open_h5(files[0]) as f:
            all_cams = sorted(f[IMAGES].keys()) if IMAGES in f else []
        cams = default_cameras(files[0], all_cams, options.camera_map)
        for key, role in (("rgbm", "head"), ("right_cam_img", "wrist")):
            if key in want and cams[role] is None:
                if keys is None and role == "wrist":
                    want.remove(key)  # no wrist camera: expose what there is (convert reports the gap)
                    continue
                raise DatasetError(f"{files[0]}: no {role} camera for '{key}' among '{IMAGES}' {all_cams}; expected "
                                   f"one of {list(HEAD_NAMES if role == 'head' else WRIST_NAMES)} or set camera_map "
                                   f"(e.g. --camera-map {role}=NAME)")
        lows: dict[str, list] = {"right_state": [], "action": []}
        channels: dict[str, list] = {"rgbm": [], "right_cam_img": []}
        shapes: dict[str, tuple] = {}
        lengths_out, key_names = [], {}
        for ep, file in enumerate(files):
            with open_h5(file) as f:
                act, key_names["action"] = _low_dim(f, file, action_keys, "action", ep)
                n = len(act)
                if n < 1:
                    raise DatasetError(f"{file}: key '{key_names['action'][0]}' is empty (episode {ep}); "
                                       f"expected at least one step")
                lens = {key_names["action"][0]: n}
                lows["action"].append(act)
                if "right_state" in want:
                    st, key_names["right_state"] = _low_dim(f, file, state_keys, "state", ep)
                    lows["right_state"].append(st)
                    lens[key_names["right_state"][0]] = len(st)
                for our, role in (("rgbm", "head"), ("right_cam_img", "wrist")):
                    if our not in want:
                        continue
                    ch, shape, m = _image_channel(f, file, f"{IMAGES}/{cams[role]}", ep, rgb=True, mask=False)
                    lens[ch.key] = m
                    chs = [ch]
                    if our == "rgbm":
                        mch, mshape, mm = cls._mask_channel(f, file, ep, cams["head"], options, shape)
                        if mch.file is not None:
                            lens[mch.key] = mm
                        chs.append(mch)
                        shape = (*shape[:2], 4)
                    if our in shapes and shape != shapes[our] and m:
                        raise DatasetError(f"{file}: key '{ch.key}' has frames of {shape[:2]} (episode {ep}) but earlier "
                                           f"episodes have {shapes[our][:2]}; expected one image size per camera")
                    shapes.setdefault(our, shape)
                    channels[our].append(chs)
                for extra in (REASONING_KEY, PAD_KEY):
                    if extra in f:
                        lens[extra] = len(f[extra])
                if len(set(lens.values())) > 1:
                    raise DatasetError(f"{file}: per-step keys disagree in length (episode {ep}): {lens}; expected "
                                       f"every key to have the same number of steps")
                lengths_out.append(n)
        ends = np.cumsum(lengths_out).astype(np.int64)                      # (J,)
        data: dict[str, Any] = {}
        dims = dict(LOW_DIM_DIMS)
        dims.update(dict(low_dim_dims or {}))
        for key in want:
            if key in channels:
                data[key] = LazyH5Frames(key, channels[key], ends, shapes[key])
            elif key in lows:
                arr = np.concatenate(lows[key], axis=0)                    # (K, D)
                if key in (low_dim_dims or {}) and dims[key] is not None and arr.shape[1] != dims[key]:
                    raise DatasetError(f"{files[0]}: '{key}' from {key_names[key]} has width {arr.shape[1]}; "
                                       f"expected {dims[key]} (see state_keys / action_keys)")
                data[key] = arr
            else:
                raise DatasetError(f"{path}: unknown key '{key}'; the act_h5 reader provides "
                                   f"{list(IMAGE_CHANNELS) + list(LOW_DIM_DIMS)}")
        info = {"state_keys": key_names.get("right_state"), "action_keys": key_names.get("action"),
                "mask": options.mask, "mask_key": options.mask_key}
        return cls(path, files, ends, data, cams, all_cams, info)

    @staticmethod
    def _mask_channel(f: Any, file: str, ep: int, head: Optional[str], options: SourceOptions,
                      head_shape: tuple) -> tuple[Channel, tuple, int]:
        """The mask channel of ``rgbm``: ``mask_key``, else ``<head>_mask`` if present, else zeros."""
        key = None
        if options.mask == "from-key":
            name = str(options.mask_key)
            key = name if name in f else f"{IMAGES}/{name}"
            if key not in f:
                raise DatasetError(f"{file}: missing mask key '{name}' (episode {ep}); expected an image dataset "
                                   f"(path in the file or a name under '{IMAGES}')")
        elif f"{IMAGES}/{head}{MASK_SUFFIX}" in f:
            key = f"{IMAGES}/{head}{MASK_SUFFIX}"
        if key is None:
            return Channel(None, "<zeros>", size=tuple(head_shape[:2])), (*head_shape[:2], 1), 0
        ch, shape, m = _image_channel(f, file, key, ep, rgb=False, mask=True)
        if m and shape[:2] != head_shape[:2]:
            raise DatasetError(f"{file}: mask key '{key}' has frames of {shape[:2]} (episode {ep}); expected the "
                               f"head camera's {head_shape[:2]}")
        return ch, shape, m

    # ------------------------------------------------------------------ EpisodeSource
    def language(self, episode: int) -> Optional[str]:
        """The episode's ``language_raw`` ('' -> None); DatasetError naming the file if it is missing."""
        episode = range(self.n_episodes)[episode]
        if episode not in self._language:
            file = self.files[episode]
            with open_h5(file) as f:
                if LANGUAGE_KEY not in f:
                    raise DatasetError(f"{file}: missing key '{LANGUAGE_KEY}' (episode {episode}); expected a (1,) "
                                       f"bytes/str instruction (the DexVLA layout) when text is requested")
                self._language[episode] = as_text(f[LANGUAGE_KEY][()])
        return self._language[episode] or None

    def reasoning(self, step: int) -> Optional[str]:
        """``substep_reasonings`` at global ``step`` ('' or missing dataset -> None)."""
        step = range(self.n_steps)[step]
        ep = int(np.searchsorted(self._episode_ends, step, side="right"))
        if ep not in self._reasoning:
            with open_h5(self.files[ep]) as f:
                rows = f[REASONING_KEY][()] if REASONING_KEY in f else None
            self._reasoning[ep] = None if rows is None else [as_text(r) or None for r in rows]
        rows = self._reasoning[ep]
        return None if rows is None else rows[step - int(self.episode_starts[ep])]

    def describe(self) -> dict[str, Any]:
        """Format, files, cameras (all and the ones used), keys with shapes, text presence."""
        with open_h5(self.files[0]) as f:
            has_lang, has_reason = LANGUAGE_KEY in f, REASONING_KEY in f
            fps = f.attrs.get("fps")
        return {"format": self.format_name, "path": self.path, "files": len(self.files),
                "first_files": [os.path.basename(p) for p in self.files[:3]], "n_episodes": self.n_episodes,
                "n_steps": self.n_steps, "cameras": self.all_cameras, "camera_map": self.cameras,
                "keys": {k: {"shape": tuple(int(s) for s in v.shape), "dtype": str(v.dtype)}
                         for k, v in self._data.items()},
                "language": bool(has_lang), "reasoning": bool(has_reason),
                "fps": None if fps is None else float(fps), **self.info}

    def __repr__(self) -> str:
        return f"ActH5Source({self.path!r}, {self.n_episodes} episodes, {self.n_steps} steps, cameras={self.cameras})"


def open_act_h5(path: str, keys: Optional[Sequence[str]], low_dim_dims: Optional[Mapping[str, int]], verify: bool,
                options: SourceOptions) -> ActH5Source:
    """Opener registered for ``act_h5``."""
    return ActH5Source.open(path, keys, low_dim_dims, verify, options)


def _sink(*args: Any, **kwargs: Any) -> Any:
    from controller.dataset.formats.act_h5_write import ActH5Sink  # noqa: PLC0415
    return ActH5Sink(*args, **kwargs)


register_format("act_h5", detect_act_h5, open_act_h5)
register_sink("act_h5", _sink)
