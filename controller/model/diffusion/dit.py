"""Diffusion transformer that denoises an action chunk conditioned on observation tokens.

Per block (the paper's "RDT block")::

    x = x + SelfAttn(RMSNorm(x))                   # over the 64 action tokens, QK RMSNorm
    x = x + CrossAttn(RMSNorm(x), condition)       # condition = obs tokens + 1 time token
    x = x + MLP(RMSNorm(x))                        # hidden = width, tanh-GELU

Learned positional embeddings for the action tokens (``pos_emb``) and the condition tokens
(``cond_pos_emb``); the diffusion timestep is embedded (sinusoidal + MLP) and appended as the
last condition token. Output: final RMSNorm + Linear to the action dimension.

Two equivalent evaluation paths:

* :meth:`forward` -- the straightforward one: each call projects every condition token to keys
  and values in every block.
* :meth:`prepare_condition` + :meth:`forward_cached` -- the observation tokens do not change
  across the denoising steps of one chunk, so their keys/values are computed once; the time
  token's row changes per step: given the scheduler's timesteps, its keys/values for all steps
  are projected in one batch up front (otherwise per step). Same outputs, a fraction of the work
  for the ~2,740-token condition of the paper preset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
import torch.nn as nn

from controller.model.common.linear import linear
from controller.model.diffusion.layers import CrossAttention, Mlp, RMSNorm, SelfAttention, TimestepEmbedder


def _weight_times_tokens(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """weight (F, D) @ tokens (L, D)^T -> (F, L): a linear layer with the tokens as its "weight"
    (oneDNN on float32 CPU, see :mod:`controller.model.common.linear`; under ``torch.compile``
    ``F.linear``: inductor takes oneDNN's operator only with constant weights)."""
    if torch.compiler.is_compiling():
        return torch.nn.functional.linear(weight, tokens)
    return linear(weight, tokens)


class RDTBlock(nn.Module):
    """One DiT block: self-attention, cross-attention, MLP, each pre-RMSNorm with a residual."""

    def __init__(self, hidden_size: int, num_heads: int, p_drop_attn: float = 0.1,
                 mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads, attn_drop=p_drop_attn, proj_drop=p_drop_attn)
        self.norm2 = RMSNorm(hidden_size)
        self.cross_attn = CrossAttention(hidden_size, num_heads, attn_drop=p_drop_attn, proj_drop=p_drop_attn)
        self.norm3 = RMSNorm(hidden_size)
        self.ffn = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None, capture: bool = False):
        """x: (B, T, D); k, v: (B, h, L, d) -> x (B, T, D), attention of token 0 (B, h, L) or None."""
        x = x + self.attn(self.norm1(x))
        y, w = self.cross_attn(self.norm2(x), k, v, attn_mask=attn_mask, capture=capture)
        x = x + y
        x = x + self.ffn(self.norm3(x))
        return x, w


@dataclass
class ConditionCache:
    """Per-block key/value buffers (B, h, N+1, d) whose first N rows hold the observation tokens.

    One cache serves a sample batch of B * g (g noise draws per observation, consecutive): the
    cross-attention shares each observation's keys/values among its g samples.

    ``time_keys`` / ``time_values``: optional per-block (S, h, 1, d) rows of the time token for the
    S timesteps listed in ``timesteps`` (the same for every sample of the batch).
    """

    keys: List[torch.Tensor]
    values: List[torch.Tensor]
    n_obs_tokens: int
    timesteps: Optional[List[int]] = None
    time_keys: Optional[List[torch.Tensor]] = None
    time_values: Optional[List[torch.Tensor]] = None


