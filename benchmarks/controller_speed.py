"""Controller speed: inference latency per action chunk, training-step time, loader throughput.

    python benchmarks/controller_speed.py --policy paper small [--train-batch 2] [--repeats 3] [--quick]

For each preset (random weights -- nothing is downloaded) it prints and writes to
``benchmarks/results/controller_speed_<time>.json``:

* **inference** (batch 1, the preset's DDIM steps, torch's default threads): the straightforward
  path -- attention weights materialised (``softmax(q k^T) v``, as DINOv2's reference attention
  does without xFormers) in the backbones and the DiT, every condition token projected to keys and
  values in every block at every denoising step, ``no_grad`` -- and the optimisations added one by
  one: fused SDPA, the condition K/V cache (time-token rows of all steps projected in one batch),
  ``torch.inference_mode``, oneDNN instead of MKL for the linear layers' matmuls
  (``controller.model.common.linear``) (and that path again capturing the attention maps, to show what
  ``--gen-attn-map`` costs and that the normal path does not pay it); then bf16 autocast on top (fast on CPUs with AMX / AVX-512-BF16, but
  not output-equal: its max |difference| is printed like every row's). Per row: median chunk
  latency over ``--repeats`` runs after a warm-up, its encoder / diffusion split, the ratio to the
  straightforward path, the max |difference| of the actions (same noise) and the process's peak
  RSS after the row's first run (monotone: a later row can only show more). Last, the optimised
  path under ``compile_for_inference`` (``torch.compile`` of the encoder and the denoising steps
  with inductor's weight freezing; deployment: ``controller.compile=true``), its one-off compile
  time reported separately (``--no-compile`` skips it). Then a second phase under
  ``keep_freed_memory`` (glibc keeps freed memory, as the deployment runtime does by default;
  process-wide, so measured after everything else, training rows included; ``--no-malloc`` skips
  it): the straightforward path, the best eager path and the compiled path again, with their
  ratio both to the first straightforward row and to the straightforward path under the same
  allocator (``speedup_same_allocator``).
* **training step** (``--train-batch``): forward + backward + AdamW step from images with explicit
  attention and MKL matmuls (straightforward), from images with fused SDPA (and oneDNN for the
  frozen backbones' matmuls, which need no gradient), from cached backbone tokens (fed as
  tensors, mask-only ``rgbm``), both fused ones again with the denoiser under ``torch.compile``
  (``training.compile=true``; ``--no-compile`` skips these rows; the compiling first step is
  reported, not timed) and cached tokens under bf16 autocast (``--no-bf16`` skips the bf16 rows).
  The backbones are built frozen for this (the small preset trains them by default, which rules
  out a cache).
* **sampling** (``--samples K``, default the deployment's ``controller.num_samples``): the cost of
  averaging K chunks per observation, after the inference rows (so under the allocator tuning,
  as deployed): one sample, K samples one after another (K encodings) and K samples from one
  encoding in one batch (``sample_actions``, what ``ChunkPolicy`` does), with the batched path's
  ratio to the sequential one and the max |difference| of their means (same noise).
* **shared backbone** (last; ``--no-shared`` skips it, ``--skip-train --skip-inference`` runs it alone): the preset with the wrist camera on the head's
  ViT -- two backbones with equal weights called one after another, against one backbone
  (``obs_encoder.share_backbone=true``) called once on both images; encoder latency, ratio, max
  |difference| of the condition tokens and parameter count. Applies where both cameras use the
  same frozen model (the paper preset's ViT-B/14 head and ViT-L/14 wrist do not).
* **loader**: ms per sample of ``GraspDataset`` from 480x640 frames vs from a feature cache
  (paper-shaped tokens), single process, against the step time per sample.

* **side by side with the original code** (``--reference-code PATH --dinov2-code PATH``, run
  first, paper configuration; see ``benchmarks/reference_side_by_side.py``): the original
  DexGraspVLA policy and ours on the same tensors, observation and noise, alternated; chunk time of
  each, their ratio, max |difference| of the actions, and each one's peak RSS from a child process
  of its own.

Rows are run round-robin (one run of each per round) so load changes on a shared machine hit all
rows alike. Timings on a busy 2-core CPU are noisy; compare rows within one run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import reference_side_by_side  # noqa: E402  (the side-by-side row against the original code)

TRAIN_BATCH = {"paper": 2, "small": 8, "tiny": 8}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def build(preset: str, overrides=()):
    """Policy with random weights and a fitted normaliser, in eval mode."""
    from controller.common.registry import instantiate
    from tests.controller.conftest import compose_cfg, fitted_normalizer
    torch.manual_seed(0)
    cfg = compose_cfg([f"policy={preset}", "policy.obs_encoder.head.frozen=true",
                       "policy.obs_encoder.wrist.frozen=true", *overrides])
    policy = instantiate(cfg.policy, trusted=True)
    policy.set_normalizer(fitted_normalizer())
    return policy.eval(), cfg


class EncoderTimer:
    """Times ``policy.obs_encoder`` calls with forward hooks."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.t0, self.last = 0.0, 0.0
        module.register_forward_pre_hook(lambda *a: setattr(self, "t0", time.perf_counter()))
        module.register_forward_hook(lambda *a: setattr(self, "last", time.perf_counter() - self.t0))


