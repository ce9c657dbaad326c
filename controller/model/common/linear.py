"""Inference matmuls of ``nn.Linear`` layers through oneDNN on CPU (same parameters, same function).

PyTorch runs a float32 ``F.linear`` on CPU as an MKL ``sgemm``. MKL picks its fastest code paths
by CPU vendor; oneDNN (also inside every PyTorch build, ``torch.ops.mkldnn._linear_pointwise``,
the kernel inductor emits for linear layers) picks them by instruction set. On the 2-core AMD EPYC
(Zen 4, AVX-512) this project is benchmarked on, one thread: 1370 x 4096 -> 1024 (a ViT-L MLP
output) 113 vs 139 ms, 2740 x 1024 -> 2048 (the condition's K/V projection) 118 vs 152 ms,
64 x 1024 -> 3072 (a DiT step) 4.4 vs 5.3 ms. Outputs differ by float rounding only (another
summation order: ~3e-6 absolute on unit-scale outputs).

:func:`set_onednn_linear` switches every plain ``nn.Linear`` under a module to
:class:`OneDNNLinear` (a subclass: same parameters, same state-dict names, ``isinstance(m,
nn.Linear)`` still true). Its ``forward`` takes oneDNN only where nothing changes but the kernel:
float32 CPU tensors, no autograd graph needed (inference, or frozen layers fed by frozen layers)
and no autocast (bf16 autocast keeps ``F.linear``). Anywhere else, and where the operator is
missing or fails its self-check, it is ``F.linear``.

Under ``torch.compile`` it is ``F.linear`` too, except inside :func:`onednn_in_frozen_graphs`
(what :mod:`controller.policy.inference_compile` uses when inductor freezes the weights): there the
oneDNN operator goes into the graph with the weight as it is. Inductor lowers ``F.linear`` with
frozen weights to MKL's packed GEMM and keeps a packed copy of every weight next to the module's
own: a second copy of the model (+2.2 GB for the paper preset). With the oneDNN operator in the
graph nothing is copied (measured: 8 layers of 4096 x 4096, +0.63 GB with ``F.linear`` and +0.08 GB
with it, and faster). Inductor accepts the operator only with constant (frozen) weights, hence
only there.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear


_AVAILABLE: Optional[bool] = None   # onednn_linear_available(), once computed
_IN_FROZEN_GRAPHS = False           # inside onednn_in_frozen_graphs()


def onednn_linear_available() -> bool:
    """oneDNN's linear operator exists in this build and agrees with ``F.linear`` (checked once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            g = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(*s, generator=g) for s in ((3, 5, 48), (40, 48), (40,)))
            with torch.no_grad():
                _AVAILABLE = torch.backends.mkldnn.is_available() and all(
                    torch.allclose(op(x, w, bias, "none", [], ""), F.linear(x, w, bias), atol=1e-5, rtol=1e-5)
                    for bias in (b, None))
        except Exception:  # noqa: BLE001 - a build without the operator, or a failing one: F.linear
            _AVAILABLE = False
    return _AVAILABLE


@contextlib.contextmanager
def onednn_in_frozen_graphs() -> Iterator[None]:
    """While ``torch.compile`` traces inside this context with inductor's ``freezing`` on, the
    eligible linear layers put oneDNN's operator into the graph (see the module docstring)."""
    global _IN_FROZEN_GRAPHS
    onednn_linear_available()  # computed here, never while tracing
    before, _IN_FROZEN_GRAPHS = _IN_FROZEN_GRAPHS, True
    try:
        yield
    finally:
        _IN_FROZEN_GRAPHS = before


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias) -> bool:
    if torch.compiler.is_compiling() and not (_IN_FROZEN_GRAPHS and _AVAILABLE):
        return False
    if x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False  # the oneDNN operator has no backward
    if torch.is_autocast_enabled("cpu"):
        return False
    return bool(_AVAILABLE) if torch.compiler.is_compiling() else onednn_linear_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where that changes nothing but the kernel."""
    if _onednn_applies(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose forward is :func:`linear` (set by :func:`set_onednn_linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class OneDNNOutProjLinear(NonDynamicallyQuantizableLinear, OneDNNLinear):
    """The same for ``nn.MultiheadAttention.out_proj``'s class."""


_ON = {nn.Linear: OneDNNLinear, NonDynamicallyQuantizableLinear: OneDNNOutProjLinear}
_OFF = {v: k for k, v in _ON.items()}


def set_onednn_linear(module: nn.Module, enabled: bool) -> int:
    """Switch every plain ``nn.Linear`` under ``module`` to :class:`OneDNNLinear` (``enabled``) or
    back, and set the ``onednn_linear`` flag of modules that call :func:`linear` themselves (the
    mask ViT's attention). Subclasses with a forward of their own are left alone. Returns the
    number of linear layers switched."""
    table = _ON if enabled else _OFF
    if enabled:
        onednn_linear_available()  # computed now, not while torch.compile traces a forward
    n = 0
    for m in module.modules():
        cls = table.get(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
        if hasattr(m, "onednn_linear") and not isinstance(m.onednn_linear, nn.Module):
            m.onednn_linear = bool(enabled)
    return n
