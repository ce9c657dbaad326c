"""Make the README's GIF: one simulated episode of the whole hierarchy, every panel the robot uses.

Usage::

    python -m sim.make_gif --out assets/readme/episode.gif [--seed 1] [--controller assets/controller_small_sim]

One grasp attempt on a seeded scene, run in this process the way ``benchmarks/sim_success.py``'s
``hierarchy`` column runs it: the offline planner server (in a background thread, over HTTP)
turns the prompt "clear the table" into an instruction and a box on the head image, GrabCut turns
the box into a mask, the optical-flow tracker follows the mask every control step, and the shipped
diffusion controller acts on it (deployment defaults: 4 samples averaged, temporal ensemble; the
first ``--execute`` actions of each 64-step chunk are run). Success = the object the planner chose
(matched to the simulator's objects by box IoU) is lifted 10 cm and held for 1 s.

Each GIF frame: a caption (prompt -> instruction, step, time, outcome), the head camera with the
tracked mask tinted and the planner's box, the wrist camera, and the chunk being executed (the 7
arm joints' planned targets over the 64-step horizon, the executed part thick, the current step
marked; the mean hand opening dashed). Frames are kept every ``--every`` control steps and the GIF
is downscaled / thinned until it fits ``--max-mb``.

The committed ``assets/readme/episode.gif`` is ``--seed 1`` (the scene seed of ``make demo``, here
with 4-10 objects, train split) with the shipped controller: the planner asks for "the rightmost
white cylinder" (box IoU 0.97 with the simulator's white capsule), the controller grasps it, and it
counts as lifted and held at step 72 (3.6 s); the GIF runs on to step 102 (``--hold 1.5``): 52
frames at 10 fps (real time), 6.7 s with the last frame held, 640 x 430, 1.47 MB; about 2 minutes
on 2 CPU cores (``make readme-gif``). Scenes, planner and diffusion noise are seeded, so the same
command repeats the episode.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PANEL_W, PANEL_H = 320, 240      # each camera panel (the cameras render 640 x 480)
PLOT_H = 150                     # height of the action-chunk plot
CAPTION_H = 40                   # two caption lines
#: BGR colours of the 7 arm joints in the chunk plot.
JOINT_COLOURS = [(75, 25, 230), (60, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245),
                 (180, 30, 145), (240, 240, 70)]


@dataclass
class StepFrame:
    """What one GIF frame shows, recorded at one control step.

    Attributes:
        head_bgr, wrist_bgr: uint8 (H, W, 3) camera images (BGR).
        mask: bool (H, W) target mask the controller was given (head image).
        box: planner's box ``[x1, y1, x2, y2]`` on the head image (pixels), or None.
        chunk: (T, 13) action chunk being executed; ``chunk_index`` is the action applied now.
        step: control steps taken; ``time_s``: simulated seconds.
        success: the episode's success flag at this step.
    """

    head_bgr: np.ndarray
    wrist_bgr: np.ndarray
    mask: np.ndarray
    box: list | None
    chunk: np.ndarray
    chunk_index: int
    step: int
    time_s: float
    success: bool


@dataclass
class EpisodeMeta:
    """Text of the caption: the user prompt, the planner's instruction and the final outcome."""

    prompt: str
    instruction: str = ""
    seed: int = 0
    split: str = "train"
    max_steps: int = 300
    success: bool | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- composing
def _fit_text(img: np.ndarray, text: str, org: tuple[int, int], colour, scale: float = 0.42) -> None:
    import cv2
    w = img.shape[1]
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > w - org[0] - 4:
        scale *= (w - org[0] - 4) / tw
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def head_panel(frame: StepFrame, size: tuple[int, int] = (PANEL_W, PANEL_H)) -> np.ndarray:
    """Head image (BGR) with the mask tinted green, its outline, and the planner's box in yellow."""
    import cv2
    img = frame.head_bgr.copy()
    h, w = img.shape[:2]
    m = np.asarray(frame.mask, dtype=bool)
    if m.shape == (h, w) and m.any():
        img[m] = (0.45 * img[m] + 0.55 * np.array([60, 220, 60])).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, (40, 255, 40), 2)
    if frame.box is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in frame.box)
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), (0, 230, 255), 3)
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    _fit_text(img, "head: tracked mask + planner box (t = 0)", (5, 15), (255, 255, 255), 0.42)
    return img


