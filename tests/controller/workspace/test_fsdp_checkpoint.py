"""Checkpoint save and exact resume under FSDP2, for real: 2 gloo processes on CPU.

dexvla_tiny is sharded with ``fully_shard`` the way controller/config/accelerate/fsdp_dexvla.yaml
wraps it (accelerate's auto-wrap units, then the root), with AdamW, the cosine LR schedule and EMA
as the workspace builds them. After 2 steps (a different batch per rank) the workspace's own
``save_checkpoint`` writes ``latest``; then

(a) the saved weights and EMA equal an unsharded copy trained on the averaged loss of both ranks'
    batches (float tolerance);
(b) the checkpoint loads in this single process with ``load_policy`` (raw and EMA weights);
(c) a fresh sharded model (perturbed weights) resumed with the workspace's ``_resume`` plus 1 step
    equals 3 uninterrupted sharded steps exactly (weights, optimiser state, EMA, LR).

accelerate itself applies FSDP only on accelerator devices, so the workspace methods run here with
a minimal stand-in for the ``Accelerator`` (the attributes they use).
"""
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from controller.workspace import checkpoint as ckpt_lib
from tests.controller.workspace.fsdp_dexvla_worker import batch_for as _batch

OVERRIDES = ["task=sim_grasp", "n_action_steps=16", "training.use_ema=true"]


class _Acc:
    """What ``save_checkpoint`` / ``_resume`` use of an ``accelerate.Accelerator`` (FSDP2 leaves the
    module in place, so ``unwrap_model`` is the identity as in accelerate)."""

    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        dist.barrier()

    def print(self, *args, **kwargs) -> None:
        if self.is_main_process:
            print(*args, **kwargs)

    @staticmethod
    def unwrap_model(model):
        return model


def _build(perturb: bool):
    """(policy, cfg, ema) as the workspace builds them, not yet sharded."""
    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    from controller.model.common.normalizer import LinearNormalizer
    from controller.model.diffusion.ema_model import EMAModel
    from tests.controller.conftest import build_policy

    policy, cfg = build_policy("dexvla_tiny", OVERRIDES)  # seeded: the same on both ranks
    norm = LinearNormalizer()
    norm.fit({"action": torch.linspace(-1, 1, 16 * 13 * 4).reshape(4, 16, 13)}, last_n_dims=1)
    policy.set_normalizer(norm)
    if perturb:  # a resumed model must get every tensor from the checkpoint
        g = torch.Generator().manual_seed(99)
        with torch.no_grad():
            for t in policy.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.randn(t.shape, generator=g) * 0.1)
    ema = EMAModel(policy, **cfg.ema)
    return policy, cfg, ema


def _optim(policy):
    from diffusers.optimization import get_scheduler
    opt = policy.get_optimizer(lr=1e-3, weight_decay=1e-2)
    return opt, get_scheduler("cosine", optimizer=opt, num_warmup_steps=1, num_training_steps=10)


def _step(policy, opt, sched, ema, step: int, ranks) -> None:
    """One optimiser step on the mean loss of ``ranks``' batches (one rank's under FSDP)."""
    opt.zero_grad(set_to_none=True)
    losses = []
    for r in ranks:
        torch.manual_seed(1000 * step + r)  # the diffusion noise / timesteps of rank r's batch
        losses.append(policy(_batch(policy, r)))  # forward(): FSDP's hooks gather the shards
    (sum(losses) / len(losses)).backward()
    opt.step()
    sched.step()
    ema.step(policy)


def _shard(policy):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from tests.controller.workspace.fsdp_dexvla_worker import wrap_policy_from_config

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    is_unit = wrap_policy_from_config(policy)
    for m in [m for m in policy.modules() if is_unit(m)]:
        fully_shard(m, mesh=mesh)
    fully_shard(policy, mesh=mesh)


def _full_state(policy, opt, ema):
    """Gathered weights, optimiser state and EMA shadow (collective; complete on rank 0)."""
    from controller.workspace import fsdp_state
    return (fsdp_state.full_model_state_dict(policy), fsdp_state.optimizer_state_dict(policy, opt),
            fsdp_state.ema_state_dict(ema)["shadow"])


