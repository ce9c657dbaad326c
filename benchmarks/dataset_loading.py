"""Training data loading speed per dataset format: zarr vs ACT HDF5 vs LeRobot v3.0 (video decode).

    python benchmarks/dataset_loading.py [--episodes 3] [--src data/sim.zarr] [--image-size 518]
        [--samples 96] [--batches 12] [--batch-size 8] [--workers 0 2] [--repeats 5] [--out FILE.json]

The same episodes are stored three ways: simulator episodes collected with ``sim.collect`` (or the
first ``--episodes`` of ``--src``), converted with ``controller.dataset.convert`` to ``act_h5``
and ``lerobot``. For each format it measures, in the same run:

* ``getitem``: ``GraspDataset.__getitem__`` samples/s over the same seeded random indices;
* ``loader wN``: samples/s of a ``torch.utils.data.DataLoader`` (batch ``--batch-size``, N workers,
  seeded random sampling) over ``--batches`` batches after a first, untimed batch (worker start-up
  and decoder warm-up are reported separately as ``first batch s``);

and the ratio of each figure to zarr's (taken within each round, median over the rounds). Rounds are interleaved across formats (``--repeats``,
median kept) so that load from other processes on a shared machine hits every format alike.
Prints a table and writes everything to ``--out`` (JSON) with the date, command and machine.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

FORMATS = ("zarr", "act_h5", "lerobot")
DEST_NAMES = {"zarr": "bench.zarr", "act_h5": "bench_h5", "lerobot": "bench_lerobot"}


def _disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def make_data(args, work: str) -> dict:
    """The zarr store (collected or copied from --src) and its act_h5 / lerobot conversions."""
    from controller.dataset.convert_core import convert  # noqa: PLC0415

    info: dict = {"paths": {}, "convert_s": {}, "disk_mb": {}}
    zarr_path = os.path.join(work, DEST_NAMES["zarr"])
    if all(os.path.exists(os.path.join(work, DEST_NAMES[f])) for f in FORMATS):  # --workdir of an earlier run
        info["paths"] = {f: os.path.join(work, DEST_NAMES[f]) for f in FORMATS}
        info["disk_mb"] = {f: _disk_bytes(p) / 1e6 for f, p in info["paths"].items()}
        info["source"] = f"reused {work}"
        info["convert_s"] = {f: float("nan") for f in FORMATS}
        return info
    t = time.perf_counter()
    if args.src:
        convert(args.src, zarr_path, to="zarr", episodes=args.episodes, progress=False)
        info["source"] = f"first {args.episodes} episode(s) of {args.src}"
    else:
        from sim.collect import collect  # noqa: PLC0415
        collect(zarr_path, episodes=args.episodes, seed=args.seed, n_objects=(1, 2), progress=False)
        info["source"] = f"sim.collect --episodes {args.episodes} --seed {args.seed} --objects 1 2"
    info["convert_s"]["zarr"] = time.perf_counter() - t
    info["paths"]["zarr"] = zarr_path
    for fmt in FORMATS[1:]:
        dst = os.path.join(work, DEST_NAMES[fmt])
        t = time.perf_counter()
        convert(zarr_path, dst, to=fmt, progress=False)
        info["convert_s"][fmt] = time.perf_counter() - t
        info["paths"][fmt] = dst
    for fmt, p in info["paths"].items():
        info["disk_mb"][fmt] = _disk_bytes(p) / 1e6
    return info


def _dataset(path: str, image_size: int):
    from controller.dataset.grasp_dataset import GraspDataset  # noqa: PLC0415

    s = int(image_size)
    shape_meta = {"obs": {"right_cam_img": {"shape": [3, s, s], "type": "rgb", "horizon": 1},
                          "rgbm": {"shape": [4, s, s], "type": "rgbm", "horizon": 1},
                          "right_state": {"shape": [13], "type": "low_dim", "horizon": 1}},
                  "action": {"shape": [13], "horizon": 64}}
    return GraspDataset([path], shape_meta, seed=0, val_ratio=0.0)


def bench_getitem(ds, indices) -> float:
    ds[int(indices[0])]                                   # warm-up (opens decoders, page cache)
    t = time.perf_counter()
    for i in indices:
        ds[int(i)]
    return len(indices) / (time.perf_counter() - t)


def bench_loader(ds, workers: int, batch_size: int, n_batches: int, seed: int) -> tuple[float, float]:
    """(samples/s over ``n_batches`` after the first batch, seconds to the first batch)."""
    import torch  # noqa: PLC0415
    from torch.utils.data import DataLoader, RandomSampler  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(ds, replacement=True, num_samples=batch_size * (n_batches + 1), generator=g)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        persistent_workers=False)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    t = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch["action"])
    elapsed = time.perf_counter() - t
    del it
    return n / elapsed, first


def measure(paths: dict, args) -> dict:
    """Every figure for every format, ``--repeats`` interleaved rounds (format order rotated each
    round, so background load hits all formats alike); the median of the rounds is kept."""
    import numpy as np  # noqa: PLC0415

    datasets = {fmt: _dataset(paths[fmt], args.image_size) for fmt in FORMATS}
    n = len(datasets["zarr"])
    idx = np.random.default_rng(args.seed).integers(0, n, args.samples)
    runs: dict = {fmt: {} for fmt in FORMATS}
    for r in range(args.repeats):
        order = FORMATS[r % len(FORMATS):] + FORMATS[:r % len(FORMATS)]
        for fmt in order:
            runs[fmt].setdefault("getitem", []).append(bench_getitem(datasets[fmt], idx))
        for w in args.workers:
            for fmt in order:
                sps, first = bench_loader(datasets[fmt], w, args.batch_size, args.batches, args.seed + r)
                runs[fmt].setdefault(f"loader w{w}", []).append(sps)
                runs[fmt].setdefault(f"first batch s w{w}", []).append(first)
        print(f"  round {r + 1}/{args.repeats}: " + "; ".join(
            f"{fmt} " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs[fmt].items()) for fmt in FORMATS),
            file=sys.stderr)
    return {fmt: {"windows": len(datasets[fmt]), **{k: float(np.median(v)) for k, v in runs[fmt].items()},
                  "rounds": runs[fmt]} for fmt in FORMATS}


def machine() -> dict:
    import torch  # noqa: PLC0415
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def run(args) -> dict:
    import numpy as np  # noqa: PLC0415

    load_start = os.getloadavg()[0]
    work = args.workdir or tempfile.mkdtemp(prefix="dataset_loading_")
    os.makedirs(work, exist_ok=True)
    try:
        data = make_data(args, work)
        results = measure(data["paths"], args)
        src = data["paths"]["zarr"]
        from controller.dataset.formats import open_source  # noqa: PLC0415
        rb = open_source(src)
        data.update(episodes=rb.n_episodes, steps=rb.n_steps, frame_shape=list(np.shape(rb["rgbm"][0])))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    metrics = ["getitem"] + [f"loader w{w}" for w in args.workers]
    # paired within each round (same background load), then the median over the rounds
    ratios = {fmt: {m: float(np.median(np.asarray(results[fmt]["rounds"][m]) / np.asarray(results["zarr"]["rounds"][m])))
                    for m in metrics} for fmt in FORMATS}
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/dataset_loading.py " + " ".join(args.argv),
            "machine": {**machine(), "loadavg_1min_start_end": [load_start, os.getloadavg()[0]]}, "settings": {k: v for k, v in vars(args).items() if k != "argv"},
            "data": {k: v for k, v in data.items() if k != "paths"}, "results": results, "ratios_vs_zarr": ratios}


def print_table(report: dict) -> None:
    """The figures and their ratios to zarr, one row per format."""
    res, ratios = report["results"], report["ratios_vs_zarr"]
    metrics = [m for m in next(iter(res.values())) if m == "getitem" or m.startswith("loader")]
    d = report["data"]
    print(f"dataset loading, samples/s, median of {report['settings']['repeats']} rounds ({d['episodes']} episodes / "
          f"{d['steps']} steps of {d['frame_shape']} frames, images resized to {report['settings']['image_size']}; "
          f"ratio to zarr in the same round, median, in brackets)")
    head = f"{'format':<9}" + "".join(f"{m:>20}" for m in metrics) + f"{'disk MB':>10}{'write s':>9}"
    print(head)
    print("-" * len(head))
    for fmt, row in res.items():
        cells = "".join(f"{row[m]:>11.1f} ({ratios[fmt][m]:4.2f}x)" for m in metrics)
        print(f"{fmt:<9}{cells}{d['disk_mb'][fmt]:>10.1f}{d['convert_s'][fmt]:>9.1f}")
    print(f"write s: zarr = {d['source']} (simulation included), the others = convert from that zarr")
    m = report["machine"]
    load = m.get("loadavg_1min_start_end")
    print(f"{report['date']}, {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']} "
          f"({m['torch_threads']} threads), {m['platform']}"
          + (f", load average {load[0]:.1f} -> {load[1]:.1f} (other processes)" if load else ""))


def main(argv=None) -> int:
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags

    argv = list(sys.argv[1:] if argv is None else argv)
    p = cli_common.ArgumentParser(prog="python benchmarks/dataset_loading.py", description=__doc__.split("\n")[0])
    p.add_argument("--src", help="zarr (or any format) to take episodes from (default: collect with sim.collect)")
    p.add_argument("--episodes", type=cli_common.positive(int), default=3, help="episodes stored in each format")
    p.add_argument("--seed", type=int, default=0, help="first scene seed / sampling seed")
    p.add_argument("--image-size", type=int, default=518, help="training image size (paper preset 518)")
    p.add_argument("--samples", type=int, default=96, help="samples timed for __getitem__")
    p.add_argument("--batches", type=int, default=12, help="batches timed per DataLoader (after the first)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    p.add_argument("--repeats", type=cli_common.positive(int), default=5,
                   help="interleaved measurement rounds (the median is reported)")
    p.add_argument("--workdir", help="keep the generated datasets here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="do not delete the temporary directory")
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    args.argv = argv
    report = run(args)
    print_table(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
