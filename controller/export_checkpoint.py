"""Export a training checkpoint as a compact deployment checkpoint.

Usage::

    python -m controller.export_checkpoint outputs/run/checkpoints/latest assets/controller_small_sim

A training checkpoint holds the raw weights, the EMA weights, the optimiser/RNG state and the
config. The export keeps what deployment needs: one ``model.safetensors`` (the EMA weights merged
in by default, ``--no-ema`` keeps the raw ones), ``config.yaml``, ``normalizer.json`` and a
``meta.json`` that records the source, the weights used and the SHA-256 of each of the three
files (``meta["sha256"]``; :func:`controller.policy.loading.load_policy` checks them, so a
checkpoint whose weights, config or normaliser were edited after export is refused). The source
config is checked before anything is written: a ``_target_`` that is not a registered class, a
code key (``_args_``, ``_partial_``, ``_call_``...) or a resolver interpolation fails the export. The
exported ``config.yaml`` is the run's config with ``training.resume`` switched off (a deployment
checkpoint has no optimiser state to resume from; fine-tune from it with
``policy.start_ckpt_path``). The
directory is written atomically and loads with :func:`controller.policy.loading.load_policy` or
``ChunkPolicy.from_checkpoint`` like any checkpoint. ``--max-mb`` fails the export when the weight
file would exceed a size budget (the repository ships checkpoints of at most 50 MB).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, Optional

# torch, safetensors and omegaconf are imported by the functions that need them, so that
# ``python -m controller.export_checkpoint --help`` answers at once.

#: The files whose SHA-256 an exported checkpoint records in ``meta.json["sha256"]``
#: (controller.workspace.checkpoint's MODEL_FILE, CONFIG_FILE, NORMALIZER_FILE).
HASHED_FILES = ("model.safetensors", "config.yaml", "normalizer.json")


def export_checkpoint(src: str, dst: str, use_ema: bool = True, max_mb: Optional[float] = None,
                      note: Optional[str] = None) -> Dict[str, Any]:
    """Write the deployment checkpoint ``dst`` from the training checkpoint ``src``; returns its meta."""
    from omegaconf import OmegaConf  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    from controller.common.registry import UnsafeConfigError, check_config  # noqa: PLC0415
    from controller.policy.loading import check_targets  # noqa: PLC0415
    from controller.workspace.checkpoint import (CONFIG_FILE, EMA_FILE, FORMAT, META_FILE, MODEL_FILE,  # noqa: PLC0415
                                                 NORMALIZER_FILE, CheckpointError, atomic_write_dir, read_meta,
                                                 read_normalizer, read_safetensors, resolve_checkpoint_dir)
    from controller.workspace.integrity import file_sha256  # noqa: PLC0415

    assert HASHED_FILES == (MODEL_FILE, CONFIG_FILE, NORMALIZER_FILE), "HASHED_FILES out of date"
    src = resolve_checkpoint_dir(src)
    model_path = os.path.join(src, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise CheckpointError(f"'{model_path}' is missing: '{src}' is not a controller checkpoint")
    for name in (CONFIG_FILE, NORMALIZER_FILE):
        if not os.path.isfile(os.path.join(src, name)):
            raise CheckpointError(f"'{os.path.join(src, name)}' is missing: cannot export '{src}'")
    read_normalizer(src)  # a malformed normalizer.json fails here, naming the entry, not at deployment
    weights = read_safetensors(model_path)
    ema_path = os.path.join(src, EMA_FILE)
    merged = 0
    if use_ema:
        if not os.path.isfile(ema_path):
            raise CheckpointError(f"'{ema_path}' is missing: the run was trained without EMA "
                                  f"(export with --no-ema to ship the raw weights)")
        ema = read_safetensors(ema_path)
        unknown = sorted(set(ema) - set(weights))
        if unknown:
            raise CheckpointError(f"'{ema_path}' has keys the model lacks: {', '.join(unknown[:5])}")
        weights.update(ema)
        merged = len(ema)
    size_mb = sum(t.numel() * t.element_size() for t in weights.values()) / 2 ** 20
    if max_mb is not None and size_mb > max_mb:
        raise CheckpointError(f"exported weights would be {size_mb:.1f} MB, over the --max-mb budget of {max_mb} MB")
    src_meta = read_meta(src)
    meta = {"format": FORMAT, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "exported_from": src,
            "weights": "ema" if use_ema else "raw", "ema_tensors_merged": merged, "has_ema": False,
            "frozen_backbones_saved": src_meta.get("frozen_backbones_saved", True),
            "source_meta": src_meta}
    if note:
        meta["note"] = note

    cfg_path = os.path.join(src, CONFIG_FILE)
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as exc:  # noqa: BLE001 - yaml/omegaconf raise many kinds
        raise CheckpointError(f"'{cfg_path}' is not a readable config: {exc}") from exc
    if "policy" not in cfg:
        raise CheckpointError(f"'{cfg_path}' has no 'policy' section")
    try:  # the whole file may name registered classes only; its policy section policy parts only
        check_config(cfg, where=CONFIG_FILE)
    except UnsafeConfigError as exc:
        raise CheckpointError(f"refusing to export '{src}': {exc}") from exc
    check_targets(cfg.policy, where=f"{CONFIG_FILE}: policy")
    if OmegaConf.select(cfg, "training") is not None:  # no optimiser state ships: nothing to resume
        OmegaConf.update(cfg, "training.resume", False, force_add=True)
        OmegaConf.update(cfg, "training.resume_from", None, force_add=True)

    def write(tmp: str) -> None:
        save_file(weights, os.path.join(tmp, MODEL_FILE), metadata={"format": FORMAT})
        OmegaConf.save(cfg, os.path.join(tmp, CONFIG_FILE))
        shutil.copyfile(os.path.join(src, NORMALIZER_FILE), os.path.join(tmp, NORMALIZER_FILE))
        meta["sha256"] = {name: file_sha256(os.path.join(tmp, name)) for name in HASHED_FILES}
        meta["model_sha256"] = meta["sha256"][MODEL_FILE]  # kept for readers of the older field
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, default=str)

    atomic_write_dir(dst, write)
    meta["size_mb"] = round(size_mb, 2)
    return meta


def main(argv: Optional[list] = None) -> int:
    """Entry point of ``python -m controller.export_checkpoint``."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    p = cli_common.ArgumentParser(prog="python -m controller.export_checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("src", help="training checkpoint directory (e.g. <run>/checkpoints/latest)")
    p.add_argument("dst", help="output directory (replaced atomically)")
    p.add_argument("--no-ema", action="store_true", help="ship the raw weights instead of the EMA weights")
    p.add_argument("--max-mb", type=float, default=None, help="fail if the weight file would be larger")
    p.add_argument("--note", default=None, help="free text stored in meta.json (e.g. the training command)")
    args = p.parse_args(argv)
    from controller.workspace.checkpoint import CheckpointError  # noqa: PLC0415 - after parsing: --help stays fast

    try:
        meta = export_checkpoint(args.src, args.dst, use_ema=not args.no_ema, max_mb=args.max_mb, note=args.note)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {meta['weights']} weights ({meta['size_mb']} MB) from {meta['exported_from']} to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
