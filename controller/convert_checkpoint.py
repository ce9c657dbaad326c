"""Convert a checkpoint written by the original DexGraspVLA code into this project's safe format.

The original saves ``torch.save({'cfg': OmegaConf, 'state_dicts': {'model', 'ema_model'?,
'optimizer'?}, 'pickles': {...}}, pickle_module=dill)``. Loading that runs the pickle machinery,
which can execute arbitrary code, so it happens **only here, only with --trust-pickle**, and
prints a warning. The output is a checkpoint directory (``model.safetensors`` + ``config.yaml``
+ ``normalizer.json`` [+ ``ema.safetensors`` + ``training_state.pt``]) that the rest of the
project loads without unpickling anything, plus ``conversion_report.json``::

    python -m controller.convert_checkpoint REF.ckpt OUT_DIR --trust-pickle [--preset NAME]
           [--use-ema] [--with-optimizer [--num-processes N]] [--override key=value ...]

* The preset comes from the file's ``cfg`` unless ``--preset`` names one: the model fields the
  original's cfg sets (and the ones its code fixes) are compared with each preset in
  ``controller/config/policy/``; the first that matches them all is used, otherwise the closest
  one plus the differing fields as Hydra overrides (printed). A field this project cannot
  express is an error naming it. ``--override`` values are applied last.
* Every tensor is accounted for (kept, renamed, resampled, truncated or dropped, see
  :mod:`controller.reference_format`); an unknown or missing non-empty tensor is an error naming
  it. The summary is printed and the full mapping written to ``OUT_DIR/conversion_report.json``.
* ``--use-ema`` converts ``state_dicts['ema_model']`` instead of ``['model']``.
* ``--format scaledp`` converts a released DexVLA ScaleDP expert instead (``['nets']['nets']``
  -> ``OUT.safetensors`` + ``OUT.conversion_report.json``), see :mod:`controller.convert_scaledp`;
  it reads the file through :func:`load_reference_payload` below (the same ``--trust-pickle`` gate).
* ``--with-optimizer`` makes a checkpoint a training run can resume from
  (``training.resume_from=OUT_DIR``): the raw weights, ``ema_model`` (if any) as the EMA, the
  AdamW state re-keyed from the original's parameter indices to ours (by name), epoch and step.
  When the optimizer cannot be mapped exactly (or the file has none) epoch and step are carried
  with a fresh optimizer, and the report says why.
"""
from __future__ import annotations

import json
import os
import random
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from controller.reference_format import (ConversionError, NotExact, cfg_tree, config_differences,
                                         decode_pickled_scalar, ema_decay, format_summary, map_model_state,
                                         map_optimizer_state, override_key, reference_model_fields,
                                         reference_training_fields, scheduler_state)

__all__ = ["ConversionError", "convert", "load_reference_payload", "main"]

REPORT_FILE = "conversion_report.json"
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
CONFIG_NAME = "train_dexgraspvla_controller_workspace"


def load_reference_payload(path: str, trust_pickle: bool) -> Dict[str, Any]:
    """Read an original ``.ckpt``; unpickling only with ``trust_pickle``."""
    if not os.path.isfile(path):
        raise ConversionError(f"'{path}' does not exist")
    if not trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(
                f"'{path}' cannot be read without unpickling ({type(exc).__name__}). Original checkpoints "
                f"embed pickled Python objects; only if you trust where this file came from, re-run with "
                f"--trust-pickle.") from exc
    warnings.warn(f"unpickling '{path}' (--trust-pickle): this can execute code embedded in the file",
                  stacklevel=2)
    try:
        import dill as pickle_module  # the original writes with dill
    except ImportError:
        import pickle as pickle_module
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)


# ---------------------------------------------------------------------------- config
def available_presets() -> List[str]:
    """Policy presets, ``paper`` first (the original's architecture), then alphabetical."""
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONFIG_DIR, "policy")) if f.endswith(".yaml"))
    return sorted(names, key=lambda n: (n != "paper", n))


def compose_config(overrides: List[str]):
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            return compose(config_name=CONFIG_NAME, overrides=list(overrides))
    except Exception as exc:  # noqa: BLE001 - hydra raises several kinds
        raise ConversionError(f"the config does not compose with overrides {overrides}: {exc}") from exc