class TransformerForActionDiffusion(nn.Module):
    """The action denoiser.

    Args:
        input_dim / output_dim: action dimension (13).
        action_horizon: number of action tokens (64).
        n_layer / n_head / n_emb: depth, heads, width (paper: 12 / 8 / 1024).
        max_cond_tokens: condition tokens including the time token (paper: 2739 + 1).
        p_drop_attn: dropout on attention weights and attention outputs (0.1).
        mlp_ratio: MLP hidden width over ``n_emb`` (paper: 1.0).
    """

    def __init__(self, input_dim: int, output_dim: int, action_horizon: int, n_layer: int = 12,
                 n_head: int = 8, n_emb: int = 1024, max_cond_tokens: int = 2740,
                 p_drop_attn: float = 0.1, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.action_horizon = action_horizon
        self.max_cond_tokens = max_cond_tokens
        self.n_head = n_head
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, action_horizon, n_emb))
        self.time_emb = TimestepEmbedder(n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, max_cond_tokens, n_emb))
        self.blocks = nn.ModuleList([RDTBlock(n_emb, n_head, p_drop_attn, mlp_ratio) for _ in range(n_layer)])
        self.ln_f = RMSNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_emb, mean=0.0, std=0.02)
        nn.init.normal_(self.cond_pos_emb, mean=0.0, std=0.02)

    # ----------------------------------------------------------------- helpers
    def _timesteps(self, timestep: Union[torch.Tensor, float, int], batch: int, device) -> torch.Tensor:
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=device)
        t = t.to(device).reshape(-1)
        return t.expand(batch) if t.numel() == 1 else t  # (B,)

    def _embed_actions(self, sample: torch.Tensor) -> torch.Tensor:
        """sample: (B, T, A) -> (B, T, D)."""
        return self.input_emb(sample) + self.pos_emb[:, : sample.shape[1]]

    def _time_token(self, timestep, batch: int, n_obs: int, device) -> torch.Tensor:
        """-> (B, 1, D): the time embedding plus its positional embedding (last condition slot)."""
        t_emb = self.time_emb(self._timesteps(timestep, batch, device)).unsqueeze(1)  # (B, 1, D)
        return t_emb + self.cond_pos_emb[:, n_obs: n_obs + 1]

    def _check_cond(self, n_obs: int) -> None:
        if n_obs + 1 > self.max_cond_tokens:
            raise ValueError(f"condition has {n_obs} observation tokens (+1 time token) but the model "
                             f"was built for max_cond_tokens={self.max_cond_tokens}")

    def _run_blocks(self, x, keys, values, attn_mask, capture):
        attn = [] if capture else None
        for block, k, v in zip(self.blocks, keys, values):
            x, w = block(x, k, v, attn_mask=attn_mask, capture=capture)
            if capture:
                attn.append(w)
        return self.head(self.ln_f(x)), attn

    # ----------------------------------------------------------------- paths
    def forward(self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int], cond: torch.Tensor,
                cond_mask: Optional[torch.Tensor] = None, capture_attention: bool = False):
        """Straightforward path.

        sample: (B, T, A) noisy actions; timestep: int or (B,); cond: (B, N, D) obs tokens;
        cond_mask: optional bool (B, N+1), True = attend (condition dropout in training).
        Returns (B, T, A) and, if ``capture_attention``, a list over blocks of (B, h, N+1).
        """
        B, n_obs = cond.shape[0], cond.shape[1]
        self._check_cond(n_obs)
        c = torch.cat([cond + self.cond_pos_emb[:, :n_obs],
                       self._time_token(timestep, B, n_obs, cond.device).to(cond.dtype)], dim=1)  # (B, N+1, D)
        kvs = [blk.cross_attn.project_kv(c) for blk in self.blocks]
        mask = cond_mask[:, None, None, :] if cond_mask is not None else None  # (B, 1, 1, N+1)
        return self._run_blocks(self._embed_actions(sample), [k for k, _ in kvs], [v for _, v in kvs],
                                mask, capture_attention)

    @torch.no_grad()
    def project_condition(self, c: torch.Tensor) -> tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per-block cross-attention keys/values of a condition sequence, in attention layout.

        c: (B, L, D) condition tokens with their positional embedding -> keys, values: per block
        (B, h, L, d), keys k-normed; both are views of (B, h, d, L) memory (``stride(-2) == 1``),
        the layout the cross-attention's inference path
        (:func:`~controller.model.diffusion.layers.attention_keys_transposed`) multiplies by directly.
        Pure tensor code (no cache bookkeeping), so the policy can hand it to ``torch.compile``
        (:mod:`controller.policy.inference_compile`). Inference only (no autograd graph).

        Why not ``project_kv`` per block: ``kv(c)`` is (L, 2, h, d) per sample, and reordering it to
        attention layout (and k-norming the strided keys) costs copies at ~1 GB/s. Here one matmul
        ``W_kv @ c^T`` writes (2, h, d, L) directly, the bias is added on the way into the cache and
        the RMSNorm of the keys runs over d in place (measured, paper shapes, 2 threads: 63 vs 75 ms
        per block). Same values up to float rounding (~1e-6 on unit-scale keys).
        """
        B, L, D = c.shape
        h = self.n_head
        # one block of memory for all keys and values, allocated before the per-block temporaries:
        # the cache (12 x 2 x 11 MB for the paper preset) does not end up interleaved with freed
        # temporaries in the heap, whose holes would stay resident (measured +0.15 GB)
        d = D // h
        kv_t = c.new_empty(len(self.blocks), 2, B, h, d, L)      # [block, keys|values, B, h, d, L]
        for i, blk in enumerate(self.blocks):
            ca = blk.cross_attn
            for b in range(B):
                kv = _weight_times_tokens(ca.kv.weight, c[b])                        # (2D, L)
                torch.add(kv.view(2, h, d, L), ca.kv.bias.view(2, h, d, 1), out=kv_t[i, :, b])  # + bias
            keys_t = kv_t[i, 0]                                                       # (B, h, d, L)
            inv_rms = torch.linalg.vector_norm(keys_t, dim=-2, keepdim=True)          # (B, h, 1, L)
            inv_rms.square_().div_(d).add_(ca.k_norm.eps).rsqrt_()
            keys_t.mul_(inv_rms).mul_(ca.k_norm.weight.to(c.dtype)[:, None])
        keys = [kv_t[i, 0].transpose(-2, -1) for i in range(len(self.blocks))]         # (B, h, L, d) views
        values = [kv_t[i, 1].transpose(-2, -1) for i in range(len(self.blocks))]
        return keys, values

    @torch.no_grad()
    def prepare_condition(self, cond: torch.Tensor, timesteps=None, project=None) -> ConditionCache:
        """Project the observation tokens (B, N, D) to per-block K/V once per action chunk.

        ``timesteps``: optional sequence of the (integer) timesteps the chunk will be denoised at;
        their time-token K/V rows are then projected here in one batch instead of once per step.
        ``project``: optional replacement of :meth:`project_condition` (e.g. a compiled one).
        """
        B, n_obs = cond.shape[0], cond.shape[1]
        self._check_cond(n_obs)
        # the last row is a placeholder: forward_cached writes the time token's K/V there each step
        c = torch.cat([cond + self.cond_pos_emb[:, :n_obs], cond.new_zeros(B, 1, cond.shape[-1])], dim=1)
        keys, values = (project or self.project_condition)(c)        # per block (B, h, N+1, d)
        cache = ConditionCache(keys, values, n_obs)
        if timesteps is not None and len(timesteps):
            ts = [int(t) for t in timesteps]
            t_tok = self._time_token(torch.tensor(ts, device=cond.device), len(ts), n_obs, cond.device)
            kvs = [blk.cross_attn.project_kv(t_tok.to(cond.dtype)) for blk in self.blocks]  # each (S, h, 1, d)
            cache.timesteps, cache.time_keys, cache.time_values = ts, [k for k, _ in kvs], [v for _, v in kvs]
        return cache

    @torch.no_grad()
    def forward_cached(self, sample: torch.Tensor, timestep, cache: ConditionCache,
                       capture_attention: bool = False, run_blocks=None):
        """Same result as :meth:`forward` (inference only), reusing the observation K/V.

        sample: (B * g, T, A) for a cache of B observations (g samples each, consecutive); the
        timestep is shared by the batch. ``run_blocks``: optional replacement of
        :meth:`_run_blocks` (e.g. a compiled one).
        """
        B, n = cache.keys[0].shape[0], cache.n_obs_tokens
        if sample.shape[0] % B:
            raise ValueError(f"forward_cached: sample batch {sample.shape[0]} is not a multiple of the "
                             f"condition cache's batch {B}")
        t_int = int(timestep) if not torch.is_tensor(timestep) or timestep.numel() == 1 else None
        if t_int is None and timestep.numel() != B:
            raise ValueError("forward_cached: per-sample timesteps need one condition cache row per sample")
        if cache.timesteps is not None and t_int in cache.timesteps:
            i = cache.timesteps.index(t_int)
            for kb, vb, tk, tv in zip(cache.keys, cache.values, cache.time_keys, cache.time_values):
                kb[:, :, n:] = tk[i]                                  # (h, 1, d) broadcast over B
                vb[:, :, n:] = tv[i]
        else:
            t_tok = self._time_token(timestep, B, n, sample.device).to(cache.keys[0].dtype)  # (B, 1, D)
            for blk, kb, vb in zip(self.blocks, cache.keys, cache.values):
                k, v = blk.cross_attn.project_kv(t_tok)               # (B, h, 1, d)
                kb[:, :, n:] = k
                vb[:, :, n:] = v
        return (run_blocks or self._run_blocks)(self._embed_actions(sample), cache.keys, cache.values, None,
                                                capture_attention)
