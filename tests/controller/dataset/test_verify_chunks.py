"""Damaged zarr chunks are found and named, never silently read as zeros or garbage.

Covers ``python -m controller.dataset.inspect PATH --verify`` (full decode), the cheap start-up
check of :meth:`ZarrReplayBuffer.open` / :class:`GraspDataset` (``verify_chunks``, stat only) and
the error raised when a damaged chunk is read during training -- for zarr v2 and v3 stores written
by the project's own writer.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from controller.dataset.errors import ChunkError, DatasetError
from controller.dataset.inspect import inspect_store, main
from controller.dataset.replay_buffer import ZarrReplayBuffer
from controller.dataset.writer import write_episodes
from tests.controller.dataset.factories import make_episode, make_grasp_zarr

REPO = Path(__file__).resolve().parents[3]
#: The damaged chunk: frame 3 of the head camera (one frame per chunk).
ARRAY, CHUNK = "data/rgbm", "3.0.0.0"
CHUNK_FILE = {2: "data/rgbm/3.0.0.0", 3: "data/rgbm/c/3/0/0/0"}


@pytest.fixture(params=[2, 3], ids=["v2", "v3"])
def store(request, tmp_path):
    """(path, zarr_format, chunk file of data/rgbm chunk 3.0.0.0) of a fresh 2-episode store."""
    fmt = request.param
    path = make_grasp_zarr(tmp_path / f"grasp_v{fmt}.zarr", episode_lengths=(3, 4), zarr_format=fmt)
    chunk = Path(path) / CHUNK_FILE[fmt]
    assert chunk.is_file() and chunk.stat().st_size > 1000
    return path, fmt, chunk


def _truncate(chunk: Path) -> None:
    with open(chunk, "r+b") as f:
        f.truncate(chunk.stat().st_size // 2)


def _truncate_to_zero(chunk: Path) -> None:
    with open(chunk, "r+b") as f:
        f.truncate(0)


def _delete(chunk: Path) -> None:
    chunk.unlink()


def _random_bytes(chunk: Path) -> None:
    n = chunk.stat().st_size
    chunk.write_bytes(np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes())


DAMAGE = {"truncated": _truncate, "truncated-to-zero": _truncate_to_zero, "deleted": _delete,
          "random-bytes": _random_bytes}
#: What the report calls each damage.
KIND = {"truncated": "is truncated", "truncated-to-zero": "is empty (0 bytes)", "deleted": "is missing",
        "random-bytes": "is not a valid blosc chunk"}


def _run_verify(path: str, capsys) -> tuple[int, str]:
    code = main([path, "--verify", "--no-progress"])
    return code, capsys.readouterr().out


# ---------------------------------------------------------------------------------- inspect --verify
def test_clean_store_passes(store, capsys):
    path, _, _ = store
    code, out = _run_verify(path, capsys)
    assert code == 0, out
    assert "chunks: 17 chunk file(s) of 5 array(s) checked (stat + blosc header + decode)" in out
    assert "all OK" in out and "PASSED" in out and "ERROR" not in out
    ZarrReplayBuffer.open(path, verify_chunks=True)  # the start-up check passes too


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_names_the_damaged_chunk(store, damage, capsys):
    path, _, chunk = store
    DAMAGE[damage](chunk)
    code, out = _run_verify(path, capsys)
    assert code != 0, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert any(f"key '{ARRAY}' chunk {CHUNK} ({chunk}" in e and KIND[damage] in e and "expected" in e
               for e in errors), out
    assert "steps 3..3" in out                       # which frames are affected
    assert "1 bad (" in out and "FAILED: 1 of 1 store(s)" in out
    assert out.rstrip().splitlines()[-1].startswith("FAILED")  # the summary line comes last


def test_verify_via_subprocess(store):
    path, _, chunk = store
    _random_bytes(chunk)
    proc = subprocess.run([sys.executable, "-m", "controller.dataset.inspect", path, "--verify"],
                          capture_output=True, text=True, cwd=REPO, timeout=180)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"key '{ARRAY}' chunk {CHUNK} ({chunk}" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_plain_inspect_stats_chunks(store, capsys):
    """Without --verify a deleted chunk is still an error (stat only, nothing decoded)."""
    path, _, chunk = store
    _delete(chunk)
    assert main([path]) == 1
    out = capsys.readouterr().out
    assert f"key '{ARRAY}' chunk {CHUNK}" in out and "is missing" in out and "stat only" in out


def test_verify_zip_store(tmp_path, capsys):
    path = make_grasp_zarr(tmp_path / "z.zarr", episode_lengths=(3, 4))
    _random_bytes(Path(path) / CHUNK_FILE[2])
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(Path(path).rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(path).as_posix())
    code, out = _run_verify(str(zpath), capsys)
    assert code == 1
    assert f"key '{ARRAY}' chunk {CHUNK} ({zpath}::{CHUNK_FILE[2]}" in out, out
    with pytest.raises(ChunkError, match=f"chunk {CHUNK}"):
        ZarrReplayBuffer.open(zpath)["rgbm"][3]


def test_verify_finds_undecodable_chunk_with_valid_header(store, capsys):
    """A chunk whose blosc header is intact but whose payload is garbage fails to decode."""
    path, fmt, _ = store
    chunk = Path(path) / {2: "data/action/0.0", 3: "data/action/c/0/0"}[fmt]
    raw = bytearray(chunk.read_bytes())
    raw[16:] = np.random.default_rng(1).integers(0, 256, len(raw) - 16, dtype=np.uint8).tobytes()
    chunk.write_bytes(bytes(raw))
    code, out = _run_verify(path, capsys)
    assert code == 1
    assert "key 'data/action' chunk 0.0" in out and "could not be decoded" in out, out
    with pytest.raises(ChunkError, match=r"key 'data/action' chunk 0\.0 .* could not be decoded") as info:
        ZarrReplayBuffer.open(path)      # the low-dim arrays are read at open
    assert info.value.array == "data/action" and info.value.chunk == "0.0"
    assert info.value.kind == "undecodable" and info.value.file == str(chunk)


def test_verify_flags_per_step_array_of_wrong_length(store, capsys):
    path, _, _ = store
    zarr.open_group(path, mode="r+")["data"].create_array("extra", data=np.ones((5, 2), np.float32))
    code, out = _run_verify(path, capsys)
    assert code == 1
    assert "key 'data/extra' has shape (5, 2) (5 steps) but 'meta/episode_ends'[-1] is 7" in out, out


# ---------------------------------------------------------------------------------- start-up check
@pytest.mark.parametrize("damage", ["deleted", "truncated-to-zero"])
def test_startup_check_catches_missing_and_empty_chunks(store, damage, shape_meta):
    from controller.dataset.grasp_dataset import GraspDataset

    path, _, chunk = store
    DAMAGE[damage](chunk)
    with pytest.raises(ChunkError) as info:
        ZarrReplayBuffer.open(path)
    err = info.value
    assert isinstance(err, DatasetError)
    assert (err.array, err.chunk, err.file) == (ARRAY, CHUNK, str(chunk))
    msg = str(err)
    assert f"key '{ARRAY}' chunk {CHUNK}" in msg and KIND[damage] in msg and "expected" in msg
    assert "--verify" in msg and "verify_chunks: false" in msg
    with pytest.raises(ChunkError, match=f"key '{ARRAY}' chunk {CHUNK}"):
        GraspDataset([path], shape_meta)
    # opting out opens the store; the deleted frame then reads as zeros, which is what the check prevents
    ds = GraspDataset([path], shape_meta, verify_chunks=False)
    if damage == "deleted":
        assert not ds.replay_buffers[0]["rgbm"][3].any()


def test_startup_check_names_episode_ends_chunk(store):
    path, fmt, _ = store
    (Path(path) / {2: "meta/episode_ends/0", 3: "meta/episode_ends/c/0"}[fmt]).unlink()
    want = r"key 'meta/episode_ends' chunk 0 .*episodes 0\.\.1\) is missing .*fill value 0\)"
    with pytest.raises(ChunkError, match=want):
        ZarrReplayBuffer.open(path)


def test_task_configs_enable_the_check():
    for name in ("grasp", "sim_grasp"):
        text = (REPO / "controller" / "config" / "task" / f"{name}.yaml").read_text()
        assert "\n  verify_chunks: true" in text, name


# ---------------------------------------------------------------------------------- reads in training
@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_reading_a_damaged_chunk_names_it(store, damage, shape_meta):
    """Sizes still plausible (the start-up check passes); the read itself raises a named error
    instead of blosc's anonymous RuntimeError (random bytes) or garbage pixels (truncation)."""
    from controller.dataset.grasp_dataset import GraspDataset

    path, _, chunk = store
    DAMAGE[damage](chunk)
    rb = ZarrReplayBuffer.open(path)
    assert rb["rgbm"][2].shape == (48, 64, 4)            # healthy neighbours still read
    with pytest.raises(ChunkError) as info:
        rb["rgbm"][3]
    assert (info.value.array, info.value.chunk, info.value.file) == (ARRAY, CHUNK, str(chunk))
    assert KIND[damage] in str(info.value)
    with pytest.raises(ChunkError, match=f"chunk {CHUNK}"):
        rb["rgbm"][0:7]                                  # bulk reads too
    ds = GraspDataset([path], shape_meta)
    with pytest.raises(ChunkError, match=f"key '{ARRAY}' chunk {CHUNK}"):
        for i in range(len(ds)):
            ds[i]


def test_writer_stores_fill_value_chunks(tmp_path):
    """An all-zero frame (black image, empty mask) still gets its chunk file, so a missing chunk
    file always means damage."""
    ep = make_episode(0, 3)
    ep["rgbm"][1] = 0
    ep["right_cam_img"][1] = 0
    for fmt in (2, 3):
        path = write_episodes(tmp_path / f"zeros_v{fmt}.zarr", [ep], zarr_format=fmt)
        rel = {2: "1.0.0.0", 3: os.path.join("c", "1", "0", "0", "0")}[fmt]
        assert (Path(path) / "data" / "rgbm" / rel).is_file()
        assert (Path(path) / "data" / "right_cam_img" / rel).is_file()
        report = inspect_store(path, verify=True)
        assert not report.errors, report.errors
