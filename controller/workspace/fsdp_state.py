"""Checkpoint state of a model sharded with FSDP (torch ``fully_shard`` = FSDP2, or FSDP1).

With FSDP every rank holds a shard of each parameter (FSDP2: ``DTensor``; FSDP1: a
``FlatParameter``), so ``model.state_dict()`` is not the policy's weights. The helpers here gather
what a checkpoint holds and scatter it back on resume; the files on disk keep the single-process
format (:mod:`controller.workspace.checkpoint`), so a checkpoint trained under FSDP loads in one
process with ``load_policy``.

* weights: the full state dict, gathered on rank 0 (``get_model_state_dict`` with
  ``full_state_dict=True, cpu_offload=True``; the other ranks get ``{}``);
* optimiser: the full optimiser state keyed by parameter name (``get_optimizer_state_dict``);
  without FSDP it stays ``optimizer.state_dict()`` (positional ids), so those checkpoints are
  unchanged;
* EMA (FSDP2 only): :func:`shard_ema` makes every shadow tensor a ``DTensor`` laid out like its
  parameter, so ``EMAModel.step`` runs on the local shards; :func:`ema_state_dict` gathers them.

Every function taking a sharded model is a collective: all ranks must call it, in the same order.
Without FSDP each one is a no-op or the plain single-process call.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Optional

import torch

from controller.workspace import checkpoint as ckpt_lib


def _dtensor_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor
    return DTensor


def fsdp_version(model: torch.nn.Module) -> int:
    """2 when ``model`` (or a submodule) was sharded with ``fully_shard``, 1 for
    ``FullyShardedDataParallel``, 0 otherwise (plain module, DDP)."""
    if not torch.distributed.is_available():
        return 0
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    kinds = {2 if isinstance(m, FSDPModule) else 1 for m in model.modules()
             if isinstance(m, (FSDPModule, FullyShardedDataParallel))}
    if 1 in kinds:
        return 1
    dtensor = _dtensor_type()
    return 2 if kinds or any(isinstance(p, dtensor) for p in model.parameters()) else 0


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kwargs)


def _torch_optimizer(optimizer):
    """The torch optimiser inside accelerate's ``AcceleratedOptimizer`` (or ``optimizer`` itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def full_model_state_dict(model: torch.nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """The full state dict of a sharded ``model`` on CPU (rank 0; ``{}`` on the other ranks), or
    None when ``model`` is not sharded (save the module as before). Collective."""
    if not fsdp_version(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options(cpu_offload=True))


def optimizer_state_dict(model: torch.nn.Module, optimizer) -> Dict[str, Any]:
    """``optimizer.state_dict()``; for a sharded ``model`` the full optimiser state keyed by
    parameter name instead (complete on rank 0, ``{}`` elsewhere). Collective."""
    if not fsdp_version(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=_options(cpu_offload=True))


def _by_name(state: Dict[str, Any]) -> bool:
    """Whether an optimiser state dict names its parameters (FSDP checkpoints) instead of numbering them."""
    return any(isinstance(p, str) for g in state.get("param_groups", []) for p in g.get("params", []))


def load_optimizer_state_dict(model: torch.nn.Module, optimizer, state: Dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state_dict` (every rank passes the full state it read). Collective
    for a sharded ``model``. A state keyed by parameter name (saved under FSDP) also loads into an
    unsharded ``model`` (e.g. resumed with DDP); a numbered one (saved without FSDP) cannot be
    matched to a sharded model and raises :class:`~controller.workspace.checkpoint.CheckpointError`."""
    sharded = bool(fsdp_version(model))
    if not sharded and not _by_name(state):
        optimizer.load_state_dict(state)
        return
    if sharded and not _by_name(state):
        raise ckpt_lib.CheckpointError("the checkpoint's optimiser state was saved without FSDP (parameters by "
                                       "position); it cannot be loaded into an FSDP-sharded model")
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(model, _torch_optimizer(optimizer), state, options=_options())


