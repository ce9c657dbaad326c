"""``benchmarks/dexvla_speed.py --big-random``: the random Qwen2-VL-2B backbone has the published
size, and the reduced-depth variant of the benchmark runs end to end (1 repeat, no timing checks).

Published size of Qwen2-VL-2B(-Instruct): 2.21 B parameters (the model card's figure; its
``model.safetensors.index.json`` lists 4,417,971,200 bytes of bf16 tensors = 2,208,985,600
parameters, the embedding stored once as the word embeddings are tied).
"""
import json

import torch
import transformers

from benchmarks import dexvla_speed
from controller.model.dexvla.backbone import PRESETS, build_qwen2vl_config
from planner.backends.tiny_model import build_tiny_tokenizer

PUBLISHED_2B = 2_208_985_600


def meta_model(sizes):
    """Qwen2-VL of ``sizes`` with the offline tokenizer, on the meta device (nothing allocated)."""
    cfg = build_qwen2vl_config(build_tiny_tokenizer(), sizes)
    with torch.device("meta"):
        return transformers.Qwen2VLForConditionalGeneration(cfg)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_qwen2vl_2b_architecture_has_the_published_size():
    model = meta_model(PRESETS["qwen2vl_2b"])
    n = n_params(model)
    assert abs(n - PUBLISHED_2B) / PUBLISHED_2B < 0.02, n
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (1536, 28, 12, 2, 8960, 151936)
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.mlp_ratio, vision.patch_size,
            vision.temporal_patch_size, vision.spatial_merge_size) == (32, 1280, 16, 4, 14, 2, 2)
    assert model.lm_head.weight is model.get_input_embeddings().weight            # tied
    assert len(build_tiny_tokenizer()) < text.vocab_size                          # padded rows


def test_big_random_reduced_runs_end_to_end(tmp_path, capsys):
    before = torch.get_num_threads()
    out = tmp_path / "big.json"
    try:
        assert dexvla_speed.main(["--presets", "--big-random", "--depth-scale", "0.03", "--reasoning-tokens", "2",
                                  "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    text = capsys.readouterr().out
    assert "dexvla[rand2B x0.03]" in text and "chunk straightforward / ours" in text
    data = json.load(open(out))
    (r,) = data["results"]
    assert r["random_2b"]["depths"] == {"num_layers": 1, "vision_depth": 1, "expert_depth": 1}
    assert data["meta"]["reasoning_tokens"] == 2 and r["reasoning_tokens_limit"] == 2
    # the backbone is the 2B architecture at depth 1 / 1 (same widths, padded vocabulary)
    expect = n_params(meta_model({**PRESETS["qwen2vl_2b"], "num_layers": 1, "vision_depth": 1}))
    assert r["parameters"]["backbone"] == expect
    assert r["generation_compare"]["tokens_equal"]
    assert r["generation_compare"]["generated_tokens"] <= 2
    assert r["flops_per_chunk"] > 0 and r["flops_split"]["reasoning_generation"] > 0
    assert r["flops_split"]["expert_sampling"] > 0
    for key in ("speedup", "straightforward_s", "ours_fp32_s"):
        assert r["chunk_compare"][key] > 0
    assert r["bf16_compare"]["bf16_autocast_s"] > 0 and r["bf16_compare"]["fp32_s"] > 0
    assert r["train_step_s"] is None                                              # skipped at this size
