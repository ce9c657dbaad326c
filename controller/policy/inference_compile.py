"""``torch.compile`` for deployment: the observation encoder, the once-per-chunk projection of the
condition to cross-attention keys/values, and the cached denoising steps.

For inference with fixed weights, inductor's *freezing* treats the parameters as constants (folds
them and, on CPU, pre-packs the matrices for oneDNN). On the paper preset on a 2-core CPU this
took the chunk from ~10.6 s to ~8 s after a one-off compile of about a minute
(``benchmarks/controller_speed.py`` measures it); outputs stay equal to the eager path within
float rounding. Because frozen weights are baked into the compiled code, any later change of a
parameter or buffer (``load_state_dict``, an EMA copy, an optimiser step) makes the compiled
functions stale: :meth:`InferenceCompiler.check` detects it from the tensors' version counters and
raises instead of silently running old weights.

Only the attention-free path is compiled: a chunk that captures attention maps runs its denoising
steps eagerly. The key/value buffers returned by the compiled projection are written in place (the
time token's row, every step), so ``options`` must not select CUDA graphs (``mode="reduce-overhead"``
/ ``"max-autotune"``); use ``"max-autotune-no-cudagraphs"``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
import torch.nn as nn


class StaleCompiledPolicyError(RuntimeError):
    """The policy's weights changed after it was compiled for inference."""


class _Frozen:
    """A compiled callable that compiles (and recompiles) under inductor's ``freezing`` flag."""

    def __init__(self, fn: Callable, freezing: bool, options: dict) -> None:
        self.compiled = torch.compile(fn, **options)
        self.freezing = bool(freezing)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config
        from controller.model.common.linear import onednn_in_frozen_graphs
        # with frozen weights the linear layers compile to oneDNN's operator on the weights as they
        # are, instead of MKL's packed GEMM on packed copies (a second copy of the model)
        linear = onednn_in_frozen_graphs() if self.freezing else contextlib.nullcontext()
        with inductor_config.patch(freezing=self.freezing), linear:
            return self.compiled(*args, **kwargs)


class InferenceCompiler:
    """Compiled ``obs_encoder.forward``, ``model.project_condition`` (the once-per-chunk condition K/V)
    and ``model._run_blocks`` (one denoising step) of one policy, plus a staleness check.

    Args:
        policy: a :class:`~controller.policy.dexgraspvla_controller.DexGraspVLAController`.
        freezing: fold the weights into the compiled code (fastest on CPU; weights must not change).
        options: passed to ``torch.compile`` (e.g. ``{"mode": "max-autotune-no-cudagraphs"}``).
    """

    def __init__(self, policy: nn.Module, freezing: bool = True, options: Optional[dict] = None) -> None:
        self.policy = policy
        options = dict(options or {})
        if options.get("mode") in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {options['mode']!r} uses CUDA graphs, whose output buffers the "
                             "in-place key/value cache would overwrite; use 'max-autotune-no-cudagraphs'")
        self.encoder = _Frozen(policy.obs_encoder.forward, freezing, options)
        self.run_blocks = _Frozen(policy.model._run_blocks, freezing, options)
        self.project_condition = _Frozen(policy.model.project_condition, freezing, options)
        self._versions = self._snapshot()

    def _snapshot(self) -> list[int]:
        return [t._version for t in (*self.policy.parameters(), *self.policy.buffers())]

    def check(self) -> None:
        """Raise :class:`StaleCompiledPolicyError` if any weight changed since compilation."""
        if self._snapshot() != self._versions:
            raise StaleCompiledPolicyError(
                "the policy's weights changed after compile_for_inference(); the compiled code holds the "
                "old (frozen) weights. Load the weights first, then call compile_for_inference() on a "
                "freshly built policy.")
