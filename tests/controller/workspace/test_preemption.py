"""Pre-emption: SIGTERM / SIGINT make training save a resumable ``checkpoints/latest`` (mid-epoch
position included) and exit with 128 + the signal number; resuming with ``training.resume=true``
gives the same per-step losses, epoch metrics and weights, bit for bit, as an uninterrupted run.

The signalled runs are real ``train.py`` / ``train.sh`` subprocesses, signalled once their
``logs.json.txt`` shows a given step (polled with a deadline). The uninterrupted one-process
references run in-process (same config, same code path below Hydra; cheaper).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from controller.common.samplers import EpochSeededDataset, EpochShuffleSampler, sample_seed
from controller.workspace.train_workspace import (TrainDexGraspVLAControllerWorkspace, TrainingPreempted,
                                                  preempted_message, signal_number)
from tests.controller.conftest import REPO, compose_cfg
from tests.controller.workspace.test_training import _log, _weights

BASE = ["policy=tiny", "logging.mode=disabled", "task.dataset.val_ratio=0.25"]
PLAIN = ["dataloader.num_workers=0"]
STEPS_PER_EPOCH = 18  # 70 train samples, batch 4, one process (9 per rank with two)
TIMEOUT = 240         # seconds any one training subprocess may take (a loaded CI machine)


# ---------------------------------------------------------------------------- helpers
def _overrides(data, extra):
    return [*BASE, f"task.dataset_paths=[{data}]", *extra]


def _train_in_process(out_dir, data, extra=()):
    cfg = compose_cfg(_overrides(data, extra))
    return TrainDexGraspVLAControllerWorkspace(cfg, output_dir=str(out_dir)).run()


def _assert_same_weights(a_dir, b_dir, name="latest"):
    a, b = _weights(a_dir, name), _weights(b_dir, name)
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"


def _meta(run_dir):
    return json.load(open(os.path.join(run_dir, "checkpoints", "latest", "meta.json")))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Training:
    """One training subprocess in its own session (so a signal to its process group reaches its
    DataLoader workers too, as a cluster's does, and nothing else), console captured to a file."""

    def __init__(self, run_dir, args, env=None):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.console_path = os.path.join(run_dir, "console.txt")
        full_env = dict(os.environ)
        full_env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                         "PYTHON": sys.executable, **(env or {})})
        cmd = list(args) if str(args[0]).endswith(".sh") else [sys.executable, *args]
        with open(self.console_path, "w") as console:
            self.proc = subprocess.Popen([*cmd, f"hydra.run.dir={run_dir}"], cwd=REPO, env=full_env,
                                         stdout=console, stderr=subprocess.STDOUT, start_new_session=True)

    def console(self):
        with open(self.console_path, errors="replace") as f:
            return f.read().replace("\r", "\n")

    def wait_for_step(self, step):
        """Block until logs.json.txt has a record of ``global_step >= step``; fail if the process
        exits first or the deadline passes."""
        log, deadline = os.path.join(self.run_dir, "logs.json.txt"), time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"training exited ({self.proc.returncode}) before step {step}:\n{self.console()[-4000:]}")
            if os.path.exists(log):
                with open(log) as f:
                    for line in f:
                        try:
                            if json.loads(line).get("global_step", 0) >= step:
                                return
                        except json.JSONDecodeError:
                            pass  # the line being written
            time.sleep(0.01)
        self.kill()
        pytest.fail(f"no step {step} within {TIMEOUT}s:\n{self.console()[-4000:]}")

    def wait(self):
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"training did not exit within {TIMEOUT}s:\n{self.console()[-4000:]}")

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _rank_pid(launcher_pid, rank):
    """pid of the training process with environment RANK=rank among the launcher's descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, found = [launcher_pid], []
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and any(e.startswith(b"LOCAL_RANK=") for e in env):
                found.append(pid)
    # the rank process itself, not a DataLoader worker it forked (those inherit the environment)
    roots = [p for p in found if not any(p in children.get(q, []) for q in found)]
    assert len(roots) == 1, f"expected one process with RANK={rank}, found {found}"
    return roots[0]


def _check_preempted(training, rc, signum, epoch):
    """Exit code, final message and the mid-epoch checkpoint of a signalled one-process run."""
    console = training.console()
    assert rc == 128 + signum, f"exit code {rc}, want {128 + signum}:\n{console[-4000:]}"
    meta = _meta(training.run_dir)
    latest = os.path.join(training.run_dir, "checkpoints", "latest")
    assert preempted_message(epoch, meta["global_step"], latest) in console
    assert meta["epoch"] == epoch and meta["preempted"] == signal.Signals(signum).name
    done = meta["mid_epoch"]["batches_done"]
    assert 0 < done <= STEPS_PER_EPOCH and meta["global_step"] == epoch * STEPS_PER_EPOCH + done
    state = torch.load(os.path.join(latest, "training_state.pt"), weights_only=True)
    assert state["mid_epoch"]["batches_done"] == done and len(state["mid_epoch"]["losses"][0]) == done
    return meta


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.controller.dataset.factories import make_grasp_zarr
    return make_grasp_zarr(str(tmp_path_factory.mktemp("d") / "grasp.zarr"), episode_lengths=(20, 30, 25, 15))


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory, dataset):
    """Uninterrupted 2-epoch run, num_workers=0."""
    out = str(tmp_path_factory.mktemp("plain_ref"))
    _train_in_process(out, dataset, PLAIN)
    return out


@pytest.fixture(scope="module")
def worker_config(tmp_path_factory, dataset):
    """Overrides of a run whose samples draw randomness inside persistent DataLoader workers (2 for
    training, 1 for validation): a feature cache with two jittered copies per frame, one picked per
    sample with torch.randint."""
    from controller.dataset.cache_features import main as cache_main
    cache = str(tmp_path_factory.mktemp("fc") / "jitter.zarr")
    cache_main(["policy=tiny", f"task.dataset_paths=[{dataset}]", f"feature_cache.out={cache}",
                "feature_cache.batch_size=16", "feature_cache.jitter_copies=2"])
    return [f"feature_cache.path={cache}", "dataloader.num_workers=2", "dataloader.persistent_workers=true",
            "val_dataloader.num_workers=1", "val_dataloader.persistent_workers=true"]


# ---------------------------------------------------------------------------- one process
def test_sigterm_mid_epoch_then_resume_is_exact(tmp_path, dataset, worker_config):
    """SIGTERM to the whole process group (as SLURM does: DataLoader workers included) in the middle
    of epoch 1; the resumed run matches the uninterrupted one bit for bit although the dataset draws
    randomness in the workers and the workers are persistent."""
    reference = tmp_path / "reference"
    _train_in_process(reference, dataset, worker_config)
    run_dir = str(tmp_path / "run")
    args = ["train.py", *_overrides(dataset, worker_config)]
    training = Training(run_dir, args)
    try:
        training.wait_for_step(STEPS_PER_EPOCH + 3)
        os.killpg(training.proc.pid, signal.SIGTERM)
        rc = training.wait()
    finally:
        training.kill()
    meta = _check_preempted(training, rc, signal.SIGTERM, epoch=1)
    assert _log(run_dir) == _log(reference)[:len(_log(run_dir))]
    assert meta["global_step"] < 2 * STEPS_PER_EPOCH

    resumed = Training(run_dir, [*args, "training.resume=true"])
    try:
        rc = resumed.wait()
    finally:
        resumed.kill()
    assert rc == 0, resumed.console()[-4000:]
    assert f"epoch 1 after batch {meta['mid_epoch']['batches_done']}" in resumed.console()
    assert _log(run_dir) == _log(reference)  # per-step losses, lr, epoch means, val and sample metrics
    _assert_same_weights(reference, run_dir)


def test_sigint_exits_130_and_resumes_exactly(tmp_path, dataset, plain_reference):
    """SIGINT (Ctrl-C) to the training process alone, in epoch 0, without DataLoader workers."""
    run_dir = str(tmp_path / "run")
    args = ["train.py", *_overrides(dataset, PLAIN)]
    training = Training(run_dir, args)
    try:
        training.wait_for_step(3)
        training.proc.send_signal(signal.SIGINT)
        rc = training.wait()
    finally:
        training.kill()
    _check_preempted(training, rc, signal.SIGINT, epoch=0)
    resumed = Training(run_dir, [*args, "training.resume=true"])
    try:
        assert resumed.wait() == 0, resumed.console()[-4000:]
    finally:
        resumed.kill()
    assert _log(run_dir) == _log(plain_reference)
    _assert_same_weights(plain_reference, run_dir)


@pytest.mark.parametrize("save_last_ckpt", [True, False])
def test_signal_during_end_of_epoch_work(tmp_path, dataset, plain_reference, monkeypatch, save_last_ckpt):
    """A signal during validation lets the epoch's work finish (metrics, regular checkpoints), then
    stops with ``latest`` at the completed epoch -- the one the regular save wrote, or a new one when
    ``checkpoint.save_last_ckpt=false``. The signal handlers are restored when run() ends."""
    original = TrainDexGraspVLAControllerWorkspace._val_loss

    def val_loss_signalled(self, acc):
        if self.epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, acc)

    monkeypatch.setattr(TrainDexGraspVLAControllerWorkspace, "_val_loss", val_loss_signalled)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    extra = [*PLAIN, f"checkpoint.save_last_ckpt={str(save_last_ckpt).lower()}"]
    with pytest.raises(TrainingPreempted) as info:
        _train_in_process(tmp_path, dataset, extra)
    assert {s: signal.getsignal(s) for s in before} == before
    err = info.value
    assert (err.code, err.epoch, err.global_step, err.mid_epoch) == (143, 0, STEPS_PER_EPOCH, False)
    meta = _meta(tmp_path)
    assert meta["epoch"] == 0 and meta["global_step"] == STEPS_PER_EPOCH
    # saved once: by the regular epoch-end path, or by the pre-emption path when that one is off
    assert ("preempted" in meta) is (not save_last_ckpt)
    assert _log(tmp_path) == _log(plain_reference)[:STEPS_PER_EPOCH + 1]  # the epoch-0 metrics are logged

    monkeypatch.setattr(TrainDexGraspVLAControllerWorkspace, "_val_loss", original)
    _train_in_process(tmp_path, dataset, [*extra, "training.resume=true"])
    assert _log(tmp_path) == _log(plain_reference)
    if save_last_ckpt:
        _assert_same_weights(plain_reference, tmp_path)
    else:
        name = next(n for n in os.listdir(os.path.join(plain_reference, "checkpoints")) if n.startswith("epoch=0001"))
        _assert_same_weights(plain_reference, tmp_path, name)


def test_signal_between_accumulated_micro_batches_waits_for_the_optimiser_step(tmp_path, dataset, monkeypatch):
    """Gradient accumulation (2) + EMA, in-process: a SIGTERM right after micro-batch 9 (no optimiser
    step there) stops after micro-batch 10 (step 5), so no half-accumulated gradient is lost; the
    resumed run's losses, weights and EMA weights equal the uninterrupted run's."""
    from controller.common.json_logger import JsonLogger

    extra = [*PLAIN, "training.gradient_accumulate_every=2", "training.use_ema=true"]
    reference = tmp_path / "reference"
    _train_in_process(reference, dataset, extra)
    original_log, records = JsonLogger.log, []

    def log_then_signal(self, data):
        original_log(self, data)
        records.append(data)
        if len(records) == 9:  # the 9th micro-batch's record (global_step 4, between steps)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(JsonLogger, "log", log_then_signal)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingPreempted) as info:
        _train_in_process(run_dir, dataset, extra)
    assert (info.value.code, info.value.epoch, info.value.global_step, info.value.mid_epoch) == (143, 0, 5, True)
    assert _meta(run_dir)["mid_epoch"] == {"batches_done": 10}
    monkeypatch.setattr(JsonLogger, "log", original_log)
    _train_in_process(run_dir, dataset, [*extra, "training.resume=true"])
    assert _log(run_dir) == _log(reference)
    _assert_same_weights(reference, run_dir)
    ema_a = load_file(os.path.join(reference, "checkpoints", "latest", "ema.safetensors"))
    ema_b = load_file(os.path.join(run_dir, "checkpoints", "latest", "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


# ---------------------------------------------------------------------------- two processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank processes in /proc")
def test_two_processes_agree_on_the_stop_step(tmp_path, dataset):
    """torchrun + gloo with 2 CPU processes: SIGTERM reaches rank 1 only; both ranks stop after the
    same optimiser step, rank 0 saves, and the resumed 2-process run equals an uninterrupted one."""
    args = [str(REPO / "train.sh"), *_overrides(dataset, PLAIN)]

    def launch(run_dir, *extra):
        return Training(str(run_dir), [*args, *extra], env={"NUM_PROCESSES": "2",
                                                             "MAIN_PROCESS_PORT": str(_free_port())})

    reference = launch(tmp_path / "reference")
    try:
        assert reference.wait() == 0, reference.console()[-4000:]
    finally:
        reference.kill()
    run_dir = str(tmp_path / "run")
    training = launch(run_dir)
    try:
        training.wait_for_step(3)
        os.kill(_rank_pid(training.proc.pid, 1), signal.SIGTERM)
        rc = training.wait()
    finally:
        training.kill()
    console = training.console()
    assert rc != 0, console[-4000:]  # torchrun reports its workers' exit code 143 as a failure
    meta = _meta(run_dir)
    latest = os.path.join(run_dir, "checkpoints", "latest")
    assert preempted_message(meta["epoch"], meta["global_step"], latest) in console, console[-4000:]
    done = meta["mid_epoch"]["batches_done"]  # 9 batches per rank and epoch
    assert meta["preempted"] == "SIGTERM" and 0 < done <= 9 and meta["global_step"] == meta["epoch"] * 9 + done
    state = torch.load(os.path.join(latest, "training_state.pt"), weights_only=True)
    assert len(state["rng"]) == 2 and [len(x) for x in state["mid_epoch"]["losses"]] == [done, done]

    resumed = launch(run_dir, "training.resume=true")
    try:
        assert resumed.wait() == 0, resumed.console()[-4000:]
    finally:
        resumed.kill()
    assert _log(run_dir) == _log(reference.run_dir)
    _assert_same_weights(reference.run_dir, run_dir)


# ---------------------------------------------------------------------------- units
def test_sampler_start_offset_continues_every_rank():
    for replicas in (1, 2, 3):
        for rank in range(replicas):
            s = EpochShuffleSampler(70, replicas, rank, seed=5)
            s.set_epoch(3)
            full = list(s)
            assert len(s) == len(full) == s.num_samples
            for k in (0, 1, 4, len(full) // 4):
                s.set_epoch(3, start=k * 4 * replicas)  # k batches of 4 per rank consumed
                assert list(s) == full[k * 4:] and len(s) == len(full) - k * 4
            s.set_epoch(3, start=s.num_samples * replicas)
            assert list(s) == [] and len(s) == 0
    keyed = EpochShuffleSampler(10, seed=1, with_epoch=True)
    keyed.set_epoch(2)
    plain = EpochShuffleSampler(10, seed=1)
    plain.set_epoch(2)
    assert list(keyed) == [(2, i) for i in plain]
    with pytest.raises(ValueError, match="start"):
        keyed.set_epoch(0, start=-1)


def test_epoch_seeded_dataset_depends_only_on_seed_epoch_index():
    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return float(torch.rand(())), i

    ds = EpochSeededDataset(Draws(), seed=3)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [ds[(1, i)] for i in range(8)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    torch.manual_seed(123)
    b = [ds[(1, i)] for i in reversed(range(8))][::-1]  # another order, another global state
    assert a == b
    assert [x for x, _ in a] != [x for x, _ in (ds[(2, i)] for i in range(8))]  # a new epoch draws anew
    assert ds[4] == ds[(0, 4)] and sample_seed(3, 1, 4) != sample_seed(3, 4, 1)


def test_preemption_settings_are_checked(tmp_path, dataset):
    assert signal_number("SIGTERM") == signal_number("term") == signal_number(15) == 15
    for bad in ("SIGNOPE", "SIGKILL", 9):
        with pytest.raises(ValueError, match="training.preemption.signals"):
            signal_number(bad)
    with pytest.raises(ValueError, match="check_every"):
        _train_in_process(tmp_path, dataset, [*PLAIN, "training.preemption.check_every=-1"])