def choose_preset(fields: Optional[Dict[str, Any]], preset: Optional[str]) -> Tuple[str, str, List[Dict[str, Any]]]:
    """``(preset, how it was chosen, differences from the file's cfg)``."""
    names = available_presets()
    if preset is not None:
        if preset not in names:
            raise ConversionError(f"--preset '{preset}' is not one of {names}")
        diffs = config_differences(fields, compose_config([f"policy={preset}"])) if fields else []
        return preset, "--preset", diffs
    if fields is None:
        raise ConversionError("the file has no cfg to pick a preset from: pass --preset (one of "
                              f"{', '.join(names)}) and --override for any field that differs")
    best: Optional[Tuple[str, List[Dict[str, Any]]]] = None
    for name in names:
        diffs = config_differences(fields, compose_config([f"policy={name}"]))
        if best is None or len(diffs) < len(best[1]):
            best = (name, diffs)
        if not diffs:
            break
    name, diffs = best
    if not diffs:
        how = f"the file's cfg matches it in all {len(fields)} compared model fields"
    else:
        how = (f"the file's cfg fits no preset; closest: {len(diffs)} of {len(fields)} compared model fields "
               f"differ, applied as overrides")
    return name, how, diffs


# ---------------------------------------------------------------------------- training state
def rng_states(seed: int, n: int) -> List[Dict[str, Any]]:
    """Per-rank RNG states as our workspace seeds a fresh run (seed + rank): the original saves none."""
    import numpy as np

    from controller.workspace.checkpoint import capture_rng_state, restore_rng_state

    saved = capture_rng_state()
    out = []
    try:
        for rank in range(n):
            random.seed(seed + rank)
            np.random.seed(seed + rank)
            torch.manual_seed(seed + rank)
            out.append(capture_rng_state())
    finally:
        restore_rng_state(saved)
    return out


class _EmaWeights:
    """What :func:`controller.workspace.checkpoint.save_checkpoint` reads of an EMA object."""

    def __init__(self, shadow: Dict[str, torch.Tensor]) -> None:
        self.shadow = shadow

    def state_dict(self) -> Dict[str, Any]:
        return {"shadow": self.shadow}


def _pickled(payload: Dict[str, Any], key: str) -> Optional[float]:
    pickles = payload.get("pickles") or {}
    return decode_pickled_scalar(pickles[key], key) if key in pickles else None


