"""Random-access samples/s of a LeRobot v3.0 dataset: our reader against the `lerobot` package's.

Run each side with its own interpreter on the same directory and the same indices (seeded):

    .venv/bin/python scripts/lerobot_loading_speed.py ours DIR --samples 60 --repeat 1
    /tmp/lerobot-venv/bin/python scripts/lerobot_loading_speed.py lerobot DIR --backend torchcodec

``ours`` reads every camera frame (head, its mask video if any, wrist) and the state/action of each
sample through ``controller.dataset.formats.open_source``; ``lerobot`` calls ``LeRobotDataset[i]``,
which decodes every video feature of the sample. The `lerobot` side runs only in a throwaway
virtualenv (it pins another torch; it is never a dependency of this project). Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("impl", choices=["ours", "lerobot"])
    ap.add_argument("root", help="LeRobot v3.0 dataset directory")
    ap.add_argument("--samples", type=int, default=60, help="distinct random steps")
    ap.add_argument("--repeat", type=int, default=1, help="passes over those steps")
    ap.add_argument("--backend", default="pyav", help="lerobot's video backend (pyav | torchcodec)")
    args = ap.parse_args()
    if args.impl == "ours":
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from controller.dataset.formats import open_source
        src = open_source(args.root)
        n = src.n_steps

        def read(i: int) -> None:
            for key in src.keys():
                src[key][i]
    else:
        warnings.filterwarnings("ignore")
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        ds = LeRobotDataset("local/bench", root=args.root, video_backend=args.backend)
        n = len(ds)

        def read(i: int) -> None:
            ds[i]
    idx = np.tile(np.random.default_rng(0).permutation(n)[:args.samples], args.repeat)
    t = time.perf_counter()
    for i in idx:
        read(int(i))
    dt = time.perf_counter() - t
    name = "ours" if args.impl == "ours" else f"lerobot ({args.backend})"
    print(json.dumps({"impl": name, "samples": len(idx), "seconds": round(dt, 3),
                      "samples_per_s": round(len(idx) / dt, 1)}))


if __name__ == "__main__":
    main()