# ---------------------------------------------------------------------------- inference
#: Settings of the best output-equal eager path (fused, K/V cache, inference_mode, oneDNN matmuls;
#: no bf16, no capture).
BEST_EAGER = (True, True, True, False, False, True)
#: Inference rows: (name, (fused_attention, cache_condition_kv, inference_mode, bf16 autocast,
#: attention capture, oneDNN linear)).
INFERENCE_ROWS = [
    ("straightforward (explicit attention, K/V per step)", (False, False, False, False, False, False)),
    ("+ fused SDPA", (True, False, False, False, False, False)),
    ("+ cached condition K/V", (True, True, False, False, False, False)),
    ("+ inference_mode", (True, True, True, False, False, False)),
    ("+ oneDNN linear layers", BEST_EAGER),
    ("  (same, capturing attention maps)", (True, True, True, False, True, True)),
    ("+ bf16 autocast (not equal: bf16 rounding)", (True, True, True, True, False, True)),
]


COMPILED_ROW = "+ torch.compile, frozen weights"
#: Rows of the second phase, after :func:`keep_freed_memory` (process-wide, so measured last).
MALLOC_ROWS = {"straightforward": "straightforward, glibc keeps freed memory",
               "eager": "+ inference_mode, glibc keeps freed memory",
               "compiled": "+ torch.compile, glibc keeps freed memory"}


def _round_robin(runners: dict, res: dict, repeats: int, warmup: bool) -> None:
    """Run each ``runners[name]() -> (total_s, encoder_s, actions)`` once per round, ``repeats``
    rounds (after one warm-up round), recording into ``res[name]``."""
    if warmup:
        for run in runners.values():
            run()
    for r in range(repeats):
        for name, run in runners.items():
            total, enc, actions = run()
            d = res.setdefault(name, {"total": [], "encoder": [], "rss_gb": None, "actions": None})
            d["total"].append(total)
            d["encoder"].append(enc)
            if d["actions"] is None:
                d["actions"], d["rss_gb"] = actions, peak_rss_gb()
            print(f"  round {r}: {name}: {total:.2f} s (encoders {enc:.2f} s)", flush=True)


