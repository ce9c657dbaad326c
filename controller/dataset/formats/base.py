"""The contract every dataset format reader fulfils, and the options that map foreign data onto ours.

A *source* is one dataset on disk (a zarr store, a directory of ACT/DexVLA HDF5 episodes, a
LeRobot v3.0 directory, a directory of our deployment recordings) seen through the same
read-only interface as :class:`controller.dataset.replay_buffer.ZarrReplayBuffer`, so that
:class:`~controller.dataset.grasp_dataset.GraspDataset`, ``inspect`` and ``convert`` do not care
which format they read. Keys are always *ours*:

    rgbm           uint8   (K, H, W, 4)  head camera BGR + target mask (0/255)
    right_cam_img  uint8   (K, H, W, 3)  wrist camera BGR
    right_state    float32 (K, D_state)  (13 in the reference layout)
    action         float32 (K, D_action)

(K = steps of all episodes, concatenated; ``episode_ends`` are the exclusive end steps.) Image
keys may be lazy (indexable by an int, a slice or an int array; ``np.asarray`` gives all of it);
low-dim keys are numpy arrays. Text, where the source has it, is per episode (``language``) and
per step (``reasoning``: the sub-step reasoning string in force at that step).

Readers register themselves with :func:`register_format`; :func:`detect_format` picks the reader
from the path's structure and :func:`open_source` opens it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from controller.dataset.errors import DatasetError

#: Where the target-mask channel of ``rgbm`` comes from for sources that have no mask of their own.
MASK_MODES = ("zeros", "from-key", "segment")


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """How a foreign dataset maps onto our keys (ignored by sources already in our layout).

    Args:
        camera_map: our camera role -> the source's camera name, roles ``head`` (-> ``rgbm``) and
            ``wrist`` (-> ``right_cam_img``), e.g. ``{'head': 'top', 'wrist': 'cam_right_wrist'}``.
            Empty: the reader's documented default for its format.
        state_keys: source columns concatenated (in order) into ``right_state``; empty: default.
        action_keys: source columns concatenated into ``action``; empty: default.
        mask: ``zeros`` (empty mask channel), ``from-key`` (read ``mask_key``) or ``segment``
            (planner box -> segmenter, done by ``convert``; a reader never segments itself).
        mask_key: the source's mask image/column for ``mask='from-key'``.
    """

    camera_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    state_keys: Sequence[str] = ()
    action_keys: Sequence[str] = ()
    mask: str = "zeros"
    mask_key: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mask not in MASK_MODES:
            raise DatasetError(f"mask must be one of {MASK_MODES}, got {self.mask!r}")
        unknown = set(self.camera_map) - {"head", "wrist"}
        if unknown:
            raise DatasetError(f"camera_map roles must be 'head' and/or 'wrist', got {sorted(unknown)}")
        if self.mask == "from-key" and not self.mask_key:
            raise DatasetError("mask='from-key' needs mask_key (the source's mask image or column)")

    @classmethod
    def from_config(cls, cfg: Optional[Mapping[str, Any]]) -> "SourceOptions":
        """From a plain mapping / OmegaConf node (``None`` -> defaults)."""
        if cfg is None:
            return cls()
        try:
            from omegaconf import OmegaConf
            if OmegaConf.is_config(cfg):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(cfg) - known
        if bad:
            raise DatasetError(f"unknown dataset option(s) {sorted(bad)}; expected some of {sorted(known)}")
        return cls(**{k: (tuple(v) if k.endswith("_keys") else v) for k, v in cfg.items() if v is not None})


@runtime_checkable
class EpisodeSource(Protocol):
    """Read-only view of one dataset in our keys (``ZarrReplayBuffer`` is the reference one)."""

    path: str
    #: short format name, e.g. ``'zarr'``, ``'act_h5'``, ``'lerobot'``, ``'deployment'``.
    format_name: str

    @property
    def episode_ends(self) -> np.ndarray: ...          # (J,) int64, exclusive
    @property
    def episode_starts(self) -> np.ndarray: ...        # (J,) int64
    @property
    def episode_lengths(self) -> np.ndarray: ...       # (J,) int64
    @property
    def n_episodes(self) -> int: ...
    @property
    def n_steps(self) -> int: ...
    def keys(self) -> list[str]: ...
    def __contains__(self, key: str) -> bool: ...
    def __getitem__(self, key: str) -> Any: ...        # (K, ...) array or lazy array
    def __len__(self) -> int: ...
    def get_episode(self, idx: int, keys: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]: ...
    def language(self, episode: int) -> Optional[str]: ...      # instruction of an episode
    def reasoning(self, step: int) -> Optional[str]: ...        # sub-step reasoning at a global step
    def describe(self) -> dict[str, Any]: ...          # for inspect: format, files, keys, shapes, fps...


#: A reader: (path, keys, low_dim_dims, verify, options) -> EpisodeSource.
Opener = Callable[[str, Optional[Sequence[str]], Optional[Mapping[str, int]], bool, SourceOptions], EpisodeSource]
#: A detector: path -> True when the path is this format (cheap: look at names, not data).
Detector = Callable[[str], bool]

_FORMATS: dict[str, tuple[Detector, Opener]] = {}


def register_format(name: str, detect: Detector, open_fn: Opener) -> None:
    """Make a reader known to :func:`detect_format` / :func:`open_source` (detection order = order
    of registration)."""
    _FORMATS[name] = (detect, open_fn)


def format_names() -> list[str]:
    """Registered format names, in detection order."""
    _load_builtin()
    return list(_FORMATS)


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its structure; :class:`DatasetError` naming what was found if
    none matches."""
    _load_builtin()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or directory")
    for name, (detect, _) in _FORMATS.items():
        if detect(path):
            return name
    listing = sorted(os.listdir(path))[:12] if os.path.isdir(path) else [os.path.basename(path)]
    raise DatasetError(f"{path}: not a dataset in any known format ({', '.join(_FORMATS)}); found {listing}")


