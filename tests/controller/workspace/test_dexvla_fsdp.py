"""FSDP2 on CPU with 2 gloo processes on dexvla_tiny (torch's ``fully_shard``, wrapped as
controller/config/accelerate/fsdp_dexvla.yaml wraps it): parameters are sharded, two AdamW steps
give exactly the parameters of an unsharded copy trained on the averaged loss of both ranks'
batches, and the gathered full state dict has the model's keys. (accelerate itself runs that config
as DDP on CPU: see test_dexvla_multiprocess.py and docs/dexvla.md.)"""
import json

import pytest

from tests.controller.conftest import REPO, build_policy, run_cli
from tests.controller.workspace.fsdp_dexvla_worker import wrap_policy_from_config


def test_fsdp2_two_gloo_processes_match_an_unsharded_copy(tmp_path):
    out = tmp_path / "fsdp.json"
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                   str(REPO / "tests" / "controller" / "workspace" / "fsdp_dexvla_worker.py"), str(out)], timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.load(open(out))
    assert r["world"] == 2 and r["wrapped_units"] == 5          # 2 decoder layers + 1 vision block + 2 ScaleDP blocks
    assert r["dtensor"] == "DTensor" and r["local_rows"] * 2 == r["full_rows"]   # sharded over the 2 ranks
    assert r["same_keys"] and r["moved_from_init"] > 1e-4
    assert r["max_abs_diff"] <= 1e-6, r


def test_the_config_units_exist_in_stage_2_and_stage_1_needs_an_override():
    """The config's layer classes resolve in a stage-2/3 model (5 units in the tiny one); a stage-1
    model has no Qwen2-VL layers, so accelerate refuses the config as is (docs: override
    --fsdp_transformer_layer_cls_to_wrap ScaleDPBlock, or train stage 1 with DDP)."""
    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    stage2, _ = build_policy("dexvla_tiny", ["task=sim_grasp", "n_action_steps=16"])
    is_unit = wrap_policy_from_config(stage2)
    assert sorted({type(m).__name__ for m in stage2.modules() if is_unit(m)}) == [
        "Qwen2VLDecoderLayer", "Qwen2VLVisionBlock", "ScaleDPBlock"]
    stage1, _ = build_policy("dexvla_tiny", ["task=sim_grasp", "n_action_steps=16", "policy.training_stage=1"])
    with pytest.raises(ValueError, match="Could not find the transformer layer class Qwen2VLDecoderLayer"):
        wrap_policy_from_config(stage1)