def inference_rows(policy, obs, noise, repeats: int, warmup: bool, bf16: bool = True, compiled: bool = True,
                   malloc: bool = True):
    """Median chunk latency per row (``INFERENCE_ROWS``), encoder/diffusion split, max |diff|.

    With ``compiled`` also the optimised path under :meth:`compile_for_inference` (after the eager
    rows, on a deep copy of the policy; its one-off compile time is reported, not timed). With
    ``malloc`` a second phase follows under :func:`keep_freed_memory` (process-wide and sticky,
    hence last): the straightforward path, the best eager path and the compiled path again. Speed-ups
    are against the first-phase straightforward row; ``speedup_same_allocator`` is against the
    second phase's straightforward row for the second-phase rows.
    """
    import copy
    from controller.common.malloc_tuning import keep_freed_memory
    rows = [r for r in INFERENCE_ROWS if bf16 or not r[1][3]]
    timer = EncoderTimer(policy.obs_encoder)
    res: dict = {}
    device = policy.device

    def eager(settings):
        def run():
            fused, cache_kv, inf_mode, autocast, capture, onednn = settings
            policy.set_fused_attention(fused)
            policy.set_onednn_linear(onednn)
            policy.cache_condition_kv = cache_kv
            ctx = torch.inference_mode() if inf_mode else torch.no_grad()
            t = time.perf_counter()
            with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                actions = policy.predict_action(obs, noise=noise, return_attention=capture)
            if capture:
                actions = actions[0]
            return time.perf_counter() - t, timer.last, actions.float().clone()
        return run

    _round_robin({name: eager(settings) for name, settings in rows}, res, repeats, warmup)
    policy.set_fused_attention(True)
    policy.set_onednn_linear(True)
    policy.cache_condition_kv = True
    compile_s, run_compiled, twin = None, None, None
    if compiled:
        twin = copy.deepcopy(policy)
        twin.compile_for_inference()
        compiled_encoder, enc_s = twin._inference_compiler.encoder, [0.0]

        def timed_encoder(*a, **k):  # the compiled forward bypasses module hooks: time it here
            t0 = time.perf_counter()
            out = compiled_encoder(*a, **k)
            enc_s[0] = time.perf_counter() - t0
            return out

        twin._inference_compiler.encoder = timed_encoder

        def run_compiled():
            t = time.perf_counter()
            with torch.inference_mode():
                actions = twin.predict_action(obs, noise=noise)
            return time.perf_counter() - t, enc_s[0], actions.float().clone()

        compile_s = run_compiled()[0]
        _round_robin({COMPILED_ROW: run_compiled}, res, repeats, warmup=False)
        rows.append((COMPILED_ROW, BEST_EAGER))
    if malloc and keep_freed_memory():
        phase2 = {MALLOC_ROWS["straightforward"]: eager(rows[0][1]),
                  MALLOC_ROWS["eager"]: eager(BEST_EAGER)}
        if run_compiled is not None:
            phase2[MALLOC_ROWS["compiled"]] = run_compiled
        _round_robin(phase2, res, repeats, warmup)
        rows += [(MALLOC_ROWS["straightforward"], rows[0][1]),
                 (MALLOC_ROWS["eager"], BEST_EAGER)]
        if run_compiled is not None:
            rows.append((MALLOC_ROWS["compiled"], BEST_EAGER))
    del twin
    base = res[rows[0][0]]
    out = []
    for name, settings in rows:
        d = res[name]
        tot, enc = statistics.median(d["total"]), statistics.median(d["encoder"])
        diff = [t - e for t, e in zip(d["total"], d["encoder"])]
        out.append({"row": name, "fused_attention": settings[0], "cache_condition_kv": settings[1],
                    "inference_mode": settings[2], "bf16_autocast": settings[3], "attention_capture": settings[4],
                    "onednn_linear": settings[5],
                    "keep_freed_memory": name in MALLOC_ROWS.values(),
                    "threads": torch.get_num_threads(), "latency_s": tot, "encoder_s": enc,
                    "diffusion_s": statistics.median(diff), "runs_s": d["total"],
                    "max_abs_diff": float((d["actions"] - base["actions"]).abs().max()),
                    "peak_rss_gb": d["rss_gb"],
                    "compile_s": compile_s if name in (COMPILED_ROW, MALLOC_ROWS["compiled"]) else None})
    b_tot, b_dif = out[0]["latency_s"], out[0]["diffusion_s"]
    same = next((r["latency_s"] for r in out if r["row"] == MALLOC_ROWS["straightforward"]), None)
    for row in out:
        row["speedup"] = b_tot / row["latency_s"]
        row["diffusion_speedup"] = b_dif / row["diffusion_s"]
        row["speedup_same_allocator"] = (same if row["keep_freed_memory"] else b_tot) / row["latency_s"]
    return out


