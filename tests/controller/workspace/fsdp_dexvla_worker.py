"""Worker for test_dexvla_multiprocess.py (run by ``torch.distributed.run --nproc_per_node 2``).

FSDP2 (``fully_shard``) of the dexvla_tiny policy on CPU over gloo, wrapped as
controller/config/accelerate/fsdp_dexvla.yaml wraps it: the units are chosen by accelerate's own
auto-wrap policy built from the config file (each Qwen2-VL decoder layer, vision block and ScaleDP
block), then the root. Two AdamW steps on a different batch per rank; rank 0 repeats
them on an unsharded copy with the two batches' losses averaged (what FSDP's gradient reduction
computes) and writes the largest parameter difference, the shard sizes and whether the gathered
full state dict equals the copy's to ``argv[1]`` (JSON).
"""
import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def batch_for(policy, rank: int):
    g = torch.Generator().manual_seed(10 + rank)
    H, A, S = policy.action_horizon, policy.action_dim, policy.state_dim
    obs = {"rgbm": torch.rand(2, 1, 4, 56, 56, generator=g), "right_cam_img": torch.rand(2, 1, 3, 56, 56, generator=g),
           "right_state": torch.rand(2, 1, S, generator=g)}
    return {"obs": obs, "action": torch.rand(2, H, A, generator=g) * 2 - 1,
            "action_is_pad": torch.zeros(2, H, dtype=torch.bool), "language": ["grasp the red box"] * 2,
            "reasoning": ["approach", "lift"]}


CONFIG = Path(__file__).resolve().parents[3] / "controller" / "config" / "accelerate" / "fsdp_dexvla.yaml"


def wrap_policy_from_config(model, path=CONFIG):
    """accelerate's FSDP2 auto-wrap policy (module -> bool) for ``model`` from the config file's
    ``fsdp_config`` (raises accelerate's ValueError when a layer class is not in the model)."""
    import yaml
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    c = yaml.safe_load(open(path))["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=c["fsdp_version"], auto_wrap_policy=c["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=c["fsdp_transformer_layer_cls_to_wrap"].split(","),
        reshard_after_forward=c["fsdp_reshard_after_forward"], state_dict_type=c["fsdp_state_dict_type"])
    return fsdp2_prepare_auto_wrap_policy(plugin, model)


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    from controller.model.common.normalizer import LinearNormalizer
    from tests.controller.conftest import build_policy

    policy, _ = build_policy("dexvla_tiny", ["task=sim_grasp", "n_action_steps=16"])  # seeded: same on both ranks
    norm = LinearNormalizer()
    norm.fit({"action": torch.linspace(-1, 1, 16 * 13 * 4).reshape(4, 16, 13)}, last_n_dims=1)
    policy.set_normalizer(norm)
    ref = copy.deepcopy(policy) if rank == 0 else None
    init = {k: v.clone() for k, v in policy.state_dict().items()}
    mesh = init_device_mesh("cpu", (world,))
    is_unit = wrap_policy_from_config(policy)
    units = [m for m in policy.modules() if is_unit(m)]
    for m in units:
        fully_shard(m, mesh=mesh)
    wrapped = len(units)
    fully_shard(policy, mesh=mesh)
    opt = policy.get_optimizer(lr=1e-3, weight_decay=0.0)
    ref_opt = ref.get_optimizer(lr=1e-3, weight_decay=0.0) if ref is not None else None
    for step in range(2):
        torch.manual_seed(1000 * step + rank)  # the diffusion noise / timesteps of this rank's batch
        opt.zero_grad(set_to_none=True)
        policy(batch_for(ref or policy, rank)).backward()  # forward(): FSDP's hooks gather the shards
        opt.step()
        if ref is not None:
            ref_opt.zero_grad(set_to_none=True)
            losses = []
            for r in range(world):
                torch.manual_seed(1000 * step + r)
                losses.append(ref(batch_for(ref, r)))
            (sum(losses) / world).backward()
            ref_opt.step()
    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    expert_w = policy.expert.model.blocks[0].attn.qkv.weight
    if rank == 0:
        ref_sd = ref.state_dict()
        diffs = {k: float((full[k].float() - ref_sd[k].float()).abs().max()) for k in ref_sd}
        worst = max(diffs, key=diffs.get)
        with open(out_path, "w") as f:
            json.dump({"world": world, "wrapped_units": wrapped, "dtensor": type(expert_w).__name__,
                       "local_rows": int(expert_w.to_local().shape[0]), "full_rows": int(expert_w.shape[0]),
                       "max_abs_diff": diffs[worst], "worst_key": worst,
                       "moved_from_init": max(float((full[k].float() - init[k].float()).abs().max()) for k in init),
                       "same_keys": sorted(full) == sorted(ref_sd)}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
