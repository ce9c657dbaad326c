"""What training prints: ``train.py`` on the tiny preset with generated data, its console captured to a
file (not a tty): the run directory (named <date>/<time>_<task>_<policy>), one line per epoch with the
losses, the wandb line, plain progress lines instead of tqdm redraws (no carriage returns), and the
final ``checkpoints: best ..., latest ...`` line. Plus the formatting helpers and the rollout schedule."""
import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from controller.workspace.train_workspace import (TrainDexGraspVLAControllerWorkspace, checkpoints_line,
                                                  epoch_line, format_duration)
from tests.controller.conftest import REPO

BASE = ["policy=tiny", "task.dataset.val_ratio=0.25", "dataloader.num_workers=0", "val_dataloader.num_workers=0"]


@pytest.fixture(scope="module")
def console_run(tmp_path_factory):
    """One 2-epoch run from a scratch working directory (so the default ``hydra.run.dir`` applies),
    wandb offline, a plain progress line every 0.05 s."""
    from tests.controller.dataset.factories import make_grasp_zarr

    work = tmp_path_factory.mktemp("console")
    data = make_grasp_zarr(str(work / "grasp.zarr"), episode_lengths=(20, 30, 25, 15))
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    env.pop("RANK", None)
    console = work / "console.txt"
    with open(console, "w") as f:
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), *BASE, f"task.dataset_paths=[{data}]",
                               "training.num_epochs=2", "training.progress_every_sec=0.05", "logging.mode=offline"],
                              cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = console.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return work, text


def test_run_directory_line_names_task_policy_and_time(console_run):
    work, text = console_run
    m = re.search(r"^run directory: (\S+)$", text, re.M)
    assert m, text[-3000:]
    run_dir = m.group(1)
    assert re.search(r"/outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}_grasp_tiny$", run_dir), run_dir
    assert os.path.realpath(run_dir).startswith(os.path.realpath(work))
    assert os.path.isfile(os.path.join(run_dir, "logs.json.txt"))
    assert text.index("run directory:") < text.index("policy:")  # printed first, before the build


def test_one_line_per_epoch_with_losses(console_run):
    _, text = console_run
    lines = re.findall(r"^epoch (\d) \[(\d)/2\]  train_loss (\d+\.\d{4})  val_loss (\d+\.\d{4}).*"
                       r"  lr \S+  ([\d.]+) samples/s  \S+/epoch  ETA (\S+)$", text, re.M)
    assert [(e, n) for e, n, *_ in lines] == [("0", "1"), ("1", "2")], text[-3000:]
    for _, _, train_loss, val_loss, sps, _ in lines:
        assert 0 < float(train_loss) < 100 and 0 < float(val_loss) < 100 and float(sps) > 0
    assert lines[-1][-1] == "0:00"  # nothing left after the last epoch
    assert "val_mse " in text


def test_final_line_gives_best_and_latest_checkpoints(console_run):
    _, text = console_run
    last = text.strip().splitlines()[-1]
    m = re.fullmatch(r"checkpoints: best (\S+) \(train_loss=(\d+\.\d{4})\), latest (\S+)", last)
    assert m, text[-3000:]
    best, latest = m.group(1), m.group(3)
    assert os.path.basename(best).startswith("epoch=") and os.path.isfile(os.path.join(best, "model.safetensors"))
    assert latest.endswith(os.path.join("checkpoints", "latest"))
    assert os.path.isfile(os.path.join(latest, "meta.json"))


def test_no_carriage_return_spam_in_a_log_file(console_run):
    _, text = console_run
    assert "\r" not in text
    assert "\x1b[" not in text  # no terminal escape sequences either
    assert re.search(r"^  epoch 0: batch \d+/18 \(\d+%\)  loss \d+\.\d{4}", text, re.M), text[-3000:]


def test_wandb_offline_line(console_run):
    _, text = console_run
    m = re.search(r"^wandb: offline run in (\S+) \(upload: wandb sync \1\)", text, re.M)
    assert m, text[-3000:]
    assert os.path.isdir(m.group(1)) and os.path.basename(m.group(1)).startswith("offline-run")