# ---------------------------------------------------------------------------- training
def train_rows(policy, cfg, batch_size: int, repeats: int, warmup: bool, compile_rows: bool = True,
               bf16: bool = True):
    """Training step (forward + backward + AdamW) on the same weights and batch:

    from images with explicit attention (straightforward), from images with fused SDPA, from
    cached backbone tokens, and (``compile_rows``) both fused variants with the denoiser under
    ``torch.compile`` (its first, compiling step is reported as ``first_step_s``, never timed), and
    (``bf16``) cached tokens under bf16 autocast."""
    from tests.controller.conftest import random_obs
    size = int(cfg.image_size)
    obs = random_obs(batch_size, size, seed=1)
    with torch.no_grad():
        head = policy.obs_encoder.head_rgb_tokens(obs["rgbm"], False).unflatten(0, (batch_size, 1))
        wrist = policy.obs_encoder.wrist_rgb_tokens(obs["right_cam_img"], False).unflatten(0, (batch_size, 1))
    cached_obs = {"rgbm": obs["rgbm"][:, :, 3:].clone(), "right_state": obs["right_state"],
                  "head_tokens": head.half(), "wrist_tokens": wrist.half()}
    action = torch.rand(batch_size, policy.action_horizon, policy.action_dim)
    pad = torch.zeros(batch_size, policy.action_horizon, dtype=torch.bool)
    img = {"obs": obs, "action": action, "action_is_pad": pad}
    cached = {"obs": cached_obs, "action": action, "action_is_pad": pad}
    eager = policy.model
    # (name, batch, denoiser, fused attention, bf16 autocast)
    rows = [("images, explicit attention (straightforward)", img, eager, False, False),
            ("images, fused SDPA", img, eager, True, False),
            ("cached features", cached, eager, True, False)]
    if compile_rows:
        compiled = torch.compile(eager)  # shares the parameters (and so the optimiser) with ``eager``
        rows += [("images + compiled denoiser", img, compiled, True, False),
                 ("cached features + compiled denoiser", cached, compiled, True, False)]
    if bf16:
        rows.append(("cached features + bf16 autocast", cached, eager, True, True))
    policy.train()
    opt = policy.get_optimizer(lr=1e-5, weight_decay=1e-4)
    device = policy.device

    def step(batch, model, fused, autocast):
        policy.model = model
        policy.set_fused_attention(fused)
        policy.set_onednn_linear(fused)  # the straightforward row: MKL matmuls too
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = policy.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    compile_s = {}
    for name, batch, model, fused, autocast in rows:
        if warmup or model is not eager:  # the first compiled call compiles: never timed
            compile_s[name] = step(batch, model, fused, autocast)
    times = {name: [] for name, *_ in rows}
    for r in range(repeats):
        for name, batch, model, fused, autocast in rows:
            times[name].append(step(batch, model, fused, autocast))
            print(f"  round {r}: train step, {name}: {times[name][-1]:.2f} s", flush=True)
    policy.model = eager
    policy.set_fused_attention(True)
    policy.set_onednn_linear(True)
    policy.eval()
    base = statistics.median(times[rows[0][0]])
    return [{"row": k, "batch": batch_size, "threads": torch.get_num_threads(), "step_s": statistics.median(v),
             "runs_s": v, "speedup": base / statistics.median(v), "first_step_s": compile_s.get(k),
             "peak_rss_gb": peak_rss_gb()} for k, v in times.items()]


