"""Build segmenters and trackers from configuration (dict or OmegaConf ``DictConfig``).

Configuration shape (both sections optional)::

    segmenter: {backend: grabcut | sam | sam2 | auto, checkpoint: path|null, model_type: vit_h, device: cpu}
    tracker:   {backend: flow | cutie | sam2 | auto, weights: path|null, device: cpu, reseg_every: 10,
                reacquire: true, code_path: null}

``model_type`` is ``vit_h``/``vit_l``/``vit_b`` for ``sam`` and e.g. ``sam2.1_hiera_l`` for
``sam2`` (see ``SAM2_MODEL_TYPES``); ``code_path`` is a local Cutie clone (Cutie is not on PyPI).

``auto`` picks the learned back-end (SAM, Cutie) when its package and weights are available and
falls back (with a warning) to the weight-free one otherwise.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Optional

from .base import MaskTracker, Segmenter
from .errors import PerceptionDependencyError

__all__ = ["build_segmenter", "build_tracker", "SEGMENTER_BACKENDS", "TRACKER_BACKENDS"]

SEGMENTER_BACKENDS = ("grabcut", "sam", "sam2", "auto")
TRACKER_BACKENDS = ("flow", "cutie", "sam2", "auto")

_SEG_OPTS = {
    "grabcut": {"iterations", "context", "max_side", "border_frac", "min_area_frac"},
    "sam": {"checkpoint", "model_type", "device", "multimask"},
    "sam2": {"checkpoint", "model_type", "device", "multimask", "hydra_overrides"},
}
_TRK_OPTS = {
    "flow": {"reseg_every", "max_roi_side", "margin", "prior_in", "prior_out", "prior_width",
             "fg_rate", "bg_rate", "min_margin", "near_frac", "change_thresh", "prior_occ", "occ_rate", "prior_keep",
             "reacquire", "lost_frac", "lost_patience"},
    "cutie": {"weights", "device", "max_internal_size", "mem_every", "code_path"},
    "sam2": {"weights", "model_type", "device", "fill_hole_area", "hydra_overrides"},
}


def _to_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    try:  # OmegaConf DictConfig -> plain dict (resolves interpolations)
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"perception config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _section(cfg: Any, name: str) -> dict:
    """The ``name`` section of a full config, or ``cfg`` itself if it is already a section."""
    cfg = _to_dict(cfg)
    if name in cfg:
        return _to_dict(cfg[name])
    if "backend" in cfg:
        return cfg
    return {}


def _options(section: dict, backend: str, table: dict, kind: str) -> dict:
    known = set().union(*table.values()) | {"backend"}
    unknown = sorted(set(section) - known)
    if unknown:
        warnings.warn(f"{kind} config: ignoring unknown keys {unknown}", stacklevel=3)
    return {k: v for k, v in section.items() if k in table[backend] and v is not None}


def _check_backend(backend: Any, valid: tuple, kind: str) -> str:
    backend = str(backend).lower()
    if backend not in valid:
        raise ValueError(f"unknown {kind} backend {backend!r}; valid backends: {', '.join(valid)}")
    return backend


def build_segmenter(cfg: Optional[Mapping] = None) -> Segmenter:
    """Build the box→mask segmenter described by ``cfg['segmenter']`` (default: grabcut).

    Raises:
        ValueError: unknown backend (the message lists the valid ones).
        PerceptionDependencyError: ``sam``/``sam2`` without the package or the checkpoint file.
    """
    sec = _section(cfg, "segmenter")
    backend = _check_backend(sec.get("backend", "grabcut"), SEGMENTER_BACKENDS, "segmenter")
    if backend == "auto":
        try:
            return build_segmenter({**sec, "backend": "sam"})
        except PerceptionDependencyError as exc:
            warnings.warn(f"segmenter 'auto': SAM unavailable, using grabcut.\n{exc}", stacklevel=2)
            return build_segmenter({**sec, "backend": "grabcut"})
    opts = _options(sec, backend, _SEG_OPTS, "segmenter")
    if backend == "sam":
        from .sam import SamSegmenter

        return SamSegmenter(checkpoint=opts.pop("checkpoint", None), **opts)
    if backend == "sam2":
        from .sam2_backend import Sam2Segmenter

        return Sam2Segmenter(checkpoint=opts.pop("checkpoint", None), **opts)
    from .grabcut import GrabCutSegmenter

    return GrabCutSegmenter(**opts)


def build_tracker(cfg: Optional[Mapping] = None) -> MaskTracker:
    """Build the mask tracker described by ``cfg['tracker']`` (default: flow).

    Raises:
        ValueError: unknown backend (the message lists the valid ones).
        PerceptionDependencyError: ``cutie``/``sam2`` without the package (or Cutie clone) or
            the weight file.
    """
    sec = _section(cfg, "tracker")
    backend = _check_backend(sec.get("backend", "flow"), TRACKER_BACKENDS, "tracker")
    if backend == "auto":
        try:
            return build_tracker({**sec, "backend": "cutie"})
        except PerceptionDependencyError as exc:
            warnings.warn(f"tracker 'auto': Cutie unavailable, using the flow tracker.\n{exc}", stacklevel=2)
            return build_tracker({**sec, "backend": "flow"})
    opts = _options(sec, backend, _TRK_OPTS, "tracker")
    if backend == "cutie":
        from .cutie_tracker import CutieTracker

        return CutieTracker(weights_path=opts.pop("weights", None), **opts)
    if backend == "sam2":
        from .sam2_backend import Sam2Tracker

        return Sam2Tracker(weights=opts.pop("weights", None), **opts)
    from .flow_tracker import FlowTracker

    return FlowTracker(**opts)
