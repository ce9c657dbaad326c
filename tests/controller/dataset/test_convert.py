"""``python -m controller.dataset.convert`` and ``inspect`` on every format (issue 22).

Round trips zarr -> act_h5 -> zarr (identical arrays) and zarr -> lerobot -> zarr (exact low-dim,
frames within the video codec's tolerance), text carried through each conversion, refusal of an
existing destination, nothing left at the destination when the source fails, ``--mask segment``
on simulator data, and ``inspect`` / ``inspect --verify`` on the converted datasets.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.dataset.convert import main as convert_main
from controller.dataset.convert_core import convert, infer_dest_format, parse_camera_map
from controller.dataset.errors import DatasetError
from controller.dataset.formats import SourceOptions, open_source, sink_names
from tests.controller.dataset.factories import make_episode

REPO = Path(__file__).resolve().parents[3]
KEYS = ("right_cam_img", "rgbm", "right_state", "action")
LENGTHS = (6, 9, 7)


def _text(ep: int, n: int) -> tuple[str, list[str]]:
    return f"grasp the red box {ep}", [("locate the red box" if t < 2 else "close the hand") for t in range(n)]


def _smooth_episode(ep: int, n: int, hw=(48, 64)) -> dict:
    """``make_episode`` with smooth frames (gradients and a moving block: what a video codec is for)."""
    out = make_episode(ep, n, hw=hw, mask_value=255)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(n):
        img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 40 * ep + 3 * t)], axis=-1)
        x0 = 8 + 2 * t
        img[10:30, x0:x0 + 16] = (30, 200, 220)
        out["right_cam_img"][t] = img[..., ::-1]
        out["rgbm"][t, ..., :3] = img
    return out


@pytest.fixture(scope="module")
def text_zarr(tmp_path_factory):
    """A small store (48x64 frames, 0/255 mask) with language and reasoning on every episode."""
    from controller.dataset.writer import ZarrEpisodeWriter
    path = tmp_path_factory.mktemp("conv") / "src.zarr"
    with ZarrEpisodeWriter(path) as w:
        for ep, n in enumerate(LENGTHS):
            lang, reasons = _text(ep, n)
            w.add_episode(_smooth_episode(ep, n), language=lang, reasoning=reasons)
    return str(path)


def _need(fmt: str) -> None:
    if fmt not in sink_names():
        pytest.skip(f"no '{fmt}' writer in controller.dataset.formats yet")


def _episodes(path: str) -> list[dict]:
    src = open_source(path)
    return [src.get_episode(ep, KEYS) for ep in range(src.n_episodes)]


def _check_text(path: str) -> None:
    src = open_source(path)
    assert src.n_episodes == len(LENGTHS)
    for ep, n in enumerate(LENGTHS):
        lang, reasons = _text(ep, n)
        assert src.language(ep) == lang
        start = int(src.episode_starts[ep])
        assert [src.reasoning(start + t) for t in range(n)] == reasons


def test_destination_format_rules():
    assert infer_dest_format("out/x.zarr") == "zarr" and infer_dest_format("x.zarr/") == "zarr"
    assert infer_dest_format("ep.hdf5") == infer_dest_format("aloha_h5") == infer_dest_format("a_hdf5") == "act_h5"
    assert infer_dest_format("d_lerobot") == "lerobot" and infer_dest_format("anything", "lerobot") == "lerobot"
    with pytest.raises(DatasetError, match="pass --to"):
        infer_dest_format("data/mydataset")
    assert parse_camera_map(["head=top", "wrist=cam_right_wrist"]) == {"head": "top", "wrist": "cam_right_wrist"}
    with pytest.raises(DatasetError, match="ROLE=SOURCE_CAMERA"):
        parse_camera_map(["top"])


def test_zarr_to_zarr_keeps_everything(text_zarr, tmp_path):
    s = convert(text_zarr, str(tmp_path / "copy.zarr"), progress=False)
    assert (s["episodes"], s["steps"], s["with_language"], s["with_reasoning"]) == (3, 22, 3, 3)
    for a, b in zip(_episodes(text_zarr), _episodes(s["dst"])):
        for k in KEYS:
            np.testing.assert_array_equal(a[k], b[k])
    _check_text(s["dst"])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]   # no temporary left over


def test_zarr_act_h5_zarr_identical(text_zarr, tmp_path):
    _need("act_h5")
    h5 = tmp_path / "sim_h5"
    assert convert_main([text_zarr, str(h5), "--no-progress"]) == 0
    _check_text(str(h5))
    back = tmp_path / "back.zarr"
    assert convert_main([str(h5), str(back), "--no-progress"]) == 0
    for a, b in zip(_episodes(text_zarr), _episodes(str(back))):
        for k in KEYS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _check_text(str(back))


def test_zarr_lerobot_zarr_within_codec_tolerance(text_zarr, tmp_path):
    _need("lerobot")
    lr = tmp_path / "sim_lerobot"
    assert convert_main([text_zarr, str(lr), "--no-progress"]) == 0
    _check_text(str(lr))
    back = tmp_path / "back.zarr"
    assert convert_main([str(lr), str(back), "--to", "zarr", "--no-progress"]) == 0
    for a, b in zip(_episodes(text_zarr), _episodes(str(back))):
        for k in ("right_state", "action"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        for k in ("right_cam_img", "rgbm"):
            assert a[k].shape == b[k].shape and b[k].dtype == np.uint8
            err = np.abs(a[k][..., :3].astype(np.int16) - b[k][..., :3].astype(np.int16))
            assert err.mean() < 4 and np.percentile(err, 99) < 40, (k, err.mean(), np.percentile(err, 99))
        fg_a, fg_b = a["rgbm"][..., 3] > 127, b["rgbm"][..., 3] > 127
        assert (fg_a & fg_b).sum() / max((fg_a | fg_b).sum(), 1) > 0.9          # mask IoU
    _check_text(str(back))


def test_refuses_existing_destination(text_zarr, tmp_path, capsys):
    dst = tmp_path / "taken.zarr"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert convert_main([text_zarr, str(dst), "--no-progress"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(os.listdir(dst)) == ["keep.txt"] and (dst / "keep.txt").read_text() == "mine"
    assert convert_main([text_zarr, str(dst), "--overwrite", "--no-progress", "--episodes", "2"]) == 0
    assert open_source(str(dst)).n_episodes == 2
    assert convert_main([text_zarr, str(tmp_path / "ambiguous"), "--no-progress"]) == 2
    assert not (tmp_path / "ambiguous").exists()


def test_failing_source_leaves_nothing(text_zarr, tmp_path, capsys):
    """A chunk of episode 2 overwritten with garbage: the error names the file and key, DST stays absent."""
    import shutil
    bad = tmp_path / "bad.zarr"
    shutil.copytree(text_zarr, bad)
    chunk = bad / "data" / "rgbm" / f"{LENGTHS[0] + LENGTHS[1] + 1}.0.0.0"
    chunk.write_bytes(b"\x00" * chunk.stat().st_size)
    for dst, to in ((tmp_path / "out.zarr", "zarr"), (tmp_path / "out_h5", "act_h5"), (tmp_path / "o_lerobot", "lerobot")):
        if to not in sink_names():
            continue
        assert convert_main([str(bad), str(dst), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "data/rgbm" in err and str(chunk) in err, err
        assert not dst.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.zarr"]


def test_damaged_h5_episode_is_named(text_zarr, tmp_path, capsys):
    """A truncated episode file, then a damaged frame of episode 1 (read after episode 0 was written):
    convert names the file (and key), leaves nothing at DST; ``inspect --verify`` names file, key,
    episode and step."""
    import h5py
    from controller.dataset.inspect import main as inspect_main
    _need("act_h5")
    h5 = tmp_path / "t_h5"
    convert(text_zarr, str(h5), progress=False)
    victim = sorted(p for p in h5.rglob("*") if p.suffix in (".hdf5", ".h5"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    dst = tmp_path / "from_truncated.zarr"
    assert convert_main([str(h5), str(dst), "--no-progress"]) == 2
    assert str(victim) in capsys.readouterr().err
    assert not dst.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]

    victim.write_bytes(data)
    with h5py.File(victim, "r") as f:
        info = f["observations/images/head"].id.get_chunk_info(3)   # frame 3 (one frame per chunk)
    with open(victim, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    assert convert_main([str(h5), str(dst), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "observations/images/head" in err and "nothing written" in err, err
    assert not dst.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert inspect_main([str(h5), "--verify", "--no-progress"]) == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert "key 'rgbm' episode 1 step 3" in out and str(victim) in out and "observations/images/head" in out, out
    assert "decoded 1 of 3 episode(s)" in out


def test_help_is_light():
    """No reader, codec or torch import before the arguments are parsed (zarr comes with the package);
    the time of ``--help`` is measured by benchmarks/cli_startup.py, not here."""
    code = ("import sys; from controller.dataset.convert import build_parser; build_parser().format_help(); "
            "print([m for m in ('torch', 'av', 'h5py', 'pyarrow', 'cv2', 'tqdm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    assert out.strip() == "[]", out
    res = subprocess.run([sys.executable, "-m", "controller.dataset.convert", "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0 and "--mask-box" in res.stdout and "--camera-map" in res.stdout


def test_mask_segment_on_sim_data(tmp_path):
    """Offline planner box from the language, GrabCut + flow tracker: close to the simulator's masks."""
    pytest.importorskip("mujoco")
    from sim.collect import collect
    src = tmp_path / "sim.zarr"
    collect(str(src), episodes=1, seed=7, n_objects=(1, 2), progress=False)
    s = convert(str(src), str(tmp_path / "seg.zarr"), options=SourceOptions(mask="segment"), progress=False)
    a, b = _episodes(str(src))[0]["rgbm"][..., 3] > 0, _episodes(s["dst"])[0]["rgbm"][..., 3] > 0
    ious = [(p & q).sum() / max((p | q).sum(), 1) for p, q in zip(a, b)]
    assert np.mean(ious) > 0.7 and ious[0] > 0.8, ious
    assert open_source(s["dst"]).language(0) == open_source(str(src)).language(0)
    box = s["boxes"][0]
    s2 = convert(str(src), str(tmp_path / "seg_box.zarr"), options=SourceOptions(mask="segment"), mask_box=box,
                 progress=False)
    assert s2["boxes"] == [tuple(float(v) for v in box)]
    if "act_h5" in sink_names():   # a foreign format as the source: the reader reads, convert segments
        h5 = tmp_path / "sim_h5"
        convert(str(src), str(h5), progress=False)
        s3 = convert(str(h5), str(tmp_path / "seg_from_h5.zarr"), options=SourceOptions(mask="segment"),
                     progress=False)
        got = _episodes(s3["dst"])[0]["rgbm"]
        np.testing.assert_array_equal(got[..., :3], _episodes(str(src))[0]["rgbm"][..., :3])
        ious = [(p & q).sum() / max((p | q).sum(), 1) for p, q in zip(a, got[..., 3] > 0)]
        assert np.mean(ious) > 0.7 and ious[0] > 0.8, ious          # (OpenCV is not bit-deterministic)
    nolang = tmp_path / "nolang.zarr"
    from controller.dataset.writer import ZarrEpisodeWriter
    with ZarrEpisodeWriter(nolang) as w:
        w.add_episode(make_episode(0, 3, mask_value=255))
    with pytest.raises(DatasetError, match="needs the episode's language instruction or --mask-box"):
        convert(str(nolang), str(tmp_path / "x.zarr"), options=SourceOptions(mask="segment"), progress=False)
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("fmt,name", [("act_h5", "i_h5"), ("lerobot", "i_lerobot")])
def test_inspect_other_formats(text_zarr, tmp_path, capsys, fmt, name):
    from controller.dataset.inspect import main as inspect_main
    _need(fmt)
    path = tmp_path / name
    convert(text_zarr, str(path), progress=False)
    assert inspect_main([str(path), "--verify", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for text in (f"format: {fmt}", "episodes: 3", "steps: 22", "right_state", "(22, 13)", "float32",
                 "language: 3 of 3 episode(s), e.g. 'grasp the red box 0'", "reasoning: vocabulary of 2",
                 "verify: decoded 3 of 3 episode(s) / 22 of 22 step(s)", "all OK", "PASSED"):
        assert text in out, (text, out)


def test_training_on_mixed_formats(text_zarr, tmp_path):
    """train workspace (what train.py runs) for 2 steps on a zarr store, an act_h5 directory and a
    LeRobot directory together."""
    _need("act_h5")
    _need("lerobot")
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace
    from tests.controller.conftest import compose_cfg

    h5, lr = tmp_path / "b_h5", tmp_path / "c_lerobot"
    convert(text_zarr, str(h5), episodes=2, progress=False)
    convert(text_zarr, str(lr), progress=False)
    cfg = compose_cfg(["policy=tiny", "logging.mode=disabled", "dataloader.num_workers=0", "task.dataset.val_ratio=0.0",
                       f"task.dataset_paths=[{text_zarr},{h5},{lr}]", "training.num_epochs=1",
                       "training.max_train_steps=2", "training.sample_every=0"])
    metrics = TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(tmp_path / "run")).run()
    assert np.isfinite(metrics["train_loss"]), metrics
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "latest" / "model.safetensors")
    import json
    with open(tmp_path / "run" / "logs.json.txt") as f:
        steps = [json.loads(line).get("global_step") for line in f]
    assert max(s for s in steps if s is not None) == 2, steps