# ---------------------------------------------------------------------------- loader
def loader_rows(policy, cfg, n: int = 16):
    """ms per sample: images read + resized vs feature-cache tokens of this preset's shape."""
    from controller.common.registry import instantiate
    from controller.dataset.cache_features import _create_or_check
    from tests.controller.dataset.factories import make_grasp_zarr
    tmp = tempfile.mkdtemp(prefix="controller_speed_")
    data = make_grasp_zarr(os.path.join(tmp, "d.zarr"), episode_lengths=(n,), hw=(480, 640))
    ds = instantiate(cfg.task.dataset, trusted=True, dataset_paths=[data], feature_cache_path=None)
    root = _create_or_check(os.path.join(tmp, "f.zarr"), policy.obs_encoder, ds, 0, "float16", 8, 0)
    g = root["store_0"]
    for key in ("head_tokens", "wrist_tokens"):
        g[key][...] = np.random.default_rng(0).standard_normal(g[key].shape).astype(np.float16)
    g["done"][...] = 1
    ds_c = instantiate(cfg.task.dataset, trusted=True, dataset_paths=[data], feature_cache_path=os.path.join(tmp, "f.zarr"))
    out = []
    for name, d in (("images 480x640 -> resize", ds), ("feature cache", ds_c)):
        d[0]
        t = time.perf_counter()
        for i in range(n):
            d[i]
        out.append({"row": name, "ms_per_sample": (time.perf_counter() - t) / n * 1e3})
    return out


# ---------------------------------------------------------------------------- sampling
def sampling_rows(policy, obs, k: int, repeats: int, warmup: bool) -> list:
    """Median chunk latency of 1 sample, K sequential samples and K batched samples (one encoding),
    best eager settings; max |difference| of the K-sample means against the sequential path."""
    policy.set_fused_attention(True)
    policy.cache_condition_kv = True
    noise = torch.randn(1, k, policy.action_horizon, policy.action_dim, generator=torch.Generator().manual_seed(1))
    timer = EncoderTimer(policy.obs_encoder)

    def timed(fn):
        def run():
            t = time.perf_counter()
            with torch.inference_mode():
                actions = fn()
            return time.perf_counter() - t, timer.last, actions.float().clone()
        return run

    names = ["1 sample", f"{k} samples, one after another (mean)", f"{k} samples, one encoding, batched (mean)"]
    runners = {
        names[0]: timed(lambda: policy.predict_action(obs, noise=noise[:, 0])),
        names[1]: timed(lambda: torch.stack([policy.predict_action(obs, noise=noise[:, i]) for i in range(k)],
                                            1).mean(1)),
        names[2]: timed(lambda: policy.sample_actions(obs, k, noise=noise).mean(1)),
    }
    res: dict = {}
    _round_robin(runners, res, repeats, warmup)
    seq = res[names[1]]
    seq_s = statistics.median(seq["total"])
    return [{"row": name, "samples": 1 if i == 0 else k, "latency_s": statistics.median(res[name]["total"]),
             "runs_s": res[name]["total"], "speedup_vs_sequential": seq_s / statistics.median(res[name]["total"]),
             "max_abs_diff_vs_sequential": (float((res[name]["actions"] - seq["actions"]).abs().max())
                                            if i else None)}
            for i, name in enumerate(names)]


