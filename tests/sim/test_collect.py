"""A collected mini dataset has the controller's zarr layout; bad outputs/splits fail clearly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from controller.dataset.errors import DatasetError
from sim.collect import collect, main, open_store


def _check_store(path, n_episodes):
    root = zarr.open_group(str(path), mode="r")
    data, meta = root["data"], root["meta"]
    assert set(data.keys()) >= {"right_cam_img", "rgbm", "right_state", "action"}
    ends = meta["episode_ends"][:]
    assert ends.dtype == np.int64 and ends.shape == (n_episodes,)
    assert np.all(np.diff(np.concatenate([[0], ends])) > 0)
    k = int(ends[-1])
    assert data["right_cam_img"].shape == (k, 480, 640, 3) and data["right_cam_img"].dtype == np.uint8
    assert data["rgbm"].shape == (k, 480, 640, 4) and data["rgbm"].dtype == np.uint8
    assert data["right_state"].shape == (k, 13) and data["right_state"].dtype == np.float32
    assert data["action"].shape == (k, 13) and data["action"].dtype == np.float32
    assert data["rgbm"].chunks == (1, 480, 640, 4)
    state, action = data["right_state"][:], data["action"][:]
    assert np.all(np.abs(state[:, :7]) <= 1) and np.all((state[:, 7:] >= 0) & (state[:, 7:] <= 1))
    assert np.all(np.abs(action[:, :7]) <= 1) and np.all((action[:, 7:] >= 0) & (action[:, 7:] <= 1))
    first = data["rgbm"][0]
    assert set(np.unique(first[:, :, 3])) == {0, 255}
    return ends


def test_collect_mini_dataset_and_append(tmp_path):
    out = tmp_path / "mini.zarr"
    s = collect(str(out), episodes=1, seed=0, n_objects=(4, 5), progress=False)
    assert s["stored"] == 1 and s["failed_seeds"] == []
    ends = _check_store(out, 1)
    assert 60 <= ends[0] <= 150
    s = collect(str(out), episodes=1, seed=1, n_objects=(4, 5), progress=False)
    ends = _check_store(out, 2)
    assert s["total_episodes_in_store"] == 2
    assert len(zarr.open_group(str(out), mode="r").attrs["sim_collect"]) == 2
    try:  # the controller's own loader, when present, must accept the store as is
        from controller.dataset.replay_buffer import ZarrReplayBuffer
    except ImportError:
        return
    rb = ZarrReplayBuffer.open(str(out))
    assert list(rb.episode_ends) == list(ends)


def test_interrupted_append_is_trimmed(tmp_path):
    """The collector writes through the controller's crash-safe writer: a crash between the data
    and ``episode_ends`` leaves a tail that the next open trims; other camera sizes are refused."""
    out = tmp_path / "t.zarr"
    w = open_store(str(out), (48, 64))
    frames = {"right_cam_img": np.zeros((5, 48, 64, 3), np.uint8), "rgbm": np.zeros((5, 48, 64, 4), np.uint8),
              "right_state": np.zeros((5, 13), np.float32), "action": np.zeros((5, 13), np.float32)}
    w.add_episode(frames)
    w.data["action"].resize((8, 13))  # simulate a crash after data, before episode_ends
    w2 = open_store(str(out), (48, 64))
    assert w2.data["action"].shape[0] == 5 and w2.n_episodes == 1
    w2.add_episode(frames)
    assert list(w2.episode_ends[:]) == [5, 10]
    with pytest.raises(DatasetError, match="frame shape"):
        open_store(str(out), (480, 640))


def test_unwritable_output_and_unknown_split(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match="--out"):
        collect(str(blocker / "sub.zarr"), episodes=1, progress=False)
    assert main(["--out", str(tmp_path / "x.zarr"), "--episodes", "1", "--split", "mars"]) == 2
    err = capsys.readouterr().err
    assert "mars" in err and "unseen_lighting" in err
    assert main(["--out", str(tmp_path / "y.zarr"), "--episodes", "1", "--objects", "0", "3"]) == 2
    assert "n_objects" in capsys.readouterr().err
    with pytest.raises(Exception, match="target must be one of"):
        collect(str(tmp_path / "z.zarr"), episodes=1, target="biggest", progress=False)


@pytest.mark.parametrize("target", ["random", "planner"])
def test_target_choice_provenance(tmp_path, target):
    out = tmp_path / f"{target}.zarr"
    assert main(["--out", str(out), "--episodes", "1", "--seed", "5", "--objects", "4", "5",
                 "--target", target]) == 0
    _check_store(out, 1)
    assert zarr.open_group(str(out), mode="r").attrs["sim_collect"][-1]["target"] == target


def test_procedural_table_provenance(tmp_path):
    out = tmp_path / "procedural.zarr"
    assert main(["--out", str(out), "--episodes", "1", "--seed", "5", "--objects", "4", "5",
                 "--table", "procedural"]) == 0
    _check_store(out, 1)
    assert zarr.open_group(str(out), mode="r").attrs["sim_collect"][-1]["table"] == "procedural"


def test_recovery_collection_skips_unusable_misses(tmp_path, capsys):
    """``--recovery``: seed 0's staged miss leaves the capsule rolling (skipped, nothing stored),
    seed 1's leaves the box on the table; the stored episode starts from the closed hand."""
    out = tmp_path / "recovery.zarr"
    assert main(["--out", str(out), "--episodes", "1", "--seed", "0", "--objects", "4", "6", "--recovery"]) == 0
    assert "1 staged misses unusable" in capsys.readouterr().out
    _check_store(out, 1)
    root = zarr.open_group(str(out), mode="r")
    entry = root.attrs["sim_collect"][-1]
    assert entry["recovery"] is True and entry["skipped_seeds"] == [0] and entry["seeds"] == [1]
    assert np.all(root["data"]["right_state"][0, 7:] < 0.2)


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_signal_keeps_what_was_collected(tmp_path, workers):
    """SIGTERM (here to a process that inherited SIGINT as ignored, like a background job) stops the
    collector after the simulated episodes are written: a consistent store, provenance marked
    interrupted, exit code 130."""
    out = tmp_path / "stopped.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.collect", "--out", str(out), "--episodes", "40", "--seed", "5",
         "--objects", "4", "5", "--workers", str(workers)],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if zarr.open_group(str(out), mode="r")["meta/episode_ends"].shape[0] >= 2:
                    break
            except Exception:  # store not created yet
                pass
            time.sleep(0.5)
        assert proc.poll() is None, "collector ended before it was stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: stored" in err
    root = zarr.open_group(str(out), mode="r")
    n = root["meta/episode_ends"].shape[0]
    assert 2 <= n < 40
    _check_store(out, n)
    assert root.attrs["sim_collect"][-1]["interrupted"] is True
    assert root.attrs["sim_collect"][-1]["stored"] == n


def test_rolling_friction_flag_reaches_the_simulator(tmp_path, monkeypatch):
    """``--rolling-friction`` builds the collecting simulator with condim-6 contacts and is recorded
    in the store's provenance (the evaluation must then run with the same physics)."""
    import sim.env

    seen = []
    real = sim.env.GraspEnv

    class Recording(real):
        def __init__(self, config=None, *args, **kwargs):
            seen.append(config.rolling_friction)
            super().__init__(config, *args, **kwargs)   # condim 6 from this flag: test_rolling_friction.py

    monkeypatch.setattr(sim.env, "GraspEnv", Recording)
    out = tmp_path / "rf.zarr"
    assert main(["--out", str(out), "--episodes", "1", "--objects", "4", "5", "--seed", "3", "--rolling-friction"]) == 0
    assert seen == [True]
    assert zarr.open_group(str(out), mode="r").attrs["sim_collect"][-1]["rolling_friction"] is True
