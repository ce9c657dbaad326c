"""Exponential moving average of a model's trainable parameters.

Decay follows the warm-up schedule used by Diffusion Policy / the reference:
``decay = 1 - (1 + step / inv_gamma) ** -power`` clipped to ``[min_value, max_value]``, zero for
the first ``update_after_step`` steps. Only trainable parameters are averaged (frozen backbones
are shared with the live model, so the EMA costs the trainable size, not the whole model's).

Why not ``diffusers.training_utils.EMAModel``: (1) the decay at update n here is ``get_decay(n - 1)``
as in Diffusion Policy's reference, diffusers uses ``get_decay(n)`` (a one-step shift, equal only
with ``update_after_step + 1``), so runs resume bit for bit across this change; (2) the checkpoint
holds a name-keyed fp32 ``shadow`` of the trainable parameters, which exact resume, export and
the converters rely on and which reports a missing tensor by name (diffusers saves a positional
list in the parameters' dtype); (3) frozen parameters are not copied (diffusers copies them too).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch
import torch.nn as nn


class EMAModel:
    """Shadow copy of ``model``'s trainable parameters, updated with :meth:`step`."""

    def __init__(self, model: nn.Module, update_after_step: int = 0, inv_gamma: float = 1.0,
                 power: float = 0.75, min_value: float = 0.0, max_value: float = 0.9999) -> None:
        self.update_after_step = int(update_after_step)
        self.inv_gamma = float(inv_gamma)
        self.power = float(power)
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self.optimization_step = 0
        self.decay = 0.0
        self.shadow: Dict[str, torch.Tensor] = {
            n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}

    def get_decay(self, step: int) -> float:
        step = max(0, step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Blend the model's current trainable parameters into the shadow copy."""
        self.decay = self.get_decay(self.optimization_step)
        for n, p in model.named_parameters():
            if n in self.shadow:
                s = self.shadow[n]
                if s.device != p.device:
                    s = self.shadow[n] = s.to(p.device)
                s.mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)
        self.optimization_step += 1

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (restored on exit)."""
        backup = {}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, s in self.shadow.items():
                backup[n] = params[n].detach().clone()
                params[n].copy_(s.to(params[n].dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, b in backup.items():
                    params[n].copy_(b)

    def state_dict(self) -> Dict[str, object]:
        return {"shadow": {n: s.detach().cpu() for n, s in self.shadow.items()},
                "optimization_step": self.optimization_step, "decay": self.decay}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        shadow = state["shadow"]
        missing = set(self.shadow) - set(shadow)
        if missing:
            raise KeyError(f"EMA state lacks parameters: {sorted(missing)[:8]}")
        for n in self.shadow:
            self.shadow[n] = shadow[n].to(self.shadow[n].device).float().clone()
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state["decay"])