def open_source(path: str | os.PathLike, keys: Optional[Sequence[str]] = None,
                low_dim_dims: Optional[Mapping[str, int]] = None, verify: bool = True,
                options: Optional[SourceOptions] = None, fmt: Optional[str] = None) -> EpisodeSource:
    """Open ``path`` (format detected unless ``fmt`` is given) as an :class:`EpisodeSource`.

    Args:
        keys: our keys to expose (``None``: every key the source has).
        low_dim_dims: expected widths of low-dim keys (mismatch -> DatasetError naming the key).
        verify: cheap integrity checks at open (zarr: chunk files; others: file presence/lengths).
        options: mapping of foreign names onto ours.
    """
    _load_builtin()
    path = os.fspath(path)
    name = fmt or detect_format(path)
    if name not in _FORMATS:
        raise DatasetError(f"{path}: unknown dataset format {name!r}; expected one of {list(_FORMATS)}")
    return _FORMATS[name][1](path, keys, low_dim_dims, verify, options or SourceOptions())


class EpisodeSink(Protocol):
    """Writes episodes in one format (our keys in; the format's own names on disk).

    Used as a context manager; writes go to a temporary path that is renamed onto the destination
    by ``close()`` only when everything succeeded (``abort()`` removes it), so a failed conversion
    leaves nothing at the destination.
    """

    path: str

    def add_episode(self, data: Mapping[str, np.ndarray], language: Optional[str] = None,
                    reasoning: Optional[Sequence[str]] = None) -> None:
        """``data``: our keys, each (T, ...); ``reasoning``: T strings (or None)."""
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> "EpisodeSink": ...
    def __exit__(self, *exc: Any) -> None: ...


#: A writer factory: (path, fps, overwrite, **format specific kwargs) -> EpisodeSink.
SinkFactory = Callable[..., EpisodeSink]
_SINKS: dict[str, SinkFactory] = {}


def register_sink(name: str, factory: SinkFactory) -> None:
    """Make a writer known to :func:`open_sink` (``convert --to NAME``)."""
    _SINKS[name] = factory


def sink_names() -> list[str]:
    _load_builtin()
    return list(_SINKS)


def open_sink(path: str | os.PathLike, fmt: str, fps: float = 20.0, overwrite: bool = False,
              **kwargs: Any) -> EpisodeSink:
    """A writer of format ``fmt`` for ``path``; refuses an existing ``path`` unless ``overwrite``."""
    _load_builtin()
    path = os.fspath(path)
    if fmt not in _SINKS:
        raise DatasetError(f"{path}: cannot write format {fmt!r}; expected one of {list(_SINKS)}")
    if os.path.exists(path) and not overwrite:
        raise DatasetError(f"{path} exists; pass --overwrite to replace it")
    return _SINKS[fmt](path, fps=fps, overwrite=overwrite, **kwargs)


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, symlink or directory tree (nothing if absent)."""
    import shutil  # noqa: PLC0415

    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool) -> None:
    """Rename a sink's finished temporary output ``tmp`` onto ``path``; an existing ``path`` is
    replaced only with ``overwrite`` (else DatasetError, ``tmp`` left for the caller's ``abort``)."""
    if os.path.lexists(path):
        if not overwrite:
            raise DatasetError(f"{os.fspath(path)} exists; pass --overwrite to replace it")
        remove_path(path)
    os.replace(tmp, path)


def _load_builtin() -> None:
    """Import the built-in readers once (each calls :func:`register_format` at import)."""
    import controller.dataset.formats  # noqa: F401,PLC0415  (registers the built-ins)
