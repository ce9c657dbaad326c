"""FSDP2 on CPU with 2 gloo processes on dexvla_tiny (torch's ``fully_shard``, wrapped as
controller/config/accelerate/fsdp_dexvla.yaml wraps it): parameters are sharded, two AdamW steps
give exactly the parameters of an unsharded copy trained on the averaged loss of both ranks'
batches, and the gathered full state dict has the model's keys. (accelerate itself runs that config
as DDP on CPU: see test_dexvla_multiprocess.py and docs/dexvla.md.)"""
import json

from tests.controller.conftest import REPO, run_cli


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
