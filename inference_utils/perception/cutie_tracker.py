"""Mask tracking with Cutie (hkchengrex/Cutie: not on PyPI; a local clone or a source install).

Cutie's own ``pip install -e Cutie`` needs a git dependency from GitHub (``thinplate``, used only
for training data), so this module can also load Cutie straight from a local clone: set
``tracker.code_path`` to the clone (the folder that holds ``cutie/``). Only torch, numpy,
omegaconf and hydra-core — all dependencies of this project — are needed for inference.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
from typing import Iterator, Optional

import numpy as np

from .base import MaskTracker, check_image, check_mask
from .errors import CUTIE_INSTALL_HINT, CUTIE_WEIGHTS_URL, PerceptionDependencyError, check_weights_file

__all__ = ["CutieTracker", "default_cutie_weights", "import_cutie", "load_cutie_config", "build_cutie_network"]


def default_cutie_weights() -> str:
    """Where Cutie's own downloader keeps ``cutie-base-mega.pth`` (``<torch hub>/weights``)."""
    try:
        import torch

        hub = torch.hub.get_dir()
    except Exception:  # pragma: no cover - torch is a core dependency
        hub = os.path.expanduser("~/.cache/torch/hub")
    return os.path.join(hub, "weights", "cutie-base-mega.pth")


def import_cutie(code_path: Optional[str] = None):
    """Import the ``cutie`` package, from the clone at ``code_path`` when given.

    Raises :class:`PerceptionDependencyError` (with how to get Cutie) when it cannot be imported,
    and when a ``cutie`` from another place is already imported.
    """
    if code_path:
        root = os.path.abspath(os.path.expanduser(str(code_path)))
        if not os.path.isfile(os.path.join(root, "cutie", "model", "cutie.py")):
            raise PerceptionDependencyError("cutie", [
                f"tracker.code_path '{root}' is not a Cutie clone (no cutie/model/cutie.py in it): "
                "`git clone https://github.com/hkchengrex/Cutie.git` and point tracker.code_path at the clone"])
        loaded = sys.modules.get("cutie")
        if loaded is not None:
            where = [os.path.abspath(p) for p in getattr(loaded, "__path__", [])]
            if os.path.join(root, "cutie") not in where:
                raise PerceptionDependencyError("cutie", [
                    f"a different 'cutie' package is already imported (from {where}); "
                    f"cannot also load the clone at '{root}' in this process"])
        elif root not in sys.path:
            sys.path.insert(0, root)
    try:
        import cutie
        from cutie.inference.inference_core import InferenceCore  # noqa: F401
        from cutie.model.cutie import CUTIE  # noqa: F401
    except ImportError as exc:
        hint = CUTIE_INSTALL_HINT + (f" (tracker.code_path: {code_path})" if code_path else
                                     "; or set tracker.code_path to a local clone")
        raise PerceptionDependencyError("cutie", [f"{hint} [import error: {exc}]"]) from None
    return cutie


def _cutie_config_dir() -> str:
    import cutie

    # Cutie has no cutie/__init__.py (a namespace package: no __file__), so use __path__
    for root in list(getattr(cutie, "__path__", [])):
        config_dir = os.path.join(os.path.abspath(root), "config")
        if os.path.isfile(os.path.join(config_dir, "eval_config.yaml")):
            return config_dir
    raise PerceptionDependencyError("cutie", [
        f"Cutie's config files (config/eval_config.yaml) were not found under {list(cutie.__path__)}; "
        "use a complete clone of https://github.com/hkchengrex/Cutie"])


@contextlib.contextmanager
def _hydra_state_kept() -> Iterator[None]:
    """Compose with a private Hydra instance; the global one (if any) is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    had = GlobalHydra in Singleton._instances
    backup = copy.deepcopy(Singleton._instances[GlobalHydra]) if had else None
    try:
        GlobalHydra.instance().clear()
        yield
    finally:
        if had:
            Singleton._instances[GlobalHydra] = backup
        else:
            Singleton._instances.pop(GlobalHydra, None)


def load_cutie_config(weights: str, max_internal_size: int = 480, mem_every: Optional[int] = None):
    """Compose Cutie's packaged ``eval_config`` with hydra and point it at ``weights``."""
    from cutie.inference.utils.args_utils import get_dataset_cfg
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    config_dir = _cutie_config_dir()
    with _hydra_state_kept():
        with initialize_config_dir(version_base="1.3.2", config_dir=config_dir, job_name="dexgraspvla_cutie"):
            cfg = compose(config_name="eval_config")
    with open_dict(cfg):
        cfg["weights"] = weights
        cfg["max_internal_size"] = int(max_internal_size)
        if mem_every is not None:
            cfg["mem_every"] = int(mem_every)
    get_dataset_cfg(cfg)
    return cfg


