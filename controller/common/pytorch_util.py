"""Small tensor-dict helpers."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch


def dict_apply(x: Mapping[str, Any], fn: Callable[[torch.Tensor], Any]) -> dict:
    """Apply ``fn`` to every tensor leaf of a nested dict."""
    out = {}
    for k, v in x.items():
        out[k] = dict_apply(v, fn) if isinstance(v, Mapping) else fn(v)
    return out


def to_device(batch: Mapping[str, Any], device, non_blocking: bool = True) -> dict:
    """Move every tensor of a nested batch dict to ``device``."""
    return dict_apply(batch, lambda t: t.to(device, non_blocking=non_blocking) if torch.is_tensor(t) else t)
