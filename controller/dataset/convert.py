"""Convert a dataset between formats: ``python -m controller.dataset.convert SRC DST [options]``.

SRC's format is detected from its structure (zarr store, directory of ACT/DexVLA HDF5 episodes,
LeRobot v3.0 directory, deployment recordings); DST's from ``--to`` or its name: ``*.zarr`` ->
zarr, ``*.hdf5`` / ``*.h5`` / ``*_h5`` / ``*_hdf5`` -> act_h5, ``*_lerobot`` / ``*.lerobot`` ->
lerobot, anything else is an error asking for ``--to``. Language instructions and per-step
reasoning strings are carried over when the source has them.

DST is never replaced without ``--overwrite``, and a failed conversion leaves nothing at DST (the
writer works on a temporary path renamed onto DST at the end).

Mask channel of ``rgbm`` for sources without our target mask (``--mask``):

* ``zeros`` (default): an empty mask;
* ``from-key --mask-key K``: the source's mask image/column K;
* ``segment``: the offline planner's box for the episode's language instruction (or
  ``--mask-box x0 y0 x1 y1``), GrabCut on the first head frame and the flow tracker on the rest
  (sources that have a mask, like our zarr stores, get it recomputed).

Examples::

    python -m controller.dataset.convert data/sim.zarr data/sim_h5 --to act_h5
    python -m controller.dataset.convert aloha_h5/ data/aloha.zarr --camera-map head=top wrist=cam_right_wrist \\
        --mask segment --mask-box 200 150 320 260
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

FORMATS = ("zarr", "lerobot", "act_h5")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (imports nothing heavy: ``--help`` stays fast)."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags

    p = cli_common.ArgumentParser(prog="python -m controller.dataset.convert", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="source dataset (format detected)")
    p.add_argument("dst", help="destination (must not exist unless --overwrite)")
    p.add_argument("--to", choices=FORMATS, help="destination format (default: from DST's name)")
    p.add_argument("--camera-map", nargs="+", metavar="ROLE=NAME", default=[],
                   help="source camera per role, e.g. head=top wrist=cam_right_wrist (default: the reader's)")
    p.add_argument("--state-keys", nargs="+", metavar="K", default=[],
                   help="source columns concatenated into right_state (default: the reader's)")
    p.add_argument("--action-keys", nargs="+", metavar="K", default=[],
                   help="source columns concatenated into action (default: the reader's)")
    p.add_argument("--mask", choices=("zeros", "from-key", "segment"), default="zeros",
                   help="target-mask channel for sources without one (default zeros)")
    p.add_argument("--mask-key", help="source mask image/column for --mask from-key")
    p.add_argument("--mask-box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="head-image box of the target for --mask segment (default: from each episode's language)")
    p.add_argument("--fps", type=float, help="frame rate written to DST (default: the source's, else 20)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST once the new one is complete")
    p.add_argument("--episodes", type=int, metavar="N", help="convert only the first N episodes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit code (0 done, 2 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    from controller.dataset.convert_core import convert, parse_camera_map  # noqa: PLC0415
    from controller.dataset.errors import DatasetError  # noqa: PLC0415
    from controller.dataset.formats import SourceOptions  # noqa: PLC0415

    try:
        options = SourceOptions(camera_map=parse_camera_map(args.camera_map), state_keys=tuple(args.state_keys),
                                action_keys=tuple(args.action_keys), mask=args.mask, mask_key=args.mask_key)
        s = convert(args.src, args.dst, to=args.to, options=options, mask_box=args.mask_box, fps=args.fps,
                    overwrite=args.overwrite, episodes=args.episodes, progress=not args.no_progress)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"nothing written to {args.dst}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing written to {args.dst}", file=sys.stderr)
        return 130
    mask = "" if args.mask == "zeros" else f", mask {args.mask}" + (f" {args.mask_key}" if args.mask_key else "")
    print(f"wrote {s['episodes']} episodes / {s['steps']} steps ({s['with_language']} with language, "
          f"{s['with_reasoning']} with reasoning{mask}) from {s['src']} ({s['src_format']}) "
          f"to {s['dst']} ({s['dst_format']}, {s['fps']:g} fps) in {s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
