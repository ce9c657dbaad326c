"""DexVLA speed: predict_action latency split, straightforward vs ours, training step, parameter counts.

    python benchmarks/dexvla_speed.py [--presets dexvla_tiny dexvla_small] [--repeats 5] [--threads 1]
                                      [--out results.json] [--big --model-path QWEN2VL_DIR]
                                      [--big-random [--depth-scale 0.1] [--reasoning-tokens 8]]

Random weights, nothing downloaded. Per preset (batch 1 for inference, ``--train-batch`` for
training; the policy as ``train.py policy=<preset> task=sim_grasp`` builds it):

* **predict_action split** (median over ``--repeats`` after a warm-up): reasoning generation
  (``generate_reasoning``: greedy, KV cache, the preset's token limit; includes the processor and
  the prompt prefill), VLM encode alone (processor + prompt pass without generation, what
  ``use_reasoning=false`` costs), the processor alone (image resizing/patching + tokenizer), expert
  sampling (the preset's DDIM steps, condition embedded once), and the whole ``predict_action``;
* **straightforward vs ours**, in the same run (called alternately, so load changes on a shared
  machine hit both), with equal outputs checked:
  generation without the KV cache (``use_cache=False``: every step re-runs the vision tower and the
  whole sequence) vs with it -- ratio, tokens equal, max |difference| of the generated tokens'
  hidden states; expert sampling recomputing the condition (``combine`` MLP + ``cond_obs_emb``)
  at every denoising step vs once -- ratio, max |difference| of the chunks (same noise);
* **FLOPs per chunk** of ``predict_action`` (``torch.utils.flop_counter``: matmuls/convs/attention),
  so GPU figures can be judged; and, always (meta device, nothing allocated), the FLOPs of the
  ScaleDP-L/H expert per denoising step and per chunk at DexVLA's shapes (the 2B VLM not included);
* **bf16 vs fp32**: ``predict_action`` under ``torch.autocast(<device>, dtype=torch.bfloat16)`` vs fp32
  (alternately, same noise; on a CPU without bf16 matmul units bf16 may well be slower), the chunks'
  max |difference|; and the **whole chunk, straightforward vs ours**: ours is ``predict_action``
  (fp32); the straightforward chunk is derived from the two pairs above (ours + the extra time of
  generation without the KV cache + the extra time of the per-step condition);
* **training step**: ``compute_loss`` (diffusion + LM loss on a reasoning string) + backward + AdamW
  (skipped for the random 2B: AdamW state for ~3.2 B parameters does not fit in memory here);
* **parameters**: backbone (of which vision, of which trainable), projector, expert (ScaleDP,
  reasoning FiLM), trainable total.

``--big`` adds ``dexvla_l`` and ``dexvla`` (the 2B backbone from ``--model-path``, ScaleDP-L/H; GBs
of memory). ``--big-random`` adds ``dexvla`` with no checkpoint: the backbone preset ``qwen2vl_2b``
(Qwen2-VL-2B's architecture, 2.21 B parameters, random weights, the offline tokenizer, vocabulary
padded to 151,936 rows) + ScaleDP-H, about 13 GB in fp32; ``--depth-scale s`` keeps the widths and
multiplies the text layers (28), ViT blocks (32) and ScaleDP blocks (32) by ``s`` (0.1: 3 / 3 / 3,
for testing the path); ``--reasoning-tokens n`` overrides the preset's reasoning token limit (64),
which dominates the time without the KV cache. Prints a table; ``--out`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "controller", "config")


#: Depths scaled by ``--depth-scale`` for the random 2B policy: Qwen2-VL-2B text layers and ViT
#: blocks, ScaleDP-H blocks.
BIG_DEPTHS = {"num_layers": 28, "vision_depth": 32, "expert_depth": 32}


def scaled_depths(scale: float) -> Dict[str, int]:
    """``BIG_DEPTHS`` times ``scale`` (rounded, at least 1 each)."""
    if not 0 < scale <= 1:
        raise ValueError(f"depth scale must be in (0, 1], got {scale}")
    return {k: max(1, int(round(v * scale))) for k, v in BIG_DEPTHS.items()}


def random_2b_overrides(cfg, depth_scale: float = 1.0) -> None:
    """Point a composed ``policy=dexvla`` config at the random ``qwen2vl_2b`` backbone (no
    checkpoint) and, for ``depth_scale < 1``, fewer text layers / ViT blocks / ScaleDP blocks at the
    same widths (in place)."""
    from omegaconf import open_dict

    from controller.model.scaledp.scaledp import PRESETS as SCALEDP_PRESETS
    with open_dict(cfg):
        bb = cfg.policy.backbone
        bb.model_path = None
        bb.preset = "qwen2vl_2b"
        bb.seed = 0
        if depth_scale < 1:
            d = scaled_depths(depth_scale)
            bb.config = {"num_layers": d["num_layers"], "vision_depth": d["vision_depth"]}
            ex = cfg.policy.expert
            _, width, heads = SCALEDP_PRESETS[str(ex.get("size", "H"))]
            ex.pop("size", None)  # a size preset would reset the depth
            ex.depth, ex.width, ex.num_heads = d["expert_depth"], width, heads


def build(preset: str, model_path: str | None = None, random_2b: bool = False, depth_scale: float = 1.0,
          reasoning_tokens: int | None = None):
    """The policy of ``train.py policy=<preset> task=sim_grasp`` (random weights, fitted normaliser).

    ``random_2b``: the backbone is the random ``qwen2vl_2b`` preset instead of ``model_path``
    (see :func:`random_2b_overrides`); ``reasoning_tokens``: the backbone's generation limit."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    from controller.common.registry import instantiate
    from controller.model.common.normalizer import LinearNormalizer

    overrides = [f"policy={preset}", "task=sim_grasp"]
    if model_path:
        overrides.append(f"policy.backbone.model_path={model_path}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train_dexgraspvla_controller_workspace", overrides=overrides)
    if random_2b:
        random_2b_overrides(cfg, depth_scale)
    if reasoning_tokens:
        with open_dict(cfg):
            cfg.policy.backbone.max_reasoning_tokens = int(reasoning_tokens)
    torch.manual_seed(0)
    policy = instantiate(cfg.policy, ("policy",), where="policy", trusted=True).eval()
    # ScaleDP starts as the zero function (adaLN-Zero, zero final layer): every chunk would be 0 and
    # the straightforward-vs-ours comparison of chunks trivially equal. Small random values instead.
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in policy.expert.named_parameters():
            if "final_layer" in name or "adaLN" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    norm = LinearNormalizer()
    A = policy.action_dim
    norm.fit({"action": torch.rand(64, policy.action_horizon, A) * 2 - 1}, last_n_dims=1)
    policy.set_normalizer(norm)
    return policy, int(cfg.image_size)


