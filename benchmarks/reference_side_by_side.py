"""Side by side with the original DexGraspVLA code: chunk time, action difference, peak RSS.

    python benchmarks/reference_side_by_side.py --reference-code /path/to/DexGraspVLA \\
        --dinov2-code /path/to/dinov2 [--repeats 3] [--rss-chunks 2] [--compile]

(also a row of ``benchmarks/controller_speed.py`` with the same two flags). Nothing of the
original is part of this project: its code is imported at run time from ``--reference-code`` (a
checkout of github.com/Psi-Robot/DexGraspVLA) and its DINOv2 from ``--dinov2-code`` (a checkout
of github.com/facebookresearch/dinov2: the original calls ``torch.hub.load('facebookresearch/dinov2',
...)``, which here is answered from that directory with ``pretrained=False`` -- nothing is
downloaded).

What it does, paper configuration (the original's own ``train_dexgraspvla_controller_workspace.yaml``
and ``task/grasp.yaml``: 518 px, ViT-B/14 head, ViT-L/14 wrist, DiT 12 x 1024, DDIM 16 steps),
fp32, batch 1, torch's default threads:

* **time**: the original's policy is built with random weights; the same tensors are mapped into
  ours with the converter's mapping (:func:`controller.reference_format.map_model_state`, what
  ``python -m controller.convert_checkpoint`` does to a real checkpoint), and both are written to
  disk. Each implementation then runs in a child process of its own, loaded as it deploys: the
  original ``torch.load``s its dill-pickled payload + ``load_state_dict`` (its
  ``BaseWorkspace.load_payload``; DINOv2 built with ``pretrained=False`` -- the real original also
  loads the hub weights first, so it is heavier than measured here), ours
  ``ChunkPolicy.from_checkpoint`` (``load_policy`` + glibc ``keep_freed_memory``, the deployment
  default). The children stay alive together and predict one chunk each per round, in turn
  (``--repeats`` rounds after one warm-up round), from the same observation and the same initial
  noise (the original draws it with ``torch.randn`` after ``torch.manual_seed``; ours gets that
  tensor). Printed: median chunk time of each, the ratio of medians and the median of the
  per-round ratios, max |difference| of the action chunks (sent back to this process). The
  original runs as its ``inference.py`` does (``torch.no_grad``); ours as ``ChunkPolicy`` does
  (``torch.inference_mode``). ``--compile`` adds ours under ``compile_for_inference`` as a third
  child. ``--same-process`` times both in this one process instead (the original's modules under
  an alias), where the allocator and caches are shared between them.
* **peak RSS**: each child's ``VmHWM`` (peak resident set) while building + loading and while
  predicting, and its ``VmRSS`` after each stage (with ``--same-process``: separate children, one
  after another, ``--rss-chunks`` chunks each).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Dict, List, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The original's package is called ``controller`` like ours; its modules are kept under this
#: prefix in ``sys.modules`` once imported, so both live in one process.
ALIAS = "_dexgraspvla_original"
NOISE_SEED = 0


# ---------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_status_gb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in GB (1e9 bytes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"/proc/self/status has no {field}")


# ---------------------------------------------------------------------------- the original's code
class _OriginalFinder(importlib.abc.MetaPathFinder):
    """Resolves ``controller`` and ``controller.*`` from the original's checkout (ahead of our
    package, of the editable-install finder and of ``sys.path``)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, name, path, target=None):
        if name == "controller":
            return importlib.machinery.PathFinder.find_spec(name, [self.root])
        if name.startswith("controller."):
            return importlib.machinery.PathFinder.find_spec(name, path)  # the original's parent __path__
        return None


def _einops_stand_in() -> Dict[str, types.ModuleType]:
    """The two einops patterns the original uses, for environments without einops
    (``Rearrange('b c n -> b n c')`` in its ObsEncoder, ``rearrange(t, 'b ... -> b (...)')`` in its
    training-only noise assignment)."""
    def rearrange(t, pattern):
        if pattern.replace(" ", "") == "b...->b(...)":
            return t.flatten(1)
        if pattern.replace(" ", "") == "bcn->bnc":
            return t.transpose(1, 2)
        raise NotImplementedError(f"einops stand-in: pattern {pattern!r}; install einops")

    class Rearrange(torch.nn.Module):
        def __init__(self, pattern):
            super().__init__()
            rearrange(torch.zeros(1, 1, 1), pattern)  # refuse unknown patterns now
            self.pattern = pattern

        def forward(self, x):
            return rearrange(x, self.pattern)

    root, layers, layers_torch = (types.ModuleType(n) for n in ("einops", "einops.layers", "einops.layers.torch"))
    root.rearrange, layers_torch.Rearrange = rearrange, Rearrange
    root.layers, layers.torch = layers, layers_torch
    return {"einops": root, "einops.layers": layers, "einops.layers.torch": layers_torch}


