"""``python -m sim.evaluate --checkpoint DEXVLA`` (issue 23): the DexVLA checkpoint is detected, gets
the instruction naming the target, and its reasoning per chunk lands in the records and the video
caption."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_evaluate_cli_runs_a_dexvla_checkpoint(tmp_path):
    import cv2

    from sim.evaluate import main
    from tests.controller.dexvla_helpers import make_tiny_dexvla_checkpoint

    ckpt = make_tiny_dexvla_checkpoint(tmp_path)
    out = tmp_path / "eval"
    assert main(["--checkpoint", ckpt, "--split", "train", "--episodes", "1", "--video", "1", "--time-limit", "0.5",
                 "--num-samples", "1", "--device", "cpu", "--out", str(out)]) == 0
    rec = json.loads((out / "summary_train.json").read_text())["records"][0]
    assert rec["instruction"] == f"grasp the {rec['target']}"
    assert len(rec["reasoning"]) == rec["chunks"] and all(rec["reasoning"])
    cap = cv2.VideoCapture(rec["video"])
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[0] % 8 == 0 and frame[:24].max() > 100    # captioned