def observation(policy, size: int, B: int, seed: int = 0) -> Dict[str, Any]:
    """(B, 1, 4, size, size) rgbm, (B, 1, 3, size, size) wrist, (B, 1, S) state, instructions."""
    g = torch.Generator().manual_seed(seed)
    return {"rgbm": torch.rand(B, 1, 4, size, size, generator=g),
            "right_cam_img": torch.rand(B, 1, 3, size, size, generator=g),
            "right_state": torch.rand(B, 1, policy.state_dim, generator=g),
            "language": ["grasp the red box"] * B}


#: Warm-up calls before each timed series (``--warmup``).
WARMUP = 1


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (s) over ``repeats`` calls after ``WARMUP`` warm-up calls; the last result."""
    out = None
    for _ in range(WARMUP):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def timed_pair(fn_a: Callable[[], Any], fn_b: Callable[[], Any], repeats: int):
    """Like :func:`timed` for two functions called alternately (A, B, A, B, ...), so that a change
    of load on a shared machine hits both: ``(median A, last A result, median B, last B result)``."""
    out_a = out_b = None
    for _ in range(WARMUP):
        out_a, out_b = fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out_a = fn_a()
        t1 = time.perf_counter()
        out_b = fn_b()
        ta.append(t1 - t0)
        tb.append(time.perf_counter() - t1)
    return statistics.median(ta), out_a, statistics.median(tb), out_b


def generate_tokens(bb, inputs: Dict[str, torch.Tensor], n: int, use_cache: bool):
    """Greedy generation with or without the KV cache -> (tokens (B, G), fed hidden states (B, G-1, D))."""
    import transformers
    cfg = transformers.GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, use_cache=use_cache,
                                        eos_token_id=bb.eos_id, pad_token_id=bb.pad_id, output_hidden_states=True,
                                        return_dict_in_generate=True)
    with torch.no_grad():
        out = bb.model.generate(**inputs, generation_config=cfg)
    L = inputs["input_ids"].shape[1]
    fed = [step[-1][:, -1:] for step in out.hidden_states[1:]]               # G-1 x (B, 1, D)
    hidden = torch.cat(fed, dim=1) if fed else None                           # (B, G-1, D)
    return out.sequences[:, L:], hidden


@torch.no_grad()
def sample_recomputing_condition(expert, cond, state, noise, steps: int) -> torch.Tensor:
    """The straightforward DDIM loop: ``model(x, t, cond, state)`` (condition MLP at every step)."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler.from_config(expert.sample_scheduler.config)
    scheduler.set_timesteps(steps, device=cond.device)
    x = noise                                                                  # (B, H, A)
    for t in scheduler.timesteps:
        x = scheduler.step(expert.model(x, t, cond, state), t, x).prev_sample  # (B, H, A)
    return x


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def parameters(policy) -> Dict[str, int]:
    bb = policy.backbone
    vision = getattr(bb.model.model, "visual", None) if bb is not None else None
    return {"backbone": count(bb), "backbone_vision": count(vision),
            "backbone_trainable": sum(p.numel() for p in bb.parameters() if p.requires_grad) if bb else 0,
            "prompt_proj": count(getattr(policy, "prompt_proj", None)),
            "expert_scaledp": count(policy.expert.model), "expert_reasoning_film": count(policy.expert.reasoning_film),
            "stage1_encoder": count(getattr(policy, "stage1_encoder", None)), "normalizer": count(policy.normalizer),
            "trainable_total": policy.num_trainable_parameters(), "total": count(policy)}