def shared_backbone_rows(preset: str, repeats: int, warmup: bool) -> list:
    """Both cameras through the head's ViT: two calls of batch 1 (two backbones with equal weights)
    against one batched call (``obs_encoder.share_backbone=true``); encoder latency, max |difference|
    of the condition tokens and the parameter count (the shared encoder holds one ViT)."""
    from controller.common.registry import instantiate
    from controller.model.diffusion.layers import set_fused_attention
    from controller.model.vision.obs_encoder import unshared_state_dict
    from tests.controller.conftest import compose_cfg, random_obs
    encoders = {}
    for share in (False, True):
        torch.manual_seed(0)
        cfg = compose_cfg([f"policy={preset}", "policy.obs_encoder.head.frozen=true",
                           "policy.obs_encoder.wrist=${policy.obs_encoder.head}",
                           f"++policy.obs_encoder.share_backbone={str(share).lower()}"])
        enc = instantiate(cfg.policy.obs_encoder, trusted=True).eval()
        set_fused_attention(enc, True)
        encoders[share] = enc
    encoders[False].load_state_dict(unshared_state_dict(encoders[True].state_dict()), strict=True)
    obs = random_obs(1, int(cfg.image_size), seed=0)
    vit = cfg.policy.obs_encoder.head.model_type

    def timed(enc):
        def run():
            t = time.perf_counter()
            with torch.inference_mode():
                tokens = enc(obs, training=False)
            dt = time.perf_counter() - t
            return dt, dt, tokens.float().clone()
        return run

    names = {False: f"head + wrist, two {vit} calls of batch 1", True: f"one shared {vit}, one call of batch 2"}
    res: dict = {}
    _round_robin({names[k]: timed(e) for k, e in encoders.items()}, res, repeats, warmup)
    base = statistics.median(res[names[False]]["total"])
    ref = res[names[False]]["actions"]
    return [{"row": names[k], "encoder_s": statistics.median(res[names[k]]["total"]),
             "speedup": base / statistics.median(res[names[k]]["total"]),
             "max_abs_diff": float((res[names[k]]["actions"] - ref).abs().max()),
             "params_m": sum(p.numel() for p in encoders[k].parameters()) / 1e6} for k in (False, True)]


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", nargs="+", default=["paper", "small"], choices=["paper", "small", "tiny"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=None, help="default: paper 2, small 8, tiny 8")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (inference and training)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast rows")
    ap.add_argument("--no-malloc", action="store_true",
                    help="skip the second inference phase under keep_freed_memory (glibc allocator tuning)")
    ap.add_argument("--samples", type=int, default=None,
                    help="K of the sampling rows (default: the deployment's num_samples; 0 or 1 skips them)")
    ap.add_argument("--no-shared", action="store_true",
                    help="skip the shared-backbone rows (head and wrist through one ViT in one batch)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, no warm-up (smoke run)")
    reference_side_by_side.add_arguments(ap)
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = ap.parse_args()
    if bool(args.reference_code) != bool(args.dinov2_code):
        ap.error("--reference-code and --dinov2-code go together")
    repeats, warmup = (1, False) if args.quick else (max(args.repeats, 1), True)
    default_threads = torch.get_num_threads()
    report = {"torch": torch.__version__, "default_threads": default_threads, "cpu_count": os.cpu_count(),
              "repeats": repeats, "presets": {}}
    # Training and loader rows first, for every preset: the inference rows end with the allocator
    # phase, whose process-wide setting would otherwise carry over into them.
    order = ([("train", p) for p in args.policy] if not args.skip_train else []) + \
            ([("inference", p) for p in args.policy] if not args.skip_inference else []) + \
            ([("shared", p) for p in args.policy] if not args.no_shared else [])
    if args.reference_code:  # first: the later inference rows leave a process-wide allocator setting
        print("\n== side by side with the original DexGraspVLA (paper configuration)", flush=True)
        report["reference"] = reference_side_by_side.side_by_side(
            args.reference_code, args.dinov2_code, repeats, warmup, args.rss_chunks,
            compile_row=not args.no_compile, rss=not args.no_reference_rss,
            same_process=args.same_process)
    for part, preset in order:
        entry = report["presets"].setdefault(preset, {})
        if part == "shared":  # builds its own two encoders
            print(f"\n== {preset} (shared backbone)", flush=True)
            entry["shared_backbone"] = shared_backbone_rows(preset, repeats, warmup)
            continue
        t = time.perf_counter()
        policy, cfg = build(preset)
        entry.update({"build_s": time.perf_counter() - t, "image_size": int(cfg.image_size),
                      "condition_tokens": policy.obs_encoder.num_tokens + 1,
                      "ddim_steps": policy.num_inference_steps})
        print(f"\n== {preset} ({part}): {entry['image_size']} px, {entry['condition_tokens']} condition tokens, "
              f"{entry['ddim_steps']} DDIM steps (built in {entry['build_s']:.0f} s)", flush=True)
        if part == "inference":
            from tests.controller.conftest import random_obs
            obs = random_obs(1, entry["image_size"], seed=0)
            noise = torch.randn(1, policy.action_horizon, policy.action_dim, generator=torch.Generator().manual_seed(0))
            entry["inference"] = inference_rows(policy, obs, noise, repeats, warmup, bf16=not args.no_bf16,
                                                compiled=not args.no_compile, malloc=not args.no_malloc)
            from controller.policy import defaults
            k = defaults.NUM_SAMPLES if args.samples is None else args.samples
            if k > 1:
                entry["sampling"] = sampling_rows(policy, obs, k, repeats, warmup)
        else:
            entry["train"] = train_rows(policy, cfg, args.train_batch or TRAIN_BATCH[preset], repeats, warmup,
                                        compile_rows=not args.no_compile, bf16=not args.no_bf16)
            entry["loader"] = loader_rows(policy, cfg)
        del policy
    print_report(report)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"controller_speed_{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwritten {path}")


