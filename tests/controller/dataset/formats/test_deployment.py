"""deployment format: recordings made by the real DeploymentRecorder -> source -> GraspDataset -> training."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from controller.dataset.errors import DatasetError
from controller.dataset.formats import detect_format, open_sink, open_source
from controller.dataset.formats.deployment import DeploymentSource
from inference_utils.runtime.recorder import DeploymentRecorder
from tests.controller.dataset.factories import make_episode, make_grasp_zarr

LENGTHS = (12, 3, 9)  # the attempt of 3 steps is shorter than the 64-step horizon


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Three attempts (and an empty one) written by the real recorder; returns (dir, episodes)."""
    out = tmp_path_factory.mktemp("deploy") / "deployment_data"
    rec = DeploymentRecorder(out, fps=10.0)
    episodes = []
    names = ["attempt_000", "attempt_001", "attempt_002", "attempt_010"]   # attempt_010 sorts last
    for i, name in enumerate(names):
        rec.start_attempt(name)
        if i == 2:   # an attempt that never recorded a frame
            rec.end_attempt()
            continue
        ep = make_episode(i, LENGTHS[min(i, 2)], hw=(48, 64), mask_value=255)
        for t in range(len(ep["action"])):
            rec.add(ep["right_cam_img"][t], ep["rgbm"][t], ep["right_state"][t], ep["action"][t])
        rec.end_attempt()
        episodes.append(ep)
    rec.close()
    return out, episodes


def test_read_recordings(recordings):
    path, episodes = recordings
    assert detect_format(path) == "deployment"
    src = open_source(path)
    assert isinstance(src, DeploymentSource) and src.format_name == "deployment"
    assert list(src.episode_lengths) == list(LENGTHS) and len(src.skipped) == 1
    for i, ep in enumerate(episodes):
        got = src.get_episode(i)
        for key in ep:
            np.testing.assert_array_equal(got[key], ep[key], err_msg=key)
    assert src.language(0) is None and src.reasoning(5) is None
    d = src.describe()
    assert d["format"] == "deployment" and d["skipped_empty"] == ["attempt_002.hdf5"]
    assert d["keys"]["rgbm"]["shape"] == (sum(LENGTHS), 48, 64, 4)


def test_bad_recording_named(tmp_path, recordings):
    path, _ = recordings
    bad = tmp_path / "attempt_000.hdf5"
    with h5py.File(path / "attempt_000.hdf5") as f, h5py.File(bad, "w") as g:
        for k in f:
            g[k] = f[k][()] if k != "state" else f[k][:-1]
    with pytest.raises(DatasetError, match=rf"{bad}: per-step keys disagree in length .*'state': 11"):
        open_source(tmp_path)


def test_mixed_formats_with_text_and_workers(tmp_path, recordings, shape_meta):
    """zarr + act_h5 + deployment in one GraspDataset; text as strings; a DataLoader worker."""
    from controller.dataset.grasp_dataset import GraspDataset

    path, _ = recordings
    z = make_grasp_zarr(tmp_path / "a.zarr", episode_lengths=(6,))
    with open_sink(tmp_path / "b_h5", "act_h5") as sink:
        sink.add_episode(make_episode(5, 7, hw=(48, 64)), language="lift it", reasoning=["r1"] * 3 + ["r2"] * 4)
    h5 = str(tmp_path / "b_h5")
    ds = GraspDataset([z, h5, str(path)], shape_meta, load_text=True,
                      dataset_options={h5: {"camera_map": {"head": "head", "wrist": "wrist"}}})
    assert [rb.format_name for rb in ds.replay_buffers] == ["zarr", "act_h5", "deployment"]
    texts = {(ds[i]["language"], ds[i]["reasoning"]) for i in range(len(ds))}
    assert texts == {("", ""), ("lift it", "r1"), ("lift it", "r2")}
    picks = [len(ds) - 1, 8, 6, 20]          # deployment, act_h5, act_h5, deployment windows
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, picks), batch_size=4, num_workers=1)
    batch = next(iter(loader))                # HDF5 files reopened inside the forked worker
    assert batch["language"] == ["", "lift it", "lift it", ""] and batch["obs"]["rgbm"].shape[0] == 4
    for row, i in enumerate(picks):
        torch.testing.assert_close(batch["obs"]["rgbm"][row], ds[i]["obs"]["rgbm"], rtol=0, atol=0)
    with pytest.raises(DatasetError, match=r"dataset_options keys \['nope'\] are neither option names"):
        GraspDataset([z], shape_meta, dataset_options={"nope": {}})
    with pytest.raises(DatasetError, match="cache_dir needs zarr stores"):
        GraspDataset([z, str(path)], shape_meta, cache_dir=str(tmp_path / "cache"))


def test_two_step_training_on_recordings(tmp_path, recordings):
    from tests.controller.conftest import compose_cfg
    from controller.workspace.train_workspace import TrainDexGraspVLAControllerWorkspace

    path, _ = recordings
    cfg = compose_cfg(["policy=tiny", "logging.mode=disabled", f"task.dataset_paths=[{path}]",
                       "dataloader.num_workers=0", "dataloader.batch_size=2", "training.num_epochs=1",
                       "training.max_train_steps=2", "training.max_val_steps=1", "task.dataset.val_ratio=0.34",
                       "training.gen_attn_map=false", "task.dataset.load_text=true"])
    out = tmp_path / "run"
    TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(out)).run()
    meta = json.load(open(os.path.join(out, "checkpoints", "latest", "meta.json")))
    assert meta["global_step"] == 2