def test_dataset_loading_benchmark_smoke(text_zarr, tmp_path):
    """benchmarks/dataset_loading.py end to end at minimum size (from --src, no simulator)."""
    import json
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "benchmarks/dataset_loading.py", "--src", text_zarr, "--episodes", "2",
                          "--image-size", "32", "--samples", "2", "--batches", "1", "--batch-size", "2",
                          "--workers", "0", "--repeats", "1", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"zarr", "act_h5", "lerobot"}
    assert report["ratios_vs_zarr"]["zarr"]["getitem"] == 1.0 and report["data"]["episodes"] == 2
    assert "lerobot" in res.stdout and "(1.00x)" in res.stdout


def test_foreign_act_h5_with_flags(tmp_path):
    """An ALOHA-style file (cameras top / cam_right_wrist, state and action split in two, a mask image):
    --camera-map, --state-keys, --action-keys and --mask from-key reach the reader."""
    import h5py
    _need("act_h5")
    src = tmp_path / "aloha"
    src.mkdir()
    rng = np.random.default_rng(0)
    eps = []
    for ep, n in enumerate((5, 4)):
        top = rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
        wrist = rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
        seg = np.zeros((n, 24, 32), np.uint8)
        seg[:, 5:15, 8:20] = 255
        qpos, action = rng.random((n, 13), dtype=np.float32), rng.random((n, 13), dtype=np.float32)
        with h5py.File(src / f"episode_{ep}.hdf5", "w") as f:
            f["observations/images/top"], f["observations/images/cam_right_wrist"] = top, wrist
            f["observations/images/top_seg"] = seg
            f["observations/qpos"], f["observations/hand"] = qpos[:, :7], qpos[:, 7:]       # concatenated
            f["observations/qvel"], f["action_arm"], f["action_hand"] = qpos * 0, action[:, :7], action[:, 7:]
            f["action"] = action * 0       # the layout's 'action' (detection looks for it); not the one read
            f["language_raw"] = np.array([f"pick up the cup {ep}".encode()])
        eps.append((top, wrist, seg, qpos, action))
    dst = tmp_path / "aloha.zarr"
    assert convert_main([str(src), str(dst), "--camera-map", "head=top", "wrist=cam_right_wrist",
                         "--state-keys", "observations/qpos", "hand", "--action-keys", "action_arm", "action_hand",
                         "--mask", "from-key",
                         "--mask-key", "top_seg", "--no-progress"]) == 0
    out = open_source(str(dst))
    for ep, (top, wrist, seg, qpos, action) in enumerate(eps):
        got = out.get_episode(ep)
        np.testing.assert_array_equal(got["rgbm"][..., :3], top[..., ::-1])        # RGB -> BGR
        np.testing.assert_array_equal(got["rgbm"][..., 3] > 0, seg > 0)
        np.testing.assert_array_equal(got["right_cam_img"], wrist[..., ::-1])
        np.testing.assert_array_equal(got["right_state"], qpos)
        np.testing.assert_array_equal(got["action"], action)
        assert out.language(ep) == f"pick up the cup {ep}"