def load_model_weights(model: torch.nn.Module, ckpt_dir: str, allow_missing_backbones: bool = False) -> None:
    """Load ``model.safetensors`` of ``ckpt_dir`` into the sharded ``model`` (the raw weights, as a
    resume does). Collective.

    Every rank checks names and shapes against the file's header, so a checkpoint that does not
    fit raises :class:`~controller.workspace.checkpoint.CheckpointError` on all of them alike.
    Then rank 0 reads one tensor at a time and it is scattered into the parameter's shards
    (``distribute_tensor`` from rank 0) or broadcast into a replicated buffer, copied in place:
    ``load_state_dict`` is not used, because modules that rebuild their parameters on loading (the
    normaliser) would replace the sharded parameters FSDP manages with new ones. FSDP1 (flat
    parameters) goes through ``set_model_state_dict`` instead.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor
    path = os.path.join(ckpt_lib.resolve_checkpoint_dir(ckpt_dir), ckpt_lib.MODEL_FILE)
    shapes = {k: tuple(v["shape"]) for k, v in ckpt_lib.check_safetensors_file(path).items()}
    rank0 = dist.get_rank() == 0
    if fsdp_version(model) == 1:  # not exercised by the tests (the config uses FSDP2)
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        weights = ckpt_lib.read_safetensors(path) if rank0 else {}
        set_model_state_dict(model, weights, options=_options(broadcast_from_rank0=True))
        return
    own = model.state_dict()  # FSDP2: the sharded parameters themselves (DTensors), no communication
    missing = sorted(k for k in set(own) - set(shapes)
                     if not (allow_missing_backbones and k.startswith(ckpt_lib.BACKBONE_PREFIXES)))
    unexpected = sorted(set(shapes) - set(own))
    wrong = sorted(f"{k}: checkpoint {shapes[k]} vs model {tuple(own[k].shape)}"  # DTensor shapes are global
                   for k in set(own) & set(shapes) if shapes[k] != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise ckpt_lib.CheckpointError(f"checkpoint '{path}' does not fit the sharded model (missing: {missing[:10]}; "
                                       f"unexpected: {unexpected[:10]}; shape mismatch: {wrong[:10]})")
    dtensor = _dtensor_type()
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(ckpt_lib._TensorFile(path)) if rank0 else None
        with torch.no_grad():
            for name, dest in own.items():  # the same order on every rank
                if name not in shapes:
                    continue
                full = (source.get(name).to(dest.device, dest.dtype) if rank0
                        else torch.empty(shapes[name], dtype=dest.dtype, device=dest.device))
                if isinstance(dest, dtensor):
                    dest.copy_(distribute_tensor(full, dest.device_mesh, dest.placements, src_data_rank=0))
                else:
                    dist.broadcast(full, src=0)
                    dest.copy_(full)


def shard_ema(ema, model: torch.nn.Module) -> None:
    """Lay every EMA shadow tensor out like its parameter of the FSDP2-sharded ``model`` (a
    ``DTensor`` with the same mesh and placements), so ``ema.step(model)`` updates local shards.
    Call after sharding and after ``ema.load_state_dict``. No-op without FSDP or EMA. Collective."""
    version = fsdp_version(model) if ema is not None else 0
    if version == 1:
        raise ValueError("training.use_ema is not supported with FSDP1 (flat parameters); use fsdp_version: 2")
    if not version:
        return
    from torch.distributed.tensor import distribute_tensor
    dtensor = _dtensor_type()
    params = dict(model.named_parameters())
    for name, shadow in ema.shadow.items():
        p = params[name]
        if isinstance(p, dtensor) and not isinstance(shadow, dtensor):
            ema.shadow[name] = distribute_tensor(shadow.detach().to(p.device), p.device_mesh, p.placements)


def ema_state_dict(ema) -> Optional[Dict[str, Any]]:
    """``ema.state_dict()`` with sharded shadow tensors gathered to full CPU tensors (every rank
    gets them); None without EMA. Collective when the shadow is sharded."""
    if ema is None:
        return None
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(s, dtensor) for s in ema.shadow.values()):
        return ema.state_dict()
    state = dict(ema.state_dict())
    state["shadow"] = {n: (s.full_tensor() if isinstance(s, dtensor) else s).detach().cpu()
                       for n, s in ema.shadow.items()}
    return state
