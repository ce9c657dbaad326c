"""Errors raised by the perception back-ends.

A missing optional package or weight file is reported when a back-end is *built*, with a message
that names what to install or where to put the file, never later from deep inside a library.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

__all__ = [
    "PerceptionDependencyError",
    "SAM_CHECKPOINT_URLS",
    "CUTIE_WEIGHTS_URL",
    "CUTIE_INSTALL_HINT",
    "SAM_INSTALL_HINT",
    "check_weights_file",
]


class PerceptionDependencyError(RuntimeError):
    """An optional package or a local weight file needed by a perception back-end is missing.

    The message always says what to do: which package to install (and how), or which path the
    weight file is expected at and where to download it manually. Nothing is downloaded
    automatically.
    """

    def __init__(self, backend: str, problems: Iterable[str]):
        self.backend = backend
        self.problems = list(problems)
        lines = [f"perception back-end '{backend}' cannot be used:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("  (or choose a back-end that needs no weights: segmenter 'grabcut', tracker 'flow')")
        super().__init__("\n".join(lines))


#: Official SAM checkpoint release URLs (facebookresearch/segment-anything README).
SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}

SAM_INSTALL_HINT = (
    "the Python package 'segment-anything' is not installed: run `pip install -e .[sam]` "
    "from the repository root (or `pip install segment-anything`)"
)

#: Official Cutie weight release (hkchengrex/Cutie, v1.0).
CUTIE_WEIGHTS_URL = "https://github.com/hkchengrex/Cutie/releases/download/v1.0/cutie-base-mega.pth"

CUTIE_INSTALL_HINT = (
    "the Python package 'cutie' is not importable. Cutie is not on PyPI: clone it "
    "(`git clone https://github.com/hkchengrex/Cutie.git`) and set `tracker.code_path` to the clone, "
    "or install the clone with `pip install -e Cutie` (which also fetches a training-only "
    "dependency from GitHub). Inference needs only hydra-core and omegaconf, which this project "
    "already depends on"
)


def check_weights_file(path: Optional[str], what: str, url: str, config_key: str) -> Optional[str]:
    """Return a problem description if ``path`` is not an existing file, else ``None``.

    Args:
        path: configured weight path (may be ``None``).
        what: human name of the weights, e.g. ``"SAM vit_h checkpoint"``.
        url: the official release URL to download from manually.
        config_key: the config key that sets the path, e.g. ``"segmenter.checkpoint"``.
    """
    if path is None or str(path).strip() == "":
        return (f"no {what} path is configured: download it manually from {url} and set "
                f"`{config_key}` to the local file")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        return (f"{what} not found at '{os.path.abspath(path)}': download it manually from {url} "
                f"and save it to that path (or point `{config_key}` at the file)")
    return None