@contextlib.contextmanager
def original_namespace(reference_code: str):
    """Inside: ``import controller...`` imports the original's modules. Outside: ours again; the
    original's modules stay importable as ``_dexgraspvla_original.*``."""
    if not os.path.isfile(os.path.join(reference_code, "controller", "policy", "dexgraspvla_controller.py")):
        raise SystemExit(f"--reference-code {reference_code!r} is not a checkout of the original DexGraspVLA "
                         f"(no controller/policy/dexgraspvla_controller.py)")
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "controller" or k.startswith("controller.")}
    stand_in = {}
    try:
        import einops  # noqa: F401
    except ImportError:
        stand_in = _einops_stand_in()
        sys.modules.update(stand_in)
    finder = _OriginalFinder(os.path.abspath(reference_code))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for k in stand_in:
            sys.modules.pop(k, None)
        for k in [k for k in sys.modules if k == "controller" or k.startswith("controller.")]:
            sys.modules[f"{ALIAS}.{k}"] = sys.modules.pop(k)
        sys.modules.update(ours)


@contextlib.contextmanager
def local_dinov2_hub(dinov2_code: str):
    """``torch.hub.load('facebookresearch/dinov2', name, ...)`` -> the local checkout, random weights."""
    if not os.path.isfile(os.path.join(dinov2_code, "hubconf.py")):
        raise SystemExit(f"--dinov2-code {dinov2_code!r} is not a checkout of facebookresearch/dinov2 (no hubconf.py)")
    real = torch.hub.load

    def load(repo_or_dir, model, *args, **kwargs):
        if repo_or_dir != "facebookresearch/dinov2":
            raise RuntimeError(f"the original asked torch.hub for {repo_or_dir!r}; only DINOv2 is served locally")
        return real(os.path.abspath(dinov2_code), model, source="local", pretrained=False)

    torch.hub.load = load
    os.environ.setdefault("XFORMERS_DISABLED", "1")  # as on a CPU machine: DINOv2's SDPA attention
    try:
        yield
    finally:
        torch.hub.load = real


def original_paper_config(reference_code: str) -> Dict[str, Any]:
    """The policy section of the original's own config files (its paper configuration), resolved."""
    from omegaconf import OmegaConf
    cdir = os.path.join(reference_code, "controller", "config")
    cfg = OmegaConf.load(os.path.join(cdir, "train_dexgraspvla_controller_workspace.yaml"))
    cfg.task = OmegaConf.load(os.path.join(cdir, "task", "grasp.yaml"))
    return OmegaConf.to_container(cfg.policy, resolve=True)


