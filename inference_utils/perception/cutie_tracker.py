"""Mask tracking with Cutie (hkchengrex/Cutie, installed from source; local weights)."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .base import MaskTracker, check_image, check_mask
from .errors import CUTIE_INSTALL_HINT, CUTIE_WEIGHTS_URL, PerceptionDependencyError, check_weights_file

__all__ = ["CutieTracker", "default_cutie_weights"]


def default_cutie_weights() -> str:
    """Where Cutie's own downloader keeps ``cutie-base-mega.pth`` (``<torch hub>/weights``)."""
    try:
        import torch

        hub = torch.hub.get_dir()
    except Exception:  # pragma: no cover - torch is a core dependency
        hub = os.path.expanduser("~/.cache/torch/hub")
    return os.path.join(hub, "weights", "cutie-base-mega.pth")


def _load_cutie_config(weights: str):
    """Compose Cutie's packaged ``eval_config`` with hydra and point it at ``weights``."""
    import cutie
    from cutie.inference.utils.args_utils import get_dataset_cfg
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    config_dir = os.path.join(os.path.dirname(os.path.abspath(cutie.__file__)), "config")
    if not os.path.isfile(os.path.join(config_dir, "eval_config.yaml")):
        raise PerceptionDependencyError("cutie", [
            f"Cutie's config files were not found in '{config_dir}'; install Cutie with "
            "`pip install -e <Cutie checkout>` so that its package data is available"])
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3.2", config_dir=config_dir, job_name="dexgraspvla_cutie"):
        cfg = compose(config_name="eval_config")
    with open_dict(cfg):
        cfg["weights"] = weights
    get_dataset_cfg(cfg)
    return cfg


class CutieTracker(MaskTracker):
    """Cutie video object segmentation (the tracker used by the reference deployment).

    Requirements are checked in the constructor; a missing ``cutie`` package or weight file
    raises :class:`PerceptionDependencyError` explaining how to install Cutie from source
    (``git clone https://github.com/hkchengrex/Cutie.git && pip install -e Cutie``) and where to
    put ``cutie-base-mega.pth``. Weights are never downloaded.

    Args:
        weights_path: local ``cutie-base-mega.pth`` (default: ``<torch hub dir>/weights/...``,
            where Cutie's own download script puts it).
        device: torch device string.
        max_internal_size: Cutie resizes frames whose shorter side exceeds this (-1 = never;
            the reference used -1 on a GPU; 480 keeps CPU latency bounded).
        mem_every: optional override of Cutie's memory-update interval.
    """

    def __init__(self, weights_path: Optional[str] = None, device: str = "cpu",
                 max_internal_size: int = 480, mem_every: Optional[int] = None):
        weights_path = weights_path or default_cutie_weights()
        problems = []
        try:
            from cutie.inference.inference_core import InferenceCore
            from cutie.model.cutie import CUTIE
        except ImportError as exc:
            problems.append(f"{CUTIE_INSTALL_HINT} [import error: {exc}]")
        bad = check_weights_file(weights_path, "Cutie weights (cutie-base-mega.pth)", CUTIE_WEIGHTS_URL,
                                 "tracker.weights")
        if bad:
            problems.append(bad)
        if problems:
            raise PerceptionDependencyError("cutie", problems)
        import torch

        self.weights_path = os.path.expanduser(weights_path)
        self.device = torch.device(device)
        cfg = _load_cutie_config(self.weights_path)
        try:
            net = CUTIE(cfg).to(self.device).eval()
            state = torch.load(self.weights_path, map_location=self.device, weights_only=True)
            net.load_weights(state)
        except Exception as exc:
            raise RuntimeError(f"could not load Cutie weights from '{self.weights_path}': {exc}") from exc
        self._net = net
        self._processor = InferenceCore(net, cfg=net.cfg)
        self._processor.max_internal_size = int(max_internal_size)
        if mem_every is not None:
            self._processor.mem_every = int(mem_every)
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