def flops_per_chunk(policy, obs) -> int:
    """FLOPs (matmuls/convs/attention) of one ``predict_action`` call at batch 1."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        policy.predict_action(obs)
    return int(counter.get_total_flops())


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def predict_bf16(policy, obs, noise):
    """``predict_action`` under bf16 autocast on the policy's device type -> fp32 actions (B, H, A).
    The cast-weight cache is off: it would keep a bf16 copy of every trainable weight (GBs at 2B)."""
    device_type = next(policy.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False):
        out = policy.predict_action(obs, noise=noise)
    return out["action"].float()


def expert_flops_at_paper_shapes(size: str, steps: int = 10) -> Dict[str, Any]:
    """FLOPs of ScaleDP-``size`` at DexVLA's shapes (D = 1536, 14-D state/action, H = 50, 8 reasoning
    tokens), counted on the meta device (nothing allocated): condition once + ``steps`` DDIM steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from controller.model.scaledp import ScaleDPConfig, ScaleDPExpert
    with torch.device("meta"):
        ex = ScaleDPExpert(ScaleDPConfig.preset(size, action_dim=14, state_dim=14, cond_dim=1536, horizon=50))
        cond, state, x = torch.zeros(1, 1536), torch.zeros(1, 14), torch.zeros(1, 50, 14)
        reasoning, mask = torch.zeros(1, 8, 1536), torch.ones(1, 8, dtype=torch.bool)
        with FlopCounterMode(display=False) as c_cond:
            emb = ex.condition(cond, state, reasoning, mask)                          # (1, W)
        with FlopCounterMode(display=False) as c_step:
            ex.model.forward_embedded(x, torch.zeros(1, dtype=torch.long), emb)      # (1, 50, 14)
    per_step = int(c_step.get_total_flops())
    return {"size": size, "parameters": count(ex.model), "condition_flops": int(c_cond.get_total_flops()),
            "flops_per_step": per_step, "ddim_steps": steps,
            "flops_per_chunk": int(c_cond.get_total_flops()) + steps * per_step}


