"""Prove that a dataset written by OUR 'lerobot' sink loads in the REAL LeRobot, unchanged.

Two steps, in two environments (lerobot must never be a dependency of ours):

    # 1. our venv: write a small dataset with our sink + what LeRobot should return
    .venv/bin/python scripts/check_lerobot_roundtrip.py write /tmp/roundtrip
    #    (add --files-mb 1e-6 --chunks-size 2 for a dataset spread over several files and chunks)
    # 2. the throwaway venv (see scripts/make_lerobot_fixture.py): load it with LeRobotDataset
    /tmp/lerobot-venv/bin/python scripts/check_lerobot_roundtrip.py check /tmp/roundtrip [--backend pyav]

``write`` makes ``<out>/dataset`` (3 episodes, head camera + mask + wrist camera at 64x48,
13-D state/action, a task per episode, per-step reasoning) and ``<out>/expected.npz`` (the data
given to the sink, RGB frames; read with ``np.load(allow_pickle=False)``). ``check`` reads every
frame through ``LeRobotDataset.__getitem__`` and compares: state/action exact, task and reasoning
strings equal, mask exact after a > 127 threshold, video frames within codec tolerance of the
frames written (mean |diff| <= 8 of 255) and within 1 level of what OUR reader decodes from the
same files. It prints the frame count, one sample, and OK or the first mismatch (exit 1).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

FPS, H, W = 15, 48, 64
LENGTHS = (8, 5, 11)
#: mean |diff| (0..255) allowed between a frame written and the frame decoded: h264/yuv420p halves
#: the colour resolution, which costs a few levels at the saturated colour edges of these 64x48 frames.
TOLERANCE = 8.0
TASKS = ("grasp the blue bottle", "grasp the toy duck", "grasp the blue bottle")


def _episode(ep: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    head = np.zeros((n, H, W, 4), np.uint8)
    wrist = np.zeros((n, H, W, 3), np.uint8)
    for t in range(n):
        bgr = np.stack([np.full_like(x, 50 + 30 * ep), 40 + 150 * y / H, 40 + 150 * x / W], -1)
        cx = 6 + 4 * t
        bgr[12:28, cx:cx + 16] = (40, 200, 230)
        head[t, ..., :3] = bgr.clip(0, 255).astype(np.uint8)
        head[t, 12:28, cx:cx + 16, 3] = 255
        wrist[t] = np.roll(head[t, ..., :3], 5 * t, axis=0)[..., ::-1]
    return {"rgbm": head, "right_cam_img": wrist,
            "right_state": rng.standard_normal((n, 13)).astype(np.float32),
            "action": rng.standard_normal((n, 13)).astype(np.float32)}


def write(out: Path, files_mb: float = 100.0, chunks_size: int = 1000) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from controller.dataset.formats import open_sink, open_source  # noqa: PLC0415

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    eps = [_episode(e, n, rng) for e, n in enumerate(LENGTHS)]
    reasoning = [[f"ep{e} step{t}: approach" if t < n // 2 else "" for t in range(n)] for e, n in enumerate(LENGTHS)]
    with open_sink(out / "dataset", "lerobot", fps=FPS, chunks_size=chunks_size, data_files_size_in_mb=files_mb,
                   video_files_size_in_mb=files_mb) as sink:
        for e, data in enumerate(eps):
            sink.add_episode(data, language=TASKS[e], reasoning=reasoning[e])
    cat = {k: np.concatenate([d[k] for d in eps]) for k in eps[0]}
    ours = open_source(out / "dataset")  # what OUR reader decodes from the same files
    np.savez_compressed(out / "expected.npz", state=cat["right_state"], action=cat["action"],
                        ours_head_rgb=np.asarray(ours["rgbm"])[..., 2::-1],
                        ours_wrist_rgb=np.asarray(ours["right_cam_img"])[..., ::-1],
                        head_rgb=cat["rgbm"][..., 2::-1], mask=cat["rgbm"][..., 3],
                        wrist_rgb=cat["right_cam_img"][..., ::-1],
                        task=np.array([TASKS[e] for e, n in enumerate(LENGTHS) for _ in range(n)]),
                        reasoning=np.array(sum(reasoning, [])))
    print(f"wrote {out / 'dataset'} ({sum(LENGTHS)} frames) and {out / 'expected.npz'}")


def check(out: Path, backend: str) -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: PLC0415

    exp = np.load(out / "expected.npz", allow_pickle=False)
    ds = LeRobotDataset("dexgraspvla/roundtrip", root=out / "dataset", video_backend=backend)
    print(f"LeRobotDataset: {len(ds)} frames, {ds.num_episodes} episodes, fps {ds.fps}, features {list(ds.features)}")
    n = len(exp["state"])
    problems = [] if len(ds) == n else [f"{len(ds)} frames; expected {n}"]
    worst = {"head": 0.0, "wrist": 0.0, "head vs ours": 0, "wrist vs ours": 0}
    for i in range(len(ds)):
        item = ds[i]
        img = {k: (item[f"observation.images.{k}"].permute(1, 2, 0).numpy() * 255).round().astype(np.int32)
               for k in ("head", "head_mask", "wrist")}
        checks = {
            "observation.state": np.array_equal(item["observation.state"].numpy(), exp["state"][i]),
            "action": np.array_equal(item["action"].numpy(), exp["action"][i]),
            "task": item["task"] == str(exp["task"][i]),
            "reasoning": item["reasoning"] == str(exp["reasoning"][i]),
            "head_mask": np.array_equal(np.where(img["head_mask"][..., 0] > 127, 255, 0), exp["mask"][i]),
        }
        for k in ("head", "wrist"):
            err = float(np.abs(img[k] - exp[f"{k}_rgb"][i]).mean())
            vs_ours = int(np.abs(img[k] - exp[f"ours_{k}_rgb"][i]).max())
            worst[k], worst[f"{k} vs ours"] = max(worst[k], err), max(worst[f"{k} vs ours"], vs_ours)
            checks[f"{k} (mean |diff| {err:.2f} > {TOLERANCE} vs the frames written)"] = err <= TOLERANCE
            checks[f"{k} (max |diff| {vs_ours} > 1 vs our reader's decode)"] = vs_ours <= 1
        problems += [f"frame {i}: {k} differs" for k, ok in checks.items() if not ok]
        if i == 9:
            print("sample frame 9:", {k: (tuple(v.shape) if hasattr(v, "shape") and v.ndim else
                                           (v.item() if hasattr(v, "item") else v)) for k, v in item.items()})
    print(f"worst |diff| of video frames (0..255; mean vs written, max vs our reader): {worst}")
    problems += _check_training_use(out, backend, exp)
    if problems:
        print("FAILED:", "; ".join(problems[:10]))
        return 1
    print(f"OK: all {len(ds)} frames match (state/action exact, task/reasoning equal, mask exact, video within codec tolerance)")
    return 0


def _check_training_use(out: Path, backend: str, exp) -> list[str]:
    """delta_timestamps (past frames, action chunks padded at episode ends) and a 2-worker DataLoader."""
    import torch  # noqa: PLC0415
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: PLC0415

    dt = 1.0 / FPS
    ds = LeRobotDataset("dexgraspvla/roundtrip", root=out / "dataset", video_backend=backend,
                        delta_timestamps={"observation.images.head": [-dt, 0.0], "action": [k * dt for k in range(4)]})
    end = LENGTHS[0] - 1                       # last frame of episode 0: the chunk runs past it
    item = ds[end]
    problems = []
    if item["observation.images.head"].shape != (2, 3, H, W):
        problems.append(f"delta_timestamps head shape {tuple(item['observation.images.head'].shape)}")
    if item["action_is_pad"].tolist() != [False, True, True, True] or \
            not np.array_equal(item["action"][0].numpy(), exp["action"][end]):
        problems.append(f"action chunk at the end of episode 0: pad {item['action_is_pad'].tolist()}")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=True)
    n = sum(len(batch["index"]) for batch in loader)
    print(f"delta_timestamps item {end}: head {tuple(item['observation.images.head'].shape)}, action_is_pad "
          f"{item['action_is_pad'].tolist()}; DataLoader(num_workers=2) gave {n} samples")
    return problems + ([] if n == len(ds) else [f"DataLoader gave {n} samples; expected {len(ds)}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("write", "check"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", default="pyav", help="LeRobot video backend for 'check' (pyav or torchcodec)")
    ap.add_argument("--files-mb", type=float, default=100.0,
                    help="'write': data/video file size limit (tiny, e.g. 1e-6: one data file per episode)")
    ap.add_argument("--chunks-size", type=int, default=1000, help="'write': files per chunk-XXX directory")
    args = ap.parse_args()
    if args.step == "write":
        write(args.out, args.files_mb, args.chunks_size)
    else:
        sys.exit(check(args.out, args.backend))


if __name__ == "__main__":
    main()