def build_training_state(payload, policy, cfg, fields_train, km, target, num_processes: int):
    """``(training_state, report section, EMA weights or None, our optimizer)`` for ``--with-optimizer``."""
    sds = payload["state_dicts"]
    epoch, gstep = _pickled(payload, "epoch"), _pickled(payload, "global_step")
    if epoch is None or gstep is None:
        raise ConversionError("--with-optimizer needs the original's pickles['epoch'] and pickles['global_step']; "
                              f"the file has {sorted((payload.get('pickles') or {}))}")
    epoch, gstep = int(epoch), int(gstep)
    params = dict(policy.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    our_groups = [[n for n in trainable if params[n].dim() >= 2], [n for n in trainable if params[n].dim() < 2]]
    opt = policy.get_optimizer(**cfg.optimizer)
    template = opt.state_dict()
    section: Dict[str, Any] = {"epoch": epoch}
    mapped_opt, groups = None, None
    try:
        built = [[id(p) for p in g["params"]] for g in opt.param_groups]
        if built != [[id(params[n]) for n in g] for g in our_groups]:
            raise NotExact("our get_optimizer does not group parameters as >=2-D then the rest in "
                           "named_parameters() order; the state cannot be placed by name")
        if sds.get("optimizer") is None:
            raise NotExact("the file has no optimizer state: the original saves it only when the run had "
                           "training.resume=true (otherwise its workspace sets exclude_keys=['optimizer'])")
        shapes = {n: tuple(params[n].shape) for n in trainable}
        mapped_opt, info = map_optimizer_state(sds["optimizer"], sds["model"], km, our_groups, template, shapes)
        groups = mapped_opt["param_groups"]
        section["optimizer"] = {"status": f"AdamW state mapped by name: {info['with_state']} of {info['parameters']} "
                                          f"parameters carry moments", "groups": info["groups"]}
        steps_seen = info["adam_steps"]
    except NotExact as exc:
        section["optimizer"] = {"status": "NOT carried (epoch and step only; Adam moments restart at zero)",
                                "reason": str(exc)}
        steps_seen = []
    if len(steps_seen) == 1:
        steps = steps_seen[0]
        section["global_step_source"] = "AdamW step count"
        if steps != gstep + 1:
            section["note"] = (f"the original's pickled global_step {gstep} + 1 != AdamW steps {steps} "
                               f"(gradient accumulation?); the AdamW count is used")
    else:
        steps = gstep + 1
        section["global_step_source"] = ("the original's global_step + 1: it saves before counting an "
                                         "epoch's last batch")
    section["global_step"] = steps
    sched = scheduler_state(steps, groups, len(template["param_groups"]))
    ema_state, ema_weights = None, None
    if sds.get("ema_model") is not None:
        ema_mapped, _ = map_model_state(sds["ema_model"], target, source="ema_model")
        shadow = {n: ema_mapped[n].detach().float().contiguous().clone() for n in trainable}
        ema_state = {"shadow": shadow, "optimization_step": gstep + 1,
                     "decay": ema_decay(gstep, fields_train)}
        ema_weights = _EmaWeights(shadow)
        section["ema"] = (f"state_dicts['ema_model'] -> ema.safetensors ({len(shadow)} trainable tensors), "
                          f"optimization_step {gstep + 1}")
    seed = int(fields_train.get("training.seed", cfg.training.seed))
    state = {"epoch": epoch, "global_step": steps, "optimizer": mapped_opt if mapped_opt is not None else template,
             "lr_scheduler": sched, "ema": ema_state, "rng": rng_states(seed, num_processes),
             "mid_epoch": None}  # the original saves at epoch boundaries only
    section["lr_scheduler"] = (f"positioned after {steps} steps" + (" with the original's base lr"
                                                                   if "base_lrs" in sched else "")
                               + " (the original never saves its scheduler)")
    section["rng"] = f"seeded {seed}+rank for {num_processes} process(es) (the original saves no RNG state)"
    return state, section, ema_weights, opt


# ---------------------------------------------------------------------------- convert
def convert(ref_path: str, out_dir: str, trust_pickle: bool = False, preset: Optional[str] = None,
            use_ema: bool = False, extra_overrides: Optional[List[str]] = None, with_optimizer: bool = False,
            num_processes: int = 1) -> Dict[str, Any]:
    """Convert ``ref_path`` into a checkpoint directory ``out_dir``; returns the report (also
    written to ``out_dir/conversion_report.json``)."""
    from controller.policy.loading import build_policy
    from controller.workspace.checkpoint import (CheckpointError, discard_dir, load_policy_weights,
                                                 load_training_state, save_checkpoint)

    if with_optimizer and use_ema:
        raise ConversionError("--with-optimizer converts the raw weights (training continues from them) and "
                              "carries ema_model as the EMA by itself; drop --use-ema")
    if num_processes < 1:
        raise ConversionError(f"--num-processes must be >= 1, got {num_processes}")
    payload = load_reference_payload(ref_path, trust_pickle)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dicts"), dict):
        raise ConversionError(f"'{ref_path}' is not a reference checkpoint: expected a dict with 'state_dicts', "
                              f"got {type(payload).__name__} with keys "
                              f"{list(payload)[:8] if isinstance(payload, dict) else '-'}")
    sds = payload["state_dicts"]
    key = "ema_model" if use_ema else "model"
    if sds.get(key) is None:
        hint = " (the original saves it only when the run had training.use_ema=true)" if use_ema else ""
        raise ConversionError(f"'{ref_path}': state_dicts has no '{key}'{hint}; it has {sorted(sds)}")
    tree = cfg_tree(payload.get("cfg"))
    fields = reference_model_fields(tree) if tree is not None else None
    name, how, diffs = choose_preset(fields, preset)
    user = list(extra_overrides or [])
    user_keys = {override_key(o) for o in user}
    cfg_overrides = [d["override"] for d in diffs if d["field"] not in user_keys]
    compose_overrides = [f"policy={name}"] + cfg_overrides + user
    cfg = compose_config(compose_overrides)
    train_fields, train_overrides = {}, []
    if with_optimizer and tree is not None:
        train_fields = reference_training_fields(tree)
        train_overrides = [d["override"] for d in config_differences(train_fields, cfg)
                           if d["field"] not in user_keys]
        if train_overrides:
            cfg = compose_config(compose_overrides + train_overrides)
    try:
        policy = build_policy(cfg.policy, skip_backbone_weights=True, where="converted config: policy")
    except (CheckpointError, ValueError, TypeError) as exc:
        raise ConversionError(f"preset '{name}' with overrides {compose_overrides[1:]} does not build: {exc}") from exc
    target = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    try:
        mapped, km = map_model_state(sds[key], target, source=key)
    except ConversionError as exc:
        raise ConversionError(f"{exc} (config: preset '{name}', overrides {compose_overrides[1:]})") from exc
    try:
        policy.normalizer.load_state_dict({k[len("normalizer."):]: v for k, v in mapped.items()
                                           if k.startswith("normalizer.")})
        policy.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise ConversionError(f"state_dicts['{key}'] does not load into the model: {exc}") from exc

    report: Dict[str, Any] = {
        "source": os.path.abspath(ref_path), "source_bytes": os.path.getsize(ref_path),
        "output": os.path.abspath(out_dir), "report_path": os.path.join(os.path.abspath(out_dir), REPORT_FILE),
        "weights": key, "unused_state_dicts": sorted(k for k in sds if k != key and sds[k] is not None
                                                     and not (with_optimizer and k in ("optimizer", "ema_model"))),
        "original_run": {k: _pickled(payload, k) for k in ("epoch", "global_step")
                         if k in (payload.get("pickles") or {})},
        "preset": {"name": name, "chosen_by": how, "compared_fields": len(fields or {}), "differences": diffs},
        "cfg_overrides": cfg_overrides, "user_overrides": user, "compose_overrides": compose_overrides,
        "mapping": km.as_dict(), "training_state": None, "notes": [],
    }
    if tree is None:
        report["notes"].append("the file has no cfg: the model settings come from --preset and --override only")
    state, ema_weights, opt = None, None, None
    if with_optimizer:
        state, section, ema_weights, opt = build_training_state(payload, policy, cfg, train_fields, km, target,
                                                                num_processes)
        section["train_overrides"] = train_overrides
        report["training_state"] = section
    meta = {"converted_from": os.path.abspath(ref_path), "overrides": compose_overrides, "weights": key,
            "preset": name}
    if state is not None:
        meta.update(epoch=state["epoch"], global_step=state["global_step"])
    save_checkpoint(out_dir, policy, cfg=cfg, ema=ema_weights, training_state=state, meta=meta)
    try:  # what the loaders and the resume path will do, once, here
        load_policy_weights(policy, out_dir, use_ema=ema_weights is not None)
        if state is not None:
            loaded = load_training_state(out_dir)
            opt.load_state_dict(loaded["optimizer"])
            torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0).load_state_dict(loaded["lr_scheduler"])
    except (CheckpointError, ValueError, KeyError, RuntimeError) as exc:
        discard_dir(out_dir)
        raise ConversionError(f"the converted checkpoint does not load back: {exc}") from exc
    with open(report["report_path"], "w") as f:
        json.dump(report, f, indent=2, default=str)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    ap = cli_common.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref_ckpt", help="checkpoint (.ckpt) written by the original DexGraspVLA code")
    ap.add_argument("out_dir", help="output checkpoint directory")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow unpickling the original file (it can execute code: trusted files only)")
    ap.add_argument("--preset", default=None,
                    help="policy preset the weights fit (default: picked from the file's cfg)")
    ap.add_argument("--use-ema", action="store_true", help="convert the EMA weights (state_dicts['ema_model'])")
    ap.add_argument("--with-optimizer", action="store_true",
                    help="also carry optimizer state, epoch and step so training.resume_from=OUT_DIR continues the run")
    ap.add_argument("--num-processes", type=int, default=1,
                    help="with --with-optimizer: processes the resumed run will use (one RNG state each)")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override, applied last (repeatable)")
    ap.add_argument("--format", choices=("dexgraspvla", "scaledp"), default="dexgraspvla",
                    help="dexgraspvla: an original DexGraspVLA .ckpt -> checkpoint dir; scaledp: a released "
                         "DexVLA ScaleDP .ckpt (['nets']['nets']) -> OUT.safetensors of the expert")
    ap.add_argument("--num-heads", type=int, default=None,
                    help="--format scaledp: attention heads (default: DexVLA's for the preset widths)")
    ap.add_argument("--drop-cond-obs-emb", action="store_true",
                    help="--format scaledp: drop cond_obs_emb as DexVLA's stage-2 loader does")
    ap.add_argument("--nets-key", default="nets", help="--format scaledp: the state dict at ['nets'][KEY]")
    args = ap.parse_args(argv)
    if args.format == "scaledp":
        from controller.convert_scaledp import convert_scaledp, format_scaledp_summary
        try:
            report = convert_scaledp(args.ref_ckpt, args.out_dir, args.trust_pickle, args.num_heads,
                                     args.drop_cond_obs_emb, args.nets_key)
        except ConversionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(format_scaledp_summary(report))
        return 0
    try:
        report = convert(args.ref_ckpt, args.out_dir, args.trust_pickle, args.preset, args.use_ema, args.override,
                         args.with_optimizer, args.num_processes)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
