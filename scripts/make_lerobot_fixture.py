"""Make tests/fixtures/lerobot_v3_real/ with the REAL LeRobot (never imported by our code or tests).

The fixture is a small LeRobot v3.0 dataset written by ``LeRobotDataset.create`` / ``add_frame`` /
``save_episode`` / ``finalize`` (3 episodes, 2 video cameras at 64x48 encoded with LeRobot's
default codec, ``observation.state`` + ``action``, a task per episode, a per-step ``reasoning``
string feature), plus what the real LeRobot decodes from it:

    tests/fixtures/lerobot_v3_real/dataset/      the dataset directory, as LeRobot wrote it
    tests/fixtures/lerobot_v3_real/expected.json states, actions, tasks, reasoning, per frame
                                                 sha256 / mean / sample pixels of the decoded frames
    tests/fixtures/lerobot_v3_real/expected_frames.npz  decoded frames, uint8 (N, H, W, 3) RGB
                                                 per camera (read with np.load(allow_pickle=False))
    tests/fixtures/lerobot_v3_real/dataset_images/  2 short episodes with ``use_videos=False``: the
                                                 cameras are 'image' features (PNG bytes in the
                                                 data parquet); expected_images.npz holds
                                                 state, action and the RGB frames LeRobot returns

Run it in a throwaway virtualenv OUTSIDE the repository (lerobot must never be a dependency of ours):

    python3.11 -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install lerobot          # 0.4.4 on Python 3.11 (pulls its own torch)
    /tmp/lerobot-venv/bin/python scripts/make_lerobot_fixture.py [--out tests/fixtures/lerobot_v3_real]

After regenerating, add the files with explicit paths; the repository's .gitignore ignores
``data/``, so the data parquet files need ``git add -f``.

Frames are decoded with ``video_backend="pyav"`` (LeRobot's default, torchcodec, needs the system's
FFmpeg libraries; pass ``--backend torchcodec`` where they are installed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

FPS = 10
H, W = 48, 64
LENGTHS = (6, 4, 5)
TASKS = ("pick up the red cube", "pick up the red cube", "put the cup on the plate")
CAMERAS = ("observation.images.top", "observation.images.wrist_right")
SAMPLE_PIXELS = ((0, 0), (24, 32), (47, 63), (10, 50))


def frame(camera: int, episode: int, step: int) -> np.ndarray:
    """A smooth RGB test image with a moving bright square (distinct per camera/episode/step)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([40 + 150 * x / W, 40 + 150 * y / H, np.full_like(x, 60 + 40 * camera + 20 * episode)], -1)
    cx, cy = 8 + 6 * step + 3 * episode, 10 + 4 * camera
    img[cy:cy + 12, cx:cx + 12] = (230, 220, 40 + 50 * camera)
    return img.clip(0, 255).astype(np.uint8)


def make(out: Path) -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: PLC0415

    root = out / "dataset"
    if root.exists():
        shutil.rmtree(root)
    features = {
        **{cam: {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]} for cam in CAMERAS},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": [f"joint_{i}" for i in range(6)]},
        "action": {"dtype": "float32", "shape": (6,), "names": [f"joint_{i}" for i in range(6)]},
        "reasoning": {"dtype": "string", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("dexgraspvla/lerobot_v3_fixture", fps=FPS, features=features, root=root,
                               robot_type="test_arm", use_videos=True)
    rng = np.random.default_rng(1234)
    for ep, (n, task) in enumerate(zip(LENGTHS, TASKS)):
        for t in range(n):
            ds.add_frame({
                CAMERAS[0]: frame(0, ep, t), CAMERAS[1]: frame(1, ep, t),
                "observation.state": rng.uniform(-1, 1, 6).astype(np.float32),
                "action": rng.uniform(-1, 1, 6).astype(np.float32),
                "reasoning": f"step {t} of episode {ep}" if t % 2 == 0 else "",
                "task": task,
            })
        ds.save_episode()
    ds.finalize()
    return root


def make_images(out: Path) -> None:
    """A dataset whose cameras are 'image' features (LeRobot embeds them in the parquet as PNG)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: PLC0415

    root = out / "dataset_images"
    if root.exists():
        shutil.rmtree(root)
    features = {
        **{cam: {"dtype": "image", "shape": (H, W, 3), "names": ["height", "width", "channels"]} for cam in CAMERAS},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": [f"joint_{i}" for i in range(6)]},
        "action": {"dtype": "float32", "shape": (6,), "names": [f"joint_{i}" for i in range(6)]},
    }
    ds = LeRobotDataset.create("dexgraspvla/lerobot_v3_fixture_images", fps=FPS, features=features, root=root,
                               use_videos=False)
    rng = np.random.default_rng(99)
    for ep, n in enumerate((3, 2)):
        for t in range(n):
            ds.add_frame({CAMERAS[0]: frame(0, ep, t), CAMERAS[1]: frame(1, ep, t),
                          "observation.state": rng.uniform(-1, 1, 6).astype(np.float32),
                          "action": rng.uniform(-1, 1, 6).astype(np.float32), "task": TASKS[ep]})
        ds.save_episode()
    ds.finalize()
    ds = LeRobotDataset("dexgraspvla/lerobot_v3_fixture_images", root=root)
    items = [ds[i] for i in range(len(ds))]
    img = {cam.replace(".", "__"): np.stack([(it[cam].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                                            for it in items]) for cam in CAMERAS}
    np.savez_compressed(out / "expected_images.npz", state=np.stack([it["observation.state"].numpy() for it in items]),
                        action=np.stack([it["action"].numpy() for it in items]),
                        task=np.array([it["task"] for it in items]), **img)


def expected(root: Path, out: Path, backend: str) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: PLC0415

    ds = LeRobotDataset("dexgraspvla/lerobot_v3_fixture", root=root, video_backend=backend)
    rows: dict[str, list] = {k: [] for k in ("episode_index", "frame_index", "timestamp", "task", "reasoning",
                                             "observation.state", "action")}
    frames: dict[str, list] = {cam: [] for cam in CAMERAS}
    pix: dict[str, list] = {cam: [] for cam in CAMERAS}
    for i in range(len(ds)):
        item = ds[i]
        for k in rows:
            v = item[k]
            rows[k].append(v if isinstance(v, str) else v.tolist())
        for cam in CAMERAS:  # LeRobot returns float32 (3, H, W) in [0, 1]
            img = (item[cam].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            frames[cam].append(img)
            pix[cam].append({"sha256": hashlib.sha256(img.tobytes()).hexdigest(),
                             "mean_rgb": img.reshape(-1, 3).mean(0).round(4).tolist(),
                             "samples": {f"{y},{x}": img[y, x].tolist() for y, x in SAMPLE_PIXELS}})
    doc = {"made_with": {"lerobot": _version("lerobot"), "av": _version("av"), "backend": backend},
           "fps": FPS, "lengths": list(LENGTHS), "tasks": list(TASKS), "cameras": list(CAMERAS),
           "num_frames": len(ds), "num_episodes": ds.num_episodes, "frames": rows, "pixels": pix}
    (out / "expected.json").write_text(json.dumps(doc, indent=1))
    np.savez_compressed(out / "expected_frames.npz", **{cam.replace(".", "__"): np.stack(v) for cam, v in frames.items()})


def _version(dist: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415
    return version(dist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/lerobot_v3_real")
    ap.add_argument("--backend", default="pyav", help="LeRobot video backend used for the expected frames")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = make(args.out)
    expected(root, args.out, args.backend)
    make_images(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1024:.1f} kB)")


if __name__ == "__main__":
    main()