def wrist_panel(frame: StepFrame, size: tuple[int, int] = (PANEL_W, PANEL_H)) -> np.ndarray:
    """Wrist image (BGR), labelled."""
    import cv2
    img = cv2.resize(frame.wrist_bgr, size, interpolation=cv2.INTER_AREA)
    _fit_text(img, "wrist", (5, 15), (255, 255, 255), 0.42)
    return img


def chunk_panel(chunk: np.ndarray, index: int, n_execute: int, width: int, height: int = PLOT_H,
                arm_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Plot of a (T, 13) chunk (BGR): arm joints 1-7 (normalised units, y axis ``arm_range``, left)
    over the horizon, the first ``n_execute`` steps (the part that is executed) thick and the rest
    thin, the current action marked by a vertical line and dots; the hand's mean opening dashed
    (right axis: 0 = closed, 1 = open)."""
    import cv2
    img = np.full((height, width, 3), 24, dtype=np.uint8)
    chunk = np.asarray(chunk, dtype=np.float64)
    t = chunk.shape[0]
    left, right, top, bottom = 40, 40, 18, 14
    pw, ph = width - left - right, height - top - bottom
    xs = left + np.arange(t) * pw / max(t - 1, 1)
    lo, hi = (float(v) for v in arm_range)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5

    def y_of(v, lo=lo, hi=hi):
        return top + (hi - np.clip(v, lo, hi)) / (hi - lo) * ph

    grey = (170, 170, 170)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (70, 70, 70), 1)
    for frac in (0.0, 0.5, 1.0):
        y = int(round(top + frac * ph))
        cv2.line(img, (left, y), (left + pw, y), (55, 55, 55), 1)
        cv2.putText(img, f"{hi - frac * (hi - lo):+.2f}", (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, grey, 1,
                    cv2.LINE_AA)
    cv2.putText(img, "open", (left + pw + 4, top + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, grey, 1, cv2.LINE_AA)
    cv2.putText(img, "shut", (left + pw + 4, top + ph + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, grey, 1, cv2.LINE_AA)
    ex = int(round(xs[min(n_execute, t) - 1])) if t else left
    overlay = img.copy()
    cv2.rectangle(overlay, (left, top), (ex, top + ph), (80, 80, 80), -1)
    img = cv2.addWeighted(overlay, 0.5, img, 0.5, 0)
    for j in range(min(7, chunk.shape[1])):
        pts = np.stack([xs, y_of(chunk[:, j])], axis=1).round().astype(np.int32)
        cv2.polylines(img, [pts], False, JOINT_COLOURS[j], 1, cv2.LINE_AA)
        cv2.polylines(img, [pts[:max(n_execute, 1)]], False, JOINT_COLOURS[j], 3, cv2.LINE_AA)
    if chunk.shape[1] > 7:
        hand = chunk[:, 7:].mean(axis=1)
        pts = np.stack([xs, y_of(hand, 0.0, 1.0)], axis=1).round().astype(np.int32)
        for k in range(0, t - 1, 2):
            cv2.line(img, tuple(pts[k]), tuple(pts[k + 1]), (230, 230, 230), 2, cv2.LINE_AA)
    i = int(np.clip(index, 0, t - 1))
    x = int(round(xs[i]))
    cv2.line(img, (x, top), (x, top + ph), (255, 255, 255), 1)
    for j in range(min(7, chunk.shape[1])):
        cv2.circle(img, (x, int(round(y_of(chunk[i, j])))), 3, JOINT_COLOURS[j], -1, cv2.LINE_AA)
    _fit_text(img, f"action chunk being executed ({t} x {chunk.shape[1]}): arm joints 1-7 (thick = the {n_execute} "
                   "executed), hand dashed, | = now", (left, 13), (220, 220, 220), 0.38)
    cv2.putText(img, f"chunk step 0..{t - 1}", (left + pw - 92, height - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.32,
                (150, 150, 150), 1, cv2.LINE_AA)
    return img


def arm_range_of(frames: list[StepFrame], margin: float = 0.08) -> tuple[float, float]:
    """One y range for the arm joints over every chunk of the episode (so the axis stays put)."""
    vals = np.concatenate([np.asarray(f.chunk)[:, :7].ravel() for f in frames])
    lo, hi = float(vals.min()), float(vals.max())
    pad = margin * max(hi - lo, 1e-3)
    return max(lo - pad, -1.0), min(hi + pad, 1.0)


def caption_band(meta: EpisodeMeta, frame: StepFrame, width: int) -> np.ndarray:
    """Two caption lines (BGR): prompt -> instruction; seed, step, time and the outcome so far."""
    img = np.zeros((CAPTION_H, width, 3), dtype=np.uint8)
    line1 = f'prompt "{meta.prompt}"' + (f' -> planner: "{meta.instruction}"' if meta.instruction else "")
    _fit_text(img, line1, (5, 15), (255, 255, 255), 0.42)
    if frame.success:
        status, colour = "success: lifted and held", (80, 220, 80)
    elif meta.success is False and frame.step >= meta.extra.get("last_step", 10 ** 9):
        status, colour = "failure", (80, 80, 235)
    else:
        status, colour = "grasping...", (200, 200, 200)
    line2 = (f"seed {meta.seed} ({meta.split}) | step {frame.step}/{meta.max_steps} | t = {frame.time_s:4.1f} s | "
             f"{status}")
    _fit_text(img, line2, (5, 34), colour, 0.42)
    return img


def compose_frame(frame: StepFrame, meta: EpisodeMeta, n_execute: int = 6,
                  panel: tuple[int, int] = (PANEL_W, PANEL_H)) -> np.ndarray:
    """One GIF frame, RGB uint8 of shape (CAPTION_H + panel_h + PLOT_H, 2 * panel_w, 3):
    caption on top, head | wrist in the middle, the action-chunk plot below (arm axis:
    ``meta.extra["arm_range"]``, see :func:`arm_range_of`; default the full [-1, 1])."""
    width = 2 * panel[0]
    rows = [caption_band(meta, frame, width),
            np.concatenate([head_panel(frame, panel), wrist_panel(frame, panel)], axis=1),
            chunk_panel(frame.chunk, frame.chunk_index, n_execute, width,
                        arm_range=meta.extra.get("arm_range", (-1.0, 1.0)))]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:, :, ::-1])


# --------------------------------------------------------------------------- writing
def _encode_gif(frames: list[np.ndarray], fps: float, hold_last_s: float = 0.0) -> bytes:
    import io

    from PIL import Image
    # one adaptive palette from a few frames for the whole GIF: stable colours, small files
    sample = np.concatenate([frames[k] for k in np.linspace(0, len(frames) - 1, min(6, len(frames))).astype(int)],
                            axis=0)
    palette = Image.fromarray(sample).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buf = io.BytesIO()
    duration = [int(round(1000.0 / fps))] * len(images)
    duration[-1] += int(round(1000.0 * hold_last_s))   # Pillow merges identical frames, so hold by duration
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                   optimize=False, disposal=1)
    return buf.getvalue()


def write_gif(frames: list[np.ndarray], path: str | Path, fps: float = 12.0, max_bytes: int = 2_000_000,
              hold_last_s: float = 1.5) -> dict:
    """Write RGB ``frames`` as a looping GIF of at most ``max_bytes``: if too big, drop every
    other frame (keeping the real-time ratio by halving ``fps``) and then downscale by 0.85 until it
    fits. The last frame is shown ``hold_last_s`` longer. Returns bytes, frames, fps, duration_s, size."""
    import cv2
    if not frames:
        raise ValueError("no frames to write")
    frames = list(frames)
    scale = 1.0
    while True:
        shown = frames
        if scale != 1.0:
            shown = [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in frames]
        data = _encode_gif(shown, fps, hold_last_s)
        if len(data) <= max_bytes:
            break
        if len(frames) > 60 and fps > 6:
            frames, fps = frames[::2], fps / 2
        elif scale > 0.3:
            scale *= 0.85
        else:
            raise RuntimeError(f"cannot fit the GIF into {max_bytes} bytes ({len(data)} at scale {scale:.2f})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"bytes": len(data), "frames": len(shown), "fps": fps, "duration_s": len(shown) / fps + hold_last_s,
            "size": (shown[0].shape[1], shown[0].shape[0])}


# --------------------------------------------------------------------------- the episode
def run_episode(checkpoint: str, seed: int = 1, split: str = "train", n_objects: tuple[int, int] = (4, 10),
                prompt: str = "clear the table", n_execute: int = 6, every: int = 2, max_steps: int | None = None,
                device: str = "cpu", hold_after_success_s: float = 0.0) -> tuple[list[StepFrame], EpisodeMeta]:
    """Run one planner-chosen grasp attempt (see the module docstring) and record a
    :class:`StepFrame` every ``every`` control steps (and the first and last). ``max_steps`` caps
    the episode (default: the 15 s time limit)."""
    import torch
    from tqdm import tqdm

    from controller.policy import defaults
    from controller.policy.chunk_runner import ChunkPolicy
    from inference_utils.perception import build_segmenter, build_tracker
    from planner import DexGraspVLAPlanner
    from planner.server.app import create_app
    from planner.server.background import serve_in_thread
    from sim import GraspEnv, SimConfig
    from sim.targets import box_iou

    policy = ChunkPolicy.from_checkpoint(checkpoint, device=device, temporal_ensemble=defaults.TEMPORAL_ENSEMBLE_DECAY,
                                         num_samples=defaults.NUM_SAMPLES)
    config = SimConfig(n_objects=tuple(n_objects), split=split)
    if max_steps is not None:
        config = config.with_(time_limit_s=max_steps / config.control_hz)
    meta = EpisodeMeta(prompt=prompt, seed=seed, split=split, max_steps=config.max_steps)
    frames: list[StepFrame] = []
    with serve_in_thread(create_app()) as base_url, GraspEnv(config) as env:
        planner = DexGraspVLAPlanner(base_url + "/v1", timeout=30, max_retries=1)
        segmenter = build_segmenter({"segmenter": {"backend": "grabcut"}})
        tracker = build_tracker({"tracker": {"backend": "flow"}})
        torch.manual_seed(seed)
        policy.reset()
        tracker.reset()
        obs, info = env.reset(seed=seed, split=split)
        head = obs["rgbm"][..., :3]
        instruction = planner.propose_instruction(prompt, head, head).instruction
        box = planner.predict_bbox(instruction, head).bbox.as_list()
        ious = [box_iou(box, o["bbox_head"]) if o.get("bbox_head") is not None else 0.0 for o in info["objects"]]
        env.set_target(int(np.argmax(ious)))
        obs = env.observe()
        mask = segmenter.segment(head, box)
        tracker.start(head, mask)
        meta.instruction = instruction
        meta.extra.update(box_iou=float(max(ious)), target=env.scene.objects[env.target].describe())
        done, success_step = False, None
        hold_steps = int(round(hold_after_success_s * config.control_hz))
        bar = tqdm(total=config.max_steps, desc=f"episode seed {seed}", unit="step", file=sys.stderr)
        while not done:
            rgbm = np.concatenate([obs["rgbm"][..., :3], (mask.astype(np.uint8) * 255)[..., None]], axis=2)
            chunk = np.asarray(policy.predict_chunk({**obs, "rgbm": rgbm}), dtype=np.float64)
            executed = 0
            for k, action in enumerate(chunk[:n_execute]):
                if env.steps % every == 0:
                    frames.append(StepFrame(obs["rgbm"][..., :3].copy(), obs["right_cam_img"].copy(), mask.copy(),
                                            box, chunk, k, env.steps, env.steps / config.control_hz, env.success))
                obs, _, terminated, truncated, info = env.step(action)
                mask = tracker.track(obs["rgbm"][..., :3])
                executed += 1
                bar.update(1)
                if info["success"] and success_step is None:
                    success_step = env.steps
                if truncated or (success_step is not None and env.steps >= success_step + hold_steps):
                    done = True
                    break
            policy.consumed(executed)
        bar.close()
        frames.append(StepFrame(obs["rgbm"][..., :3].copy(), obs["right_cam_img"].copy(), mask.copy(), box,
                                chunk, min(executed, len(chunk) - 1), env.steps, env.steps / config.control_hz,
                                bool(info["success"])))
        meta.success = bool(info["success"])
        meta.extra["last_step"] = env.steps
    return frames, meta


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sim.make_gif``."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags
    p = cli_common.ArgumentParser(prog="python -m sim.make_gif", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="assets/readme/episode.gif", help="GIF path (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="scene seed (default 1: the scene of `make demo`)")
    p.add_argument("--controller", default="assets/controller_small_sim", help="controller checkpoint directory")
    p.add_argument("--split", default="train", help="simulator split (train, unseen_objects, ...)")
    p.add_argument("--objects", type=int, nargs=2, metavar=("MIN", "MAX"), default=(4, 10))
    p.add_argument("--prompt", default="clear the table", help="the user prompt given to the planner")
    p.add_argument("--execute", type=int, default=6, help="actions executed per predicted chunk")
    p.add_argument("--every", type=int, default=2, help="keep a frame every N control steps (20 Hz)")
    p.add_argument("--fps", type=float, default=10.0, help="GIF frame rate (10 with --every 2 = real time)")
    p.add_argument("--hold", type=float, default=1.5, help="seconds simulated after success (the object held up)")
    p.add_argument("--max-steps", type=int, default=None, help="cap the episode (default: the 15 s limit)")
    p.add_argument("--max-mb", type=float, default=2.0, help="size limit; frames are thinned/downscaled to fit")
    cli_common.add_device_argument(p)
    args = p.parse_args(argv)
    if args.every < 1 or args.execute < 1 or args.fps <= 0:
        p.error("--every and --execute must be >= 1 and --fps > 0")
    frames, meta = run_episode(args.controller, args.seed, args.split, tuple(args.objects), args.prompt, args.execute,
                               args.every, args.max_steps, cli_common.resolve_device(args.device),
                               hold_after_success_s=args.hold)
    meta.extra["arm_range"] = arm_range_of(frames)
    rgb = [compose_frame(f, meta, args.execute) for f in frames]
    stats = write_gif(rgb, args.out, args.fps, int(args.max_mb * 1e6))
    print(f"episode: seed {meta.seed} ({meta.split}), planner: \"{meta.instruction}\" "
          f"(box IoU {meta.extra['box_iou']:.2f} with the {meta.extra['target']}), "
          f"{'success' if meta.success else 'failure'} after {meta.extra['last_step']} steps")
    print(f"{stats['frames']} frames, {stats['size'][0]}x{stats['size'][1]}, {stats['fps']:g} fps, "
          f"{stats['duration_s']:.1f} s, {stats['bytes'] / 1e6:.2f} MB")
    print(f"GIF written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