def train_step_time(policy, size: int, B: int, repeats: int) -> float:
    obs = observation(policy, size, B, seed=3)
    H, A = policy.action_horizon, policy.action_dim
    batch = {"obs": obs, "action": torch.rand(B, H, A) * 2 - 1, "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
             "language": ["grasp the red box"] * B, "reasoning": ["approach the red box"] * B}
    policy.train()
    opt = policy.get_optimizer(lr=1e-5, weight_decay=0.0)

    def step():
        opt.zero_grad(set_to_none=True)
        policy.compute_loss(batch).backward()
        opt.step()

    t, _ = timed(step, repeats)
    policy.eval()
    return t


def run_preset(preset: str, args, random_2b: bool = False) -> Dict[str, Any]:
    """All measurements of one preset (see the module docstring); ``random_2b``: the ``dexvla``
    preset on the random ``qwen2vl_2b`` backbone (``args.depth_scale``), training step skipped."""
    t0 = time.perf_counter()
    policy, size = build(preset, None if random_2b else args.model_path, random_2b=random_2b,
                         depth_scale=args.depth_scale, reasoning_tokens=args.reasoning_tokens)
    build_s = time.perf_counter() - t0
    obs = observation(policy, size, 1)
    bb, ex = policy.backbone, policy.expert
    label = preset
    if random_2b:
        label += "[rand2B" + (f" x{args.depth_scale:g}]" if args.depth_scale < 1 else "]")
    res: Dict[str, Any] = {"preset": label, "image_size": size, "build_s": build_s, "parameters": parameters(policy),
                           "horizon": policy.action_horizon, "ddim_steps": ex.num_inference_steps}
    if random_2b:
        res["random_2b"] = {"backbone_preset": "qwen2vl_2b", "depth_scale": args.depth_scale,
                            "depths": scaled_depths(args.depth_scale)}
    noise = torch.randn(1, policy.action_horizon, policy.action_dim, generator=torch.Generator().manual_seed(5))
    res["predict_action_s"], _ = timed(lambda: policy.predict_action(obs, noise=noise), args.repeats)
    imgs, instr = policy.images(obs), policy.instructions(1, obs["language"])
    state = obs["right_state"][:, -1].float()
    if bb is not None:
        n = bb.max_reasoning_tokens
        res["reasoning_tokens_limit"] = n
        res["generation_s"], gen = timed(lambda: bb.generate_reasoning(imgs, instr), args.repeats)
        res["reasoning_text"] = gen["text"][0]
        res["encode_s"], enc = timed(lambda: bb.encode(imgs, instr), args.repeats)
        res["preprocess_s"], _ = timed(lambda: bb.prompt_inputs(imgs, instr), args.repeats)  # processor only
        res["prompt_tokens"] = int(enc["prompt_mask"].sum())
        with torch.no_grad():
            cond = policy.condition(gen["prompt_hidden"], gen["prompt_mask"], gen["reasoning_hidden"],
                                    gen["reasoning_mask"])                                  # (1, D)
        inputs = bb.prompt_inputs(imgs, instr)
        t_nc, (tok_nc, hid_nc), t_c, (tok_c, hid_c) = timed_pair(
            lambda: generate_tokens(bb, inputs, n, False), lambda: generate_tokens(bb, inputs, n, True), args.repeats)
        res["generation_compare"] = {
            "no_kv_cache_s": t_nc, "kv_cache_s": t_c, "speedup": t_nc / t_c, "generated_tokens": int(tok_c.shape[1]),
            "tokens_equal": bool(torch.equal(tok_nc, tok_c)),
            "hidden_max_abs_diff": (float((hid_nc - hid_c).abs().max()) if hid_c is not None
                                    and hid_nc is not None and hid_nc.shape == hid_c.shape else None)}
    else:
        with torch.no_grad():
            cond = policy.stage1_cond(obs, 1)
    steps = ex.num_inference_steps
    t_re, a_re, res["expert_sampling_s"], a_once = timed_pair(
        lambda: sample_recomputing_condition(ex, cond, state, noise, steps),
        lambda: ex.sample(cond, state, noise=noise), args.repeats)
    res["expert_compare"] = {"condition_every_step_s": t_re, "condition_once_s": res["expert_sampling_s"],
                             "speedup": t_re / res["expert_sampling_s"],
                             "max_abs_diff": float((a_re - a_once).abs().max()),
                             "chunk_max_abs": float(a_once.abs().max())}   # > 0: the comparison is not of zeros
    res["flops_per_chunk"] = flops_per_chunk(policy, obs)
    split = {"expert_sampling": counted_flops(lambda: ex.sample(cond, state, noise=noise))}
    if bb is not None:
        split["reasoning_generation"] = counted_flops(lambda: bb.generate_reasoning(imgs, instr))
    res["flops_split"] = split
    t_fp32, a_fp32, t_bf16, a_bf16 = timed_pair(lambda: policy.predict_action(obs, noise=noise)["action"],
                                                lambda: predict_bf16(policy, obs, noise), args.repeats)
    res["bf16_compare"] = {"fp32_s": t_fp32, "bf16_autocast_s": t_bf16, "bf16_over_fp32": t_bf16 / t_fp32,
                           "max_abs_diff": float((a_fp32.float() - a_bf16).abs().max())}
    if bb is not None:  # the chunks alone say little about the VLM part: compare the condition too
        with torch.no_grad(), torch.autocast(next(policy.parameters()).device.type, dtype=torch.bfloat16,
                                                cache_enabled=False):
            g16 = bb.generate_reasoning(imgs, instr)
            cond16 = policy.condition(g16["prompt_hidden"], g16["prompt_mask"], g16["reasoning_hidden"],
                                      g16["reasoning_mask"])                                 # (1, D)
        res["bf16_compare"]["tokens_equal"] = bool(torch.equal(g16["token_ids"], gen["token_ids"]))
        res["bf16_compare"]["condition_max_abs_diff"] = float((cond16.float() - cond).abs().max())
        res["bf16_compare"]["condition_max_abs"] = float(cond.abs().max())
    extra = e_extra = res["expert_compare"]["condition_every_step_s"] - res["expert_compare"]["condition_once_s"]
    g = res.get("generation_compare")
    if g:
        extra = e_extra + g["no_kv_cache_s"] - g["kv_cache_s"]
    straight = res["predict_action_s"] + extra
    res["chunk_compare"] = {"ours_fp32_s": res["predict_action_s"], "straightforward_s": straight,
                            "speedup": straight / res["predict_action_s"],
                            "ours_chunks_per_s": 1.0 / res["predict_action_s"],
                            "derived": "straightforward = predict_action + (no-cache - cache generation) + "
                                       "(per-step - once condition)"}
    res["train_batch"] = args.train_batch
    if random_2b or args.no_train:
        res["train_step_s"] = None
    else:
        res["train_step_s"] = train_step_time(policy, size, args.train_batch, max(1, args.repeats // 2))
    return res


def fmt_table(rows: List[Dict[str, Any]]) -> str:
    def ms(v):
        return f"{v * 1e3:9.1f}" if isinstance(v, (int, float)) else f"{'-':>9}"

    head = (f"{'preset':22} {'params(M)':>9} {'train(M)':>9} {'predict':>9} {'reason':>9} {'prep':>9} "
            f"{'gen(kv)':>9} {'gen(nokv)':>9} "
            f"{'x':>5} {'encode':>9} {'expert':>9} {'expert*':>9} {'x':>5} {'train':>9} {'GFLOP/chunk':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        g, e, p = r.get("generation_compare", {}), r["expert_compare"], r["parameters"]
        lines.append(f"{r['preset']:22} {p['total'] / 1e6:9.2f} {p['trainable_total'] / 1e6:9.2f} "
                     f"{ms(r['predict_action_s'])} {ms(r.get('generation_s'))} {ms(r.get('preprocess_s'))} "
                     f"{ms(g.get('kv_cache_s'))} {ms(g.get('no_kv_cache_s'))} "
                     f"{g.get('speedup', float('nan')):5.2f} {ms(r.get('encode_s'))} {ms(r['expert_sampling_s'])} "
                     f"{ms(e['condition_every_step_s'])} {e['speedup']:5.2f} {ms(r.get('train_step_s'))} "
                     f"{r['flops_per_chunk'] / 1e9:11.3f}")
    lines.append("times in ms (median); reason: generate_reasoning (processor + generation); prep: the processor "
                 "alone; gen(kv)/gen(nokv): generate() on prepared inputs with/without the KV cache, x = "
                 "ratio; expert: DDIM with the condition embedded once, expert*: recomputed every step; "
                 "train: one training step")
    for r in rows:
        g = r.get("generation_compare")
        if g:
            lines.append(f"{r['preset']}: {g['generated_tokens']} tokens, equal with/without cache: "
                         f"{g['tokens_equal']}, hidden max|diff| {g['hidden_max_abs_diff']}; expert chunks "
                         f"max|diff| {r['expert_compare']['max_abs_diff']:.2e}; prompt {r['prompt_tokens']} tokens")
    nan = float("nan")
    for r in rows:
        c, b, f = r["chunk_compare"], r["bf16_compare"], r["flops_split"]
        parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in f.items())
        lines.append(f"{r['preset']}: chunk straightforward / ours (fp32) = {c['straightforward_s'] * 1e3:.1f} / "
                     f"{c['ours_fp32_s'] * 1e3:.1f} ms = {c['speedup']:.2f}x (derived from the pairs above); ours "
                     f"{c['ours_chunks_per_s']:.3f} chunks/s here; bf16 autocast / fp32 = "
                     f"{b['bf16_autocast_s'] * 1e3:.1f} / {b['fp32_s'] * 1e3:.1f} ms = {b['bf16_over_fp32']:.2f}x, "
                     f"chunks max|diff| {b['max_abs_diff']:.2e}, condition max|diff| "
                     f"{b.get('condition_max_abs_diff', nan):.2e} (of max {b.get('condition_max_abs', nan):.2e}), "
                     f"tokens equal {b.get('tokens_equal')}; GFLOP/chunk {r['flops_per_chunk'] / 1e9:.3f} "
                     f"({parts}); 3.4 chunks/s (the paper, one A6000) at this size needs "
                     f"{3.4 * r['flops_per_chunk'] / 1e12:.2f} TFLOP/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="*", default=["dexvla_tiny", "dexvla_small"],
                    help="presets to run (none: only the --big/--big-random ones)")
    ap.add_argument("--big", action="store_true", help="also dexvla_l and dexvla (needs --model-path; GBs)")
    ap.add_argument("--model-path", default=None, help="local Qwen2-VL folder for the 2B presets")
    ap.add_argument("--big-random", action="store_true",
                    help="also dexvla on a random Qwen2-VL-2B architecture (no checkpoint; ~13 GB in fp32)")
    ap.add_argument("--depth-scale", type=float, default=1.0,
                    help="--big-random: scale the text/ViT/ScaleDP depths (widths kept), e.g. 0.1 for a test")
    ap.add_argument("--reasoning-tokens", type=int, default=None,
                    help="override the reasoning token limit of the backbones (default: the preset's)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up calls before each timed series")
    ap.add_argument("--no-train", action="store_true", help="skip the training step")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    presets = list(args.presets)
    if args.big:
        if not args.model_path:
            ap.error("--big needs --model-path (the 2B presets load the Qwen2-VL folder); --big-random needs none")
        presets += [p for p in ("dexvla_l", "dexvla") if p not in presets]
    global WARMUP
    WARMUP = max(0, args.warmup)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    rows = []
    for preset in presets:
        print(f"[dexvla_speed] {preset} ...", flush=True)
        rows.append(run_preset(preset, args))
    if args.big_random:
        print(f"[dexvla_speed] dexvla on random qwen2vl_2b (depth scale {args.depth_scale:g}) ...", flush=True)
        rows.append(run_preset("dexvla", args, random_2b=True))
    print(fmt_table(rows))
    paper = [expert_flops_at_paper_shapes(size) for size in ("L", "H")]
    for e in paper:
        print(f"ScaleDP-{e['size']} at DexVLA's shapes (D 1536, H 50, batch 1): {e['parameters'] / 1e6:.1f} M parameters, "
              f"{e['flops_per_step'] / 1e9:.1f} GFLOP per denoising step, {e['flops_per_chunk'] / 1e9:.0f} GFLOP per "
              f"chunk ({e['ddim_steps']} DDIM steps; meta device, the VLM not included)")
    if args.out:
        meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
                "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": args.repeats,
                "warmup": WARMUP, "reasoning_tokens": args.reasoning_tokens}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows, "expert_flops_paper_shapes": paper}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