@contextlib.contextmanager
def _no_imagenet_download() -> Iterator[None]:
    """Build Cutie's ResNet encoders without their ImageNet weights.

    ``CUTIE(cfg)`` asks ``cutie.model.utils.resnet`` for ``pretrained=True`` ResNets, which
    downloads ~140 MB from download.pytorch.org at construction — weights that ``load_weights``
    overwrites right after. Nothing may be downloaded at run time, so they are built random.
    """
    from cutie.model.utils import resnet

    saved = {name: getattr(resnet, name) for name in ("resnet18", "resnet50")}

    def no_download(original):
        def build(*args, pretrained=True, **kwargs):  # noqa: ARG001 - the point is to ignore it
            return original(*args, pretrained=False, **kwargs)
        return build

    try:
        for name, fn in saved.items():
            setattr(resnet, name, no_download(fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(resnet, name, fn)


def build_cutie_network(cfg, device: str = "cpu"):
    """Cutie's ``CUTIE`` network for ``cfg`` with random weights (nothing downloaded)."""
    import torch
    from cutie.model.cutie import CUTIE

    with _no_imagenet_download():
        return CUTIE(cfg).to(torch.device(device)).eval()


class CutieTracker(MaskTracker):
    """Cutie video object segmentation (the tracker used by the reference deployment).

    Requirements are checked in the constructor; a missing ``cutie`` package or weight file
    raises :class:`PerceptionDependencyError` explaining how to get Cutie (a clone set as
    ``code_path``, or ``pip install -e Cutie``) and where to put ``cutie-base-mega.pth``.
    Weights are never downloaded.

    Args:
        weights_path: local ``cutie-base-mega.pth`` (default: ``<torch hub dir>/weights/...``,
            where Cutie's own download script puts it).
        device: torch device string.
        max_internal_size: Cutie resizes frames whose shorter side exceeds this (-1 = never;
            the reference used -1 on a GPU; 480 keeps CPU latency bounded).
        mem_every: optional override of Cutie's memory-update interval.
        code_path: a local clone of https://github.com/hkchengrex/Cutie (the folder holding
            ``cutie/``); ``None`` imports an installed ``cutie``.
    """

    def __init__(self, weights_path: Optional[str] = None, device: str = "cpu",
                 max_internal_size: int = 480, mem_every: Optional[int] = None,
                 code_path: Optional[str] = None):
        weights_path = weights_path or default_cutie_weights()
        problems = []
        try:
            import_cutie(code_path)
        except PerceptionDependencyError as exc:
            problems += exc.problems
        bad = check_weights_file(weights_path, "Cutie weights (cutie-base-mega.pth)", CUTIE_WEIGHTS_URL,
                                 "tracker.weights")
        if bad:
            problems.append(bad)
        if problems:
            raise PerceptionDependencyError("cutie", problems)
        import torch
        from cutie.inference.inference_core import InferenceCore

        self.weights_path = os.path.expanduser(weights_path)
        self.code_path = code_path
        self.device = torch.device(device)
        cfg = load_cutie_config(self.weights_path, max_internal_size, mem_every)
        try:
            net = build_cutie_network(cfg, str(self.device))
            state = torch.load(self.weights_path, map_location=self.device, weights_only=True)
            net.load_weights(state)
        except Exception as exc:
            raise RuntimeError(f"could not load Cutie weights from '{self.weights_path}': {exc}") from exc
        self._net = net
        self._processor = InferenceCore(net, cfg=net.cfg)
        self._shape = None

    def _to_tensor(self, image_bgr: np.ndarray):
        import torch

        rgb = np.ascontiguousarray(image_bgr[..., ::-1])
        return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called since the last :meth:`reset`."""
        return self._shape is not None

    def reset(self) -> None:
        """Clear Cutie's memory and forget the object."""
        self._processor.clear_memory()
        self._shape = None

    def start(self, image_bgr: np.ndarray, mask: np.ndarray) -> None:
        """Memorise the object's mask in the first frame."""
        import torch

        image = check_image(image_bgr)
        mask = check_mask(mask, image.shape)
        if not mask.any():
            raise ValueError("CutieTracker.start needs a non-empty mask")
        self.reset()
        with torch.inference_mode():
            m = torch.from_numpy(mask.astype(np.int64)).to(self.device)
            self._processor.step(self._to_tensor(image), m, objects=[1])
        self._shape = image.shape[:2]

    def track(self, image_bgr: np.ndarray) -> np.ndarray:
        """Propagate the mask to this frame."""
        import torch

        if not self.started:
            raise RuntimeError("CutieTracker.track called before start(image, mask)")
        image = check_image(image_bgr)
        if image.shape[:2] != self._shape:
            raise ValueError(f"frame size {image.shape[:2]} differs from the start frame {self._shape}")
        with torch.inference_mode():
            prob = self._processor.step(self._to_tensor(image))
            labels = self._processor.output_prob_to_mask(prob)
        return (labels == 1).cpu().numpy().astype(bool)