def _max_diff(a, b) -> float:
    """Largest |a - b| over nested dicts/lists of tensors and numbers (inf when the structure differs)."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return float("inf")
        return max([_max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return float("inf")
        return max([_max_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from safetensors.torch import save_file

    from controller.workspace import fsdp_state
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc, ranks = _Acc(rank, world), list(range(world))
        policy, cfg, ema = _build(perturb=False)
        if rank == 0:  # the unsharded copy, trained on the mean of both ranks' losses
            import copy
            ref, ref_ema = copy.deepcopy(policy), copy.deepcopy(ema)
            ref_opt, ref_sched = _optim(ref)
        _shard(policy)
        opt, sched = _optim(policy)
        fsdp_state.shard_ema(ema, policy)
        for step in range(2):
            _step(policy, opt, sched, ema, step, [rank])
            if rank == 0:
                _step(ref, ref_opt, ref_sched, ref_ema, step, ranks)
        ws = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=out_dir)
        ws.policy = ws.model = policy
        ws.optimizer, ws.lr_scheduler, ws.ema, ws.epoch, ws.global_step = opt, sched, ema, 0, 2
        latest = os.path.join(ws.ckpt_dir, "latest")
        ws.save_checkpoint(acc, latest, {"train_loss": 1.0})
        if rank == 0:
            save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, os.path.join(out_dir, "ref.safetensors"))
            save_file({k: v.contiguous() for k, v in ref_ema.shadow.items()}, os.path.join(out_dir, "ref_ema.safetensors"))
        _step(policy, opt, sched, ema, 2, [rank])  # the uninterrupted run's third step
        weights3, optim3, ema3 = _full_state(policy, opt, ema)
        lr3 = sched.get_last_lr()

        fresh, _, fresh_ema = _build(perturb=True)
        _shard(fresh)
        fresh_opt, fresh_sched = _optim(fresh)
        fsdp_state.shard_ema(fresh_ema, fresh)
        cfg.training.resume_from = latest
        ws2 = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=out_dir)
        ws2.policy = ws2.model = fresh
        ws2.optimizer, ws2.lr_scheduler, ws2.ema = fresh_opt, fresh_sched, fresh_ema
        ws2._resume(acc)
        resumed_at = (ws2.epoch, ws2.global_step)
        _step(fresh, fresh_opt, fresh_sched, fresh_ema, 2, [rank])
        weights_r, optim_r, ema_r = _full_state(fresh, fresh_opt, fresh_ema)
        bad = os.path.join(out_dir, "bad")  # a checkpoint lacking one tensor is refused on every rank alike
        if rank == 0:
            os.makedirs(bad)
            tensors = ckpt_lib.read_safetensors(os.path.join(latest, ckpt_lib.MODEL_FILE))
            save_file({k: v for k, v in tensors.items() if k != "expert.model.blocks.0.attn.qkv.weight"},
                      os.path.join(bad, ckpt_lib.MODEL_FILE))
        dist.barrier()
        try:
            fsdp_state.load_model_weights(fresh, bad)
            refused = ""
        except ckpt_lib.CheckpointError as exc:
            refused = str(exc)
        refusals = [None] * world
        dist.all_gather_object(refusals, "missing: ['expert.model.blocks.0.attn.qkv.weight']" in refused)
        if rank == 0:
            with open(os.path.join(out_dir, "result.json"), "w") as f:
                json.dump({"resumed_at": list(resumed_at), "sharded": type(policy.expert.model.blocks[0].attn.qkv.weight).__name__,
                           "ema_sharded": sum(type(s).__name__ == "DTensor" for s in ema.shadow.values()),
                           "ema_tensors": len(ema.shadow),
                           "weights_diff": _max_diff(weights3, weights_r), "optim_diff": _max_diff(optim3, optim_r),
                           "ema_diff": _max_diff(ema3, ema_r), "lr": [lr3, fresh_sched.get_last_lr()],
                           "optim_keys": len(optim3["state"]), "moved": _max_diff(weights3, ref.state_dict()),
                           "refused_on_every_rank": all(refusals)}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_checkpoint_saves_full_state_and_resumes_exactly(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r = json.load(open(tmp_path / "result.json"))
    assert r["sharded"] == "DTensor" and r["ema_sharded"] == r["ema_tensors"] > 0   # really sharded, EMA too
    # (c) resume + 1 step == 3 uninterrupted steps, bit for bit
    assert r["resumed_at"] == [1, 2]
    assert r["weights_diff"] == 0.0 and r["optim_diff"] == 0.0 and r["ema_diff"] == 0.0, r
    assert r["lr"][0] == r["lr"][1] and r["optim_keys"] > 0
    assert r["refused_on_every_rank"]
    assert r["moved"] > 1e-5   # step 3 moved the weights away from step 2's (the comparison is not vacuous)

    # (a) the saved full state equals the unsharded copy trained on the same data
    latest = tmp_path / "checkpoints" / "latest"
    saved = ckpt_lib.read_safetensors(str(latest / ckpt_lib.MODEL_FILE))
    ref = ckpt_lib.read_safetensors(str(tmp_path / "ref.safetensors"))
    assert sorted(saved) == sorted(ref)
    assert _max_diff(saved, ref) <= 1e-6
    saved_ema = ckpt_lib.read_safetensors(str(latest / ckpt_lib.EMA_FILE))
    ref_ema = ckpt_lib.read_safetensors(str(tmp_path / "ref_ema.safetensors"))
    assert sorted(saved_ema) == sorted(ref_ema) and _max_diff(saved_ema, ref_ema) <= 1e-6
    state = ckpt_lib.load_training_state(str(latest))
    assert state["global_step"] == 2 and state["ema"]["optimization_step"] == 2
    assert all(isinstance(n, str) for g in state["optimizer"]["param_groups"] for n in g["params"])  # by name

    # (b) loads in this single process, unsharded, raw and EMA weights
    from controller.policy.loading import load_policy
    policy, _ = load_policy(str(latest), use_ema=False)
    assert _max_diff(dict(policy.state_dict()), ref) <= 1e-6
    policy_ema, _ = load_policy(str(latest), use_ema=True)
    own = dict(policy_ema.named_parameters())
    assert _max_diff({k: own[k].detach() for k in ref_ema}, ref_ema) <= 1e-6
    # the optimiser state (by name) also loads into an unsharded model (resume with DDP / one process)
    from controller.workspace import fsdp_state
    opt, _ = _optim(policy)  # with its LR schedule, as in the workspace (it adds 'initial_lr' to the groups)
    fsdp_state.load_optimizer_state_dict(policy, opt, state["optimizer"])
    ids = {id(p): n for n, p in policy.named_parameters()}
    loaded = {ids[id(p)]: opt.state[p] for g in opt.param_groups for p in g["params"]}
    assert loaded.keys() == state["optimizer"]["state"].keys()
    assert _max_diff(loaded, state["optimizer"]["state"]) == 0.0
    assert json.load(open(latest / ckpt_lib.NORMALIZER_FILE)).keys() == {
        k[len("normalizer."):] for k in ref if k.startswith("normalizer.")}
