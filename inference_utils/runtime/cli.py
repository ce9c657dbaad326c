"""Command line of ``inference.py``: reference-style flags plus Hydra overrides.

Examples::

    python inference.py --prompt "clear the table" --non-interactive controller.type=expert
    python inference.py --manual --bbox 300,200,380,260 controller.checkpoint=ckpt/latest
    python inference.py robot=real controller.checkpoint=ckpt/latest planner.base_url=http://gpu:8000/v1 \\
        --save-deployment-data --gen-attn-map

Flags are parsed with argparse (kebab-case; the old underscore spellings such as
``--save_deployment_data`` are still accepted with a deprecation note); every other argument must
be a Hydra override ``key=value`` applied to ``inference_utils/config/inference.yaml``. Nothing
heavy (omegaconf, hydra, torch, mujoco) is imported before the arguments are parsed, so ``--help``
answers at once.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from inference_utils.cli_common import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    """The flag parser (Hydra overrides are passed through)."""
    parser = ArgumentParser(
        prog="inference.py", description="DexGraspVLA inference loop (planner + controller).",
        epilog="Any other argument is a Hydra override, e.g. robot=real controller.checkpoint=DIR "
               "planner.base_url=http://HOST:PORT/v1 sim.n_objects=[2,2] loop.max_attempts=5")
    parser.add_argument("--manual", action="store_true", help="operator marks the box; no planner")
    parser.add_argument("--save-deployment-data", action="store_true", help="write HDF5 + MP4 per attempt")
    parser.add_argument("--gen-attn-map", action="store_true", help="save controller attention maps")
    parser.add_argument("--prompt", default=None, help="user instruction (planner mode)")
    parser.add_argument("--bbox", default=None, help="manual box x1,y1,x2,y2 in head-image pixels")
    parser.add_argument("--non-interactive", "--yes", action="store_true",
                        help="never read the terminal (scripts, CI)")
    parser.add_argument("--viz", choices=("none", "rerun"), default=None,
                        help="live view: rerun streams cameras, mask, box, state, chunk and planner messages "
                             "(spawns a viewer, or saves <run dir>/live_view.rrd without a display)")
    parser.add_argument("--viz-save", default=None, metavar="PATH", help="--viz rerun: save the stream to this .rrd")
    parser.add_argument("--viz-connect", default=None, metavar="HOST:PORT",
                        help="--viz rerun: stream to a running rerun viewer there")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None, events: Sequence = ()) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run a session, return the exit code."""
    args, overrides = build_parser().parse_known_args(argv)
    # heavy imports only after parsing: --help must not pay for omegaconf / torch / mujoco
    from omegaconf import OmegaConf, open_dict  # noqa: PLC0415

    from inference_utils.runtime.config import ConfigError, compose_config  # noqa: PLC0415
    from inference_utils.runtime.session import EXIT_CONFIG, run_session  # noqa: PLC0415
    from inference_utils.stop_signals import install_stop_handlers, restore_handlers  # noqa: PLC0415

    try:
        cfg = compose_config(overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with open_dict(cfg):
        if args.manual:
            cfg.mode = "manual"
        for key in ("save_deployment_data", "gen_attn_map", "non_interactive"):
            if getattr(args, key):
                cfg[key] = True
        if args.prompt is not None:
            cfg.prompt = args.prompt
        if args.bbox is not None:
            cfg.bbox = args.bbox
        if args.viz is not None:
            cfg.viz.backend = args.viz
        elif args.viz_save is not None or args.viz_connect is not None:
            cfg.viz.backend = "rerun"  # --viz-save / --viz-connect imply --viz rerun
        if args.viz_save is not None:
            cfg.viz.save = args.viz_save
        if args.viz_connect is not None:
            cfg.viz.connect = args.viz_connect
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    previous = install_stop_handlers()  # Ctrl-C / kill -INT / kill -TERM, even if SIGINT was inherited ignored
    try:
        code, _ = run_session(cfg, events=events)
    finally:
        restore_handlers(previous)
    return code