def print_report(report: dict) -> None:
    if report.get("reference"):
        reference_side_by_side.print_side_by_side(report["reference"])
    for preset, e in report["presets"].items():
        if "ddim_steps" in e:
            print(f"\n### {preset} ({e['image_size']} px, {e['condition_tokens']} cond tokens, {e['ddim_steps']} steps, batch 1)")
        else:
            print(f"\n### {preset}")
        if "inference" in e:
            print(f"{'path':52s} {'chunk s':>8s} {'enc s':>7s} {'diff s':>7s} {'x total':>8s} {'x diff':>7s} "
                  f"{'max|d|':>9s} {'RSS GB':>7s} {'x same-alloc':>12s}")
            for r in e["inference"]:
                first = f"  (one-off compile {r['compile_s']:.0f} s)" if r.get("compile_s") else ""
                print(f"{r['row']:52s} {r['latency_s']:8.2f} {r['encoder_s']:7.2f} {r['diffusion_s']:7.2f} "
                      f"{r['speedup']:8.2f} {r['diffusion_speedup']:7.2f} {r['max_abs_diff']:9.2e} "
                      f"{r['peak_rss_gb']:7.2f} {r['speedup_same_allocator']:12.2f}{first}")
        for r in e.get("sampling", []):
            diff = r["max_abs_diff_vs_sequential"]
            print(f"sampling, {r['row']:45s} {r['latency_s']:8.3f} s  x{r['speedup_vs_sequential']:.2f} vs sequential"
                  + (f"  max|d| {diff:.1e}" if diff is not None else ""))
        for r in e.get("shared_backbone", []):
            print(f"encoder, {r['row']:46s} {r['encoder_s']:8.3f} s  x{r['speedup']:.2f}  "
                  f"max|d| {r['max_abs_diff']:.1e}  {r['params_m']:.1f} M parameters")
        if "train" in e:
            for r in e["train"]:
                first = f", first step {r['first_step_s']:.0f} s" if "compiled" in r["row"] and r.get("first_step_s") else ""
                print(f"train step, {r['row']:52s} batch {r['batch']}, {r['threads']} thr: {r['step_s']:7.2f} s  "
                      f"x{r['speedup']:.2f}  (per sample {r['step_s'] / r['batch'] * 1e3:.0f} ms{first})")
            for r in e["loader"]:
                print(f"loader, {r['row']:40s} {r['ms_per_sample']:8.1f} ms/sample (1 process)")


if __name__ == "__main__":
    main()
