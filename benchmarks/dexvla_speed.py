"""DexVLA speed: predict_action latency split, straightforward vs ours, training step, parameter counts.

    python benchmarks/dexvla_speed.py [--presets dexvla_tiny dexvla_small] [--repeats 5] [--threads 1]
                                      [--out results.json] [--big --model-path QWEN2VL_DIR]

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
* **training step**: ``compute_loss`` (diffusion + LM loss on a reasoning string) + backward + AdamW;
* **parameters**: backbone (of which vision, of which trainable), projector, expert (ScaleDP,
  reasoning FiLM), trainable total.

``--big`` adds ``dexvla_l`` and ``dexvla`` (the 2B backbone from ``--model-path``, ScaleDP-L/H; GBs
of memory). Prints a table; ``--out`` writes the JSON.
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


def build(preset: str, model_path: str | None = None):
    """The policy of ``train.py policy=<preset> task=sim_grasp`` (random weights, fitted normaliser)."""
    from hydra import compose, initialize_config_dir

    import controller.policy.dexvla_policy  # noqa: F401 - registers DexVLAPolicy
    from controller.common.registry import instantiate
    from controller.model.common.normalizer import LinearNormalizer

    overrides = [f"policy={preset}", "task=sim_grasp"]
    if model_path:
        overrides.append(f"policy.backbone.model_path={model_path}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train_dexgraspvla_controller_workspace", overrides=overrides)
    torch.manual_seed(0)
    policy = instantiate(cfg.policy, ("policy",), where="policy", trusted=True).eval()
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


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (s) over ``repeats`` calls after one warm-up call; the last result."""
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
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        policy.predict_action(obs)
    return int(counter.get_total_flops())


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


def run_preset(preset: str, args) -> Dict[str, Any]:
    t0 = time.perf_counter()
    policy, size = build(preset, args.model_path)
    build_s = time.perf_counter() - t0
    obs = observation(policy, size, 1)
    bb, ex = policy.backbone, policy.expert
    res: Dict[str, Any] = {"preset": preset, "image_size": size, "build_s": build_s, "parameters": parameters(policy),
                           "horizon": policy.action_horizon, "ddim_steps": ex.num_inference_steps}
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
                             "max_abs_diff": float((a_re - a_once).abs().max())}
    res["flops_per_chunk"] = flops_per_chunk(policy, obs)
    res["train_batch"] = args.train_batch
    res["train_step_s"] = train_step_time(policy, size, args.train_batch, max(1, args.repeats // 2))
    return res


def fmt_table(rows: List[Dict[str, Any]]) -> str:
    def ms(v):
        return f"{v * 1e3:9.1f}" if isinstance(v, (int, float)) else f"{'-':>9}"

    head = (f"{'preset':14} {'params(M)':>9} {'train(M)':>9} {'predict':>9} {'reason':>9} {'prep':>9} "
            f"{'gen(kv)':>9} {'gen(nokv)':>9} "
            f"{'x':>5} {'encode':>9} {'expert':>9} {'expert*':>9} {'x':>5} {'train':>9} {'GFLOP/chunk':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        g, e, p = r.get("generation_compare", {}), r["expert_compare"], r["parameters"]
        lines.append(f"{r['preset']:14} {p['total'] / 1e6:9.2f} {p['trainable_total'] / 1e6:9.2f} "
                     f"{ms(r['predict_action_s'])} {ms(r.get('generation_s'))} {ms(r.get('preprocess_s'))} "
                     f"{ms(g.get('kv_cache_s'))} {ms(g.get('no_kv_cache_s'))} "
                     f"{g.get('speedup', float('nan')):5.2f} {ms(r.get('encode_s'))} {ms(r['expert_sampling_s'])} "
                     f"{ms(e['condition_every_step_s'])} {e['speedup']:5.2f} {ms(r['train_step_s'])} "
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
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["dexvla_tiny", "dexvla_small"])
    ap.add_argument("--big", action="store_true", help="also dexvla_l and dexvla (needs --model-path; GBs)")
    ap.add_argument("--model-path", default=None, help="local Qwen2-VL folder for the 2B presets")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    presets = list(args.presets)
    if args.big:
        if not args.model_path:
            ap.error("--big needs --model-path (the 2B presets load the Qwen2-VL folder)")
        presets += [p for p in ("dexvla_l", "dexvla") if p not in presets]
    torch.set_num_threads(args.threads)
    rows = []
    for preset in presets:
        print(f"[dexvla_speed] {preset} ...", flush=True)
        rows.append(run_preset(preset, args))
    print(fmt_table(rows))
    paper = [expert_flops_at_paper_shapes(size) for size in ("L", "H")]
    for e in paper:
        print(f"ScaleDP-{e['size']} at DexVLA's shapes (D 1536, H 50, batch 1): {e['parameters'] / 1e6:.1f} M parameters, "
              f"{e['flops_per_step'] / 1e9:.1f} GFLOP per denoising step, {e['flops_per_chunk'] / 1e9:.0f} GFLOP per "
              f"chunk ({e['ddim_steps']} DDIM steps; meta device, the VLM not included)")
    if args.out:
        meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
                "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "repeats": args.repeats}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows, "expert_flops_paper_shapes": paper}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