def build_original(reference_code: str, dinov2_code: str, conf: Dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The original's DexGraspVLAController as its config describes it, random weights, eval mode."""
    import diffusers
    with original_namespace(reference_code), local_dinov2_hub(dinov2_code):
        from controller.model.vision.obs_encoder import ObsEncoder
        from controller.policy.dexgraspvla_controller import DexGraspVLAController
        torch.manual_seed(seed)
        sched = dict(conf["noise_scheduler"])
        sched_cls = getattr(diffusers, sched.pop("_target_").rsplit(".", 1)[1])
        enc = dict(conf["obs_encoder"])
        encoder = ObsEncoder(shape_meta=enc["shape_meta"], model_config=enc["model_config"])
        kwargs = {k: v for k, v in conf.items()
                  if k not in ("_target_", "shape_meta", "noise_scheduler", "obs_encoder")}
        policy = DexGraspVLAController(shape_meta=conf["shape_meta"], noise_scheduler=sched_cls(**sched),
                                       obs_encoder=encoder, **kwargs)
    return policy.eval()


# ---------------------------------------------------------------------------- ours, same tensors
def ours_from_original(original: torch.nn.Module, overrides=()) -> torch.nn.Module:
    """Our paper-preset policy holding the original's tensors (mapped as the converter maps them)."""
    from controller.common.registry import instantiate
    from controller.reference_format import map_model_state
    from tests.controller.conftest import compose_cfg
    cfg = compose_cfg(["policy=paper", *overrides])
    policy = instantiate(cfg.policy, trusted=True)
    target = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    mapped, km = map_model_state(original.state_dict(), target)
    policy.normalizer.load_state_dict({k[len("normalizer."):]: v for k, v in mapped.items()
                                       if k.startswith("normalizer.")})
    policy.load_state_dict(mapped, strict=True)
    policy.mapping_counts = km.counts()
    return policy.eval()


def paper_obs(size: int = 518, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgbm = torch.rand(1, 1, 4, size, size, generator=g)
    rgbm[:, :, 3] = (rgbm[:, :, 3] > 0.7).float()
    return {"rgbm": rgbm, "right_cam_img": torch.rand(1, 1, 3, size, size, generator=g),
            "right_state": torch.rand(1, 1, 13, generator=g) * 2 - 1}


def _noise(shape) -> torch.Tensor:
    torch.manual_seed(NOISE_SEED)
    return torch.randn(shape)


def run_original(policy, obs):
    torch.manual_seed(NOISE_SEED)  # its conditional_sample draws the initial noise with torch.randn
    t = time.perf_counter()
    with torch.no_grad():
        actions = policy.predict_action(obs)
    return time.perf_counter() - t, actions


def run_ours(policy, obs):
    noise = _noise((1, policy.action_horizon, policy.action_dim))
    t = time.perf_counter()
    with torch.inference_mode():
        actions = policy.predict_action(obs, noise=noise)
    return time.perf_counter() - t, actions.clone()


# ---------------------------------------------------------------------------- child processes
def child_main(args) -> None:
    """One implementation in this process: build, load ``--weights``, then predict one chunk per
    ``chunk`` line on stdin (answering ``CHUNK {seconds, actions}``) until ``end``; then ``RESULT``
    with the peak RSS (load / predicting) and the RSS after each stage."""
    stages = [("started", proc_status_gb("VmRSS"))]
    obs = paper_obs()
    chunk_s = []
    if args.child == "original":
        import dill
        conf = json.loads(args.config)
        policy = build_original(args.reference_code, args.dinov2_code, conf)
        stages.append(("built (random weights)", proc_status_gb("VmRSS")))
        # BaseWorkspace.load_checkpoint: torch.load(..., pickle_module=dill) then load_payload
        payload = torch.load(open(args.weights, "rb"), pickle_module=dill, weights_only=False, map_location="cpu")
        policy.load_state_dict(payload["state_dicts"]["model"])
        del payload
        stages.append(("weights loaded", proc_status_gb("VmRSS")))
        run = lambda: run_original(policy, obs)  # noqa: E731
    else:
        sys.path.insert(0, REPO)
        from controller.policy.chunk_runner import ChunkPolicy
        cp = ChunkPolicy.from_checkpoint(args.weights, precision="fp32", compile=args.child == "ours-compiled")
        stages.append(("built + weights loaded", proc_status_gb("VmRSS")))
        run = lambda: run_ours(cp.policy, obs)  # noqa: E731
    peak_load, reset = proc_status_gb("VmHWM"), reset_peak_rss()
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "chunk":
            break
        dt, actions = run()
        chunk_s.append(dt)
        note = " (compiles)" if args.child == "ours-compiled" and len(chunk_s) == 1 else ""
        stages.append((f"chunk {len(chunk_s)}{note}", proc_status_gb("VmRSS")))
        print("CHUNK " + json.dumps({"s": dt, "actions": actions.float().tolist()}), flush=True)
    peak_predict = proc_status_gb("VmHWM")
    print("RESULT " + json.dumps({"which": args.child, "peak_rss_gb": max(peak_load, peak_predict),
                                  "peak_build_load_gb": peak_load,
                                  "peak_predict_gb": peak_predict if reset else None,
                                  "stages": stages, "chunk_s": chunk_s}), flush=True)


class Worker:
    """One implementation in a child process of its own (:func:`child_main`), driven chunk by chunk."""

    def __init__(self, which: str, weights: str, args, conf: Dict[str, Any]) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", which, "--weights", weights,
               "--reference-code", args.reference_code, "--dinov2-code", args.dinov2_code,
               "--config", json.dumps(conf)]
        print(f"  child process: {which}: loading ...", flush=True)
        self.which = which
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO)
        self._read("READY")

    def _read(self, tag: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line[len(tag):].strip()
        err = self.proc.stderr.read()
        raise RuntimeError(f"child {self.which} ended before '{tag}' (exit {self.proc.wait()}):\n{err[-3000:]}")

    def chunk(self) -> tuple[float, torch.Tensor]:
        """Predict one chunk in the child: (seconds, actions)."""
        self.proc.stdin.write("chunk\n")
        self.proc.stdin.flush()
        out = json.loads(self._read("CHUNK "))
        return out["s"], torch.tensor(out["actions"])

    def finish(self) -> Dict[str, Any]:
        """Stop the child; its peak RSS and per-stage RSS."""
        self.proc.stdin.write("end\n")
        self.proc.stdin.flush()
        out = json.loads(self._read("RESULT "))
        self.proc.wait()
        print(f"  child process: {self.which}: peak RSS {out['peak_rss_gb']:.2f} GB", flush=True)
        return out


# ---------------------------------------------------------------------------- the comparison
def _rows(times: Dict[str, List[float]], actions: Dict[str, torch.Tensor], compile_s) -> List[Dict[str, Any]]:
    base = actions["original"].float()
    rows = []
    for name in times:
        med = statistics.median(times[name])
        paired = [o / x for o, x in zip(times["original"], times[name])]
        rows.append({"row": name, "chunk_s": med, "runs_s": times[name],
                     "speedup_vs_original": statistics.median(times["original"]) / med,
                     "speedup_paired_median": statistics.median(paired),
                     "max_abs_diff_vs_original": float((actions[name].float() - base).abs().max()),
                     "compile_s": compile_s if name == "ours, compiled" else None})
    return rows


def _alternate(runners: Dict[str, Any], repeats: int, warmup: bool):
    """Warm-up round (if asked), then ``repeats`` rounds of one chunk per runner in turn."""
    times: Dict[str, List[float]] = {k: [] for k in runners}
    actions: Dict[str, torch.Tensor] = {}
    first: Dict[str, float] = {}
    if warmup:
        for name, run in runners.items():
            first[name], actions[name] = run()
    for r in range(repeats):
        for name, run in runners.items():
            dt, a = run()
            times[name].append(dt)
            actions.setdefault(name, a)
            print(f"  round {r}: {name}: {dt:.2f} s", flush=True)
    return times, actions, first


def side_by_side(reference_code: str, dinov2_code: str, repeats: int = 3, warmup: bool = True,
                 rss_chunks: int = 2, compile_row: bool = False, rss: bool = True,
                 same_process: bool = False) -> Dict[str, Any]:
    """Build both from the same tensors; time them alternately and compare actions; peak RSS.

    Default: each implementation in a child process of its own, loaded as it deploys (the original
    from its dill payload, ours with ``ChunkPolicy.from_checkpoint``), the children alive together
    and driven one chunk each per round. ``same_process``: both in this process (the original's
    modules under an alias), then separate children for peak RSS only.
    """
    args = argparse.Namespace(reference_code=os.path.abspath(reference_code), dinov2_code=os.path.abspath(dinov2_code))
    conf = original_paper_config(args.reference_code)
    t = time.perf_counter()
    original = build_original(args.reference_code, args.dinov2_code, conf)
    # our modules only now: the original's imports run with its own ``controller`` package in place
    import dill
    from controller.workspace.checkpoint import save_checkpoint
    from tests.controller.conftest import compose_cfg, fitted_normalizer
    original.normalizer.load_state_dict(fitted_normalizer().state_dict())
    ours = ours_from_original(original)
    build_s = time.perf_counter() - t
    obs = paper_obs(int(conf["shape_meta"]["obs"]["rgbm"]["shape"][-1]))
    result = {"config": {k: conf[k] for k in ("num_inference_steps", "n_layer", "n_head")},
              "image_size": int(conf["shape_meta"]["obs"]["rgbm"]["shape"][-1]),
              "backbones": {k: v["model_type"] for k, v in conf["obs_encoder"]["model_config"].items()},
              "mapping": ours.mapping_counts, "build_s": build_s, "threads": torch.get_num_threads(),
              "repeats": repeats, "mode": "one process" if same_process else "one process per implementation",
              "rss": None}
    compile_s = None
    if same_process:
        runners = {"original": lambda: run_original(original, obs), "ours, eager": lambda: run_ours(ours, obs)}
        if compile_row:
            import copy
            twin = copy.deepcopy(ours)
            twin.compile_for_inference()
            compile_s = run_ours(twin, obs)[0]
            runners["ours, compiled"] = lambda: run_ours(twin, obs)
        times, actions, _ = _alternate(runners, repeats, warmup)
        result["rows"] = _rows(times, actions, compile_s)
        del runners
        if compile_row:
            del twin
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        ref_file = os.path.join(tmp, "original.ckpt")
        torch.save({"cfg": None, "state_dicts": {"model": original.state_dict()}, "pickles": {}},
                   ref_file, pickle_module=dill)
        ours_dir = save_checkpoint(os.path.join(tmp, "ours"), ours, cfg=compose_cfg(["policy=paper"]))
        del original, ours
        import gc
        gc.collect()
        children = [("original", "original", ref_file), ("ours, eager", "ours", ours_dir)] + (
            [("ours, compiled", "ours-compiled", ours_dir)] if compile_row else [])
        if same_process:
            if rss:  # one child at a time, rss_chunks chunks each
                result["rss"] = {}
                for _, which, path in children:
                    w = Worker(which, path, args, conf)
                    for _ in range(max(1, rss_chunks)):
                        w.chunk()
                    result["rss"][which] = w.finish()
            return result
        workers = {row: Worker(which, path, args, conf) for row, which, path in children}
        runners = {row: w.chunk for row, w in workers.items()}
        times, actions, first = _alternate(runners, repeats, warmup)
        if compile_row and "ours, compiled" in first:
            compile_s = first["ours, compiled"]
        result["rows"] = _rows(times, actions, compile_s)
        result["rss"] = {which: workers[row].finish() for row, which, _ in children}
    return result


def print_side_by_side(res: Dict[str, Any]) -> None:
    print(f"\n### side by side with the original DexGraspVLA ({res['image_size']} px, backbones "
          f"{res['backbones']['head']} + {res['backbones']['wrist']}, DiT {res['config']['n_layer']} layers, "
          f"{res['config']['num_inference_steps']} DDIM steps, batch 1, fp32, {res['threads']} threads, "
          f"{res['repeats']} alternated rounds)")
    print(f"{'implementation':18s} {'chunk s':>8s} {'x orig':>7s} {'x paired':>9s} {'max|d| actions':>15s} "
          f"{'peak RSS GB':>12s}")
    names = {"original": "original", "ours, eager": "ours", "ours, compiled": "ours-compiled"}
    for r in res["rows"]:
        child = (res.get("rss") or {}).get(names[r["row"]])
        extra = f"  (one-off compile {r['compile_s']:.0f} s)" if r.get("compile_s") else ""
        print(f"{r['row']:18s} {r['chunk_s']:8.2f} {r['speedup_vs_original']:7.2f} {r['speedup_paired_median']:9.2f} "
              f"{r['max_abs_diff_vs_original']:15.2e} {child['peak_rss_gb'] if child else float('nan'):12.2f}{extra}")
    for which, child in (res.get("rss") or {}).items():
        split = (f" (building + loading {child['peak_build_load_gb']:.2f}, predicting {child['peak_predict_gb']:.2f})"
                 if child.get("peak_predict_gb") is not None else "")
        print(f"RSS GB by stage, {which}: " + ", ".join(f"{s} {gb:.2f}" for s, gb in child["stages"])
              + f"; peak {child['peak_rss_gb']:.2f}{split}")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--reference-code", default=None,
                    help="checkout of the original DexGraspVLA (github.com/Psi-Robot/DexGraspVLA): adds the side-by-side row")
    ap.add_argument("--dinov2-code", default=None,
                    help="checkout of facebookresearch/dinov2 (the original's torch.hub DINOv2, loaded locally)")
    ap.add_argument("--rss-chunks", type=int, default=2, help="chunks each peak-RSS child process predicts")
    ap.add_argument("--no-reference-rss", action="store_true",
                    help="with --same-process: skip the peak-RSS child processes")
    ap.add_argument("--same-process", action="store_true",
                    help="time both implementations in this one process (default: one child process each, alternated)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also ours under compile_for_inference")
    ap.add_argument("--quick", action="store_true", help="1 round, no warm-up")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    ap.add_argument("--child", choices=["original", "ours", "ours-compiled"], help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)
    if not (args.reference_code and args.dinov2_code):
        ap.error("--reference-code and --dinov2-code are required")
    sys.path.insert(0, REPO)
    repeats, warmup = (1, False) if args.quick else (max(1, args.repeats), True)
    res = side_by_side(args.reference_code, args.dinov2_code, repeats, warmup, args.rss_chunks, args.compile,
                       rss=not args.no_reference_rss, same_process=args.same_process)
    res.update(torch=torch.__version__, cpu_count=os.cpu_count(), load_avg=os.getloadavg())
    print_side_by_side(res)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"reference_side_by_side_{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
