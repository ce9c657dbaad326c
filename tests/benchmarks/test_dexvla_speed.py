"""benchmarks/dexvla_speed.py on the tiny preset (1 repeat): the table, the JSON, and the
straightforward paths giving the same outputs as ours (tokens with/without KV cache, expert chunks
with the condition embedded once / every step)."""
import json

import torch

from benchmarks import dexvla_speed


def test_dexvla_speed_tiny(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        out = tmp_path / "speed.json"
        assert dexvla_speed.main(["--presets", "dexvla_tiny", "--repeats", "1", "--train-batch", "1",
                                  "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    assert "dexvla_tiny" in capsys.readouterr().out
    (r,) = json.load(open(out))["results"]
    assert r["generation_compare"]["tokens_equal"] and r["generation_compare"]["hidden_max_abs_diff"] < 1e-4
    assert r["expert_compare"]["max_abs_diff"] == 0.0 and r["expert_compare"]["chunk_max_abs"] > 0.0
    parts = ("backbone", "prompt_proj", "expert_scaledp", "expert_reasoning_film", "stage1_encoder", "normalizer")
    assert r["parameters"]["total"] == sum(r["parameters"][k] for k in parts)
    for key in ("predict_action_s", "generation_s", "encode_s", "expert_sampling_s", "train_step_s"):
        assert r[key] > 0
    assert r["flops_per_chunk"] > 0
    paper = {e["size"]: e for e in json.load(open(out))["expert_flops_paper_shapes"]}
    assert paper["H"]["flops_per_step"] > paper["L"]["flops_per_step"] > 0
    assert abs(paper["H"]["parameters"] - 955_861_518) < 1e6   # docs/dexvla.md "Sizes" (14-D, H 50)