# ---------------------------------------------------------------------------- helpers, no training
def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(65) == "1:05"
    assert format_duration(3725) == "1:02:05"


def test_epoch_line_lists_what_was_computed():
    line = epoch_line(0, 10, {"train_loss": 0.5, "rollout/train/success_rate": 0.3}, 1e-4, 12.34, 61, 549)
    assert line == ("epoch 0 [1/10]  train_loss 0.5000  rollout_train 30%  lr 1.00e-04  12.3 samples/s  "
                    "1:01/epoch  ETA 9:09")


def test_checkpoints_line_without_best_or_latest():
    assert checkpoints_line(None, "train_loss", None) == (
        "checkpoints: best none (checkpoint.topk.k=0), latest none (checkpoint.save_last_ckpt=false)")


@pytest.mark.parametrize("every,at_start,expected", [
    (0, False, []),                 # default: off, not even after the last epoch
    (0, True, []),
    (3, False, [2, 5, 6]),          # after every 3rd completed epoch and after the last; never after epoch 0
    (3, True, [0, 2, 5, 6]),
    (1, False, list(range(7))),
])
def test_rollout_schedule(every, at_start, expected):
    ws = TrainDexGraspVLAControllerWorkspace.__new__(TrainDexGraspVLAControllerWorkspace)
    ws.cfg = OmegaConf.create({"training": {"rollout_every": every, "rollout_at_start": at_start}})
    due = []
    for epoch in range(7):
        ws.epoch = epoch
        if ws._rollout_due(last=epoch == 6):
            due.append(epoch)
    assert due == expected


def test_two_processes_one_console(tmp_path):
    """Under ``train.sh`` with 2 CPU processes only rank 0 logs INFO and prints the console lines."""
    import socket

    from tests.controller.conftest import run_cli
    from tests.controller.dataset.factories import make_grasp_zarr

    data = make_grasp_zarr(str(tmp_path / "grasp.zarr"), episode_lengths=(20, 30, 25, 15))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_cli([str(REPO / "train.sh"), *BASE, "logging.mode=disabled", f"task.dataset_paths=[{data}]",
                   "training.num_epochs=1", "training.max_train_steps=2", "training.sample_every=0",
                   f"hydra.run.dir={tmp_path / 'run'}"],
                  env={"NUM_PROCESSES": "2", "MAIN_PROCESS_PORT": str(port), "PYTHON": sys.executable})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "2 process(es) on cpu" in out
    assert out.count("[INFO] - obs encoder:") == 1, out[-4000:]  # rank 1's INFO is silenced
    assert out.count("run directory: ") == 1 and len(re.findall(r"^epoch 0 \[1/1\]", out, re.M)) == 1
    assert len(re.findall(r"^checkpoints: best ", out, re.M)) == 1


def test_wandb_line_per_mode():
    from types import SimpleNamespace

    from controller.workspace.train_workspace import wandb_line

    online = SimpleNamespace(url="https://wandb.ai/me/proj/runs/abc", offline=False, disabled=False, dir="/r/wandb/x/files")
    assert wandb_line(online, "online", "/r") == "wandb: https://wandb.ai/me/proj/runs/abc"
    offline = SimpleNamespace(url=None, offline=True, disabled=False, dir="/r/wandb/offline-run-1/files")
    assert wandb_line(offline, "offline", "/r") == ("wandb: offline run in /r/wandb/offline-run-1 "
                                                    "(upload: wandb sync /r/wandb/offline-run-1)")
    assert wandb_line(None, "disabled", "/r") == "wandb: disabled (logging.mode=disabled); metrics in /r/logs.json.txt"
    forced = SimpleNamespace(url=None, offline=False, disabled=True, dir=None)
    assert wandb_line(forced, "online", "/r").startswith("wandb: disabled (WANDB_MODE=disabled)")
