"""Crash safety of checkpoint rotation: a real child process saves checkpoints of a tiny model the
way the training workspace does (``latest``, then the top-k decision, the top-k checkpoint and the
commit) and is SIGKILLed after every single step of that rotation, one child per step. After each
kill the parent must find a loadable latest and a loadable best, and after
``clean_stale_temporaries`` no leftover may remain and ``topk.json`` must list exactly the
directories on disk."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import time

import pytest
import torch

from controller.model.diffusion.ema_model import EMAModel
from controller.workspace import checkpoint as ckpt
from controller.workspace.checkpoint import (CheckpointError, capture_rng_state, clean_stale_temporaries,
                                             load_policy_weights, load_training_state, read_meta,
                                             resolve_checkpoint_dir, save_checkpoint, temp_dir_name)
from controller.workspace.topk import STATE_FILE, TopKCheckpointManager, reconcile_topk_state

FMT = "epoch={epoch:04d}-train_loss={train_loss:.4f}"
HISTORY = ((0, 0.9), (1, 0.5), (2, 0.7))  # before the rotation under test: best = epoch 1 (0.5)
NEXT = (3, 0.3)  # the new best: displaces the worst kept one (with k=1 the best itself)
PRE_BEST = 0.5


def _kept_values(k, losses):
    return sorted(losses)[:k]


class Tiny(torch.nn.Module):
    """A two-tensor model whose every weight equals the epoch it was saved at."""

    def __init__(self, fill: float = 0.0) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(fill)


def _topk(ckpt_dir: str, k: int) -> TopKCheckpointManager:
    return TopKCheckpointManager(ckpt_dir, "train_loss", "min", k=k, format_str=FMT)


def rotate(ckpt_dir: str, epoch: int, loss: float, k: int) -> None:
    """One end-of-epoch checkpoint step as ``TrainDexGraspVLAControllerWorkspace._checkpoints``
    does it: save ``latest``, decide top-k, save the top-k checkpoint, commit."""
    model = Tiny(epoch)
    ema = EMAModel(model)
    optimizer = {"state": {0: {"momentum_buffer": torch.full((2, 3), 0.5)}}, "param_groups": [{"lr": 0.1}]}
    state = {"epoch": epoch, "global_step": 10 * (epoch + 1), "optimizer": optimizer,
             "lr_scheduler": {}, "ema": ema.state_dict(), "rng": [capture_rng_state()]}
    metrics = {"epoch": epoch, "train_loss": loss}
    topk = _topk(ckpt_dir, k)
    save_checkpoint(os.path.join(ckpt_dir, "latest"), model, ema=ema, training_state=state,
                    meta={"epoch": epoch, "metrics": metrics})
    path = topk.get_ckpt_path(metrics)
    if path:
        save_checkpoint(path, model, ema=ema, training_state=state, meta={"epoch": epoch, "metrics": metrics})
        topk.commit(path)


def _child(ckpt_dir: str, k: int, kill_at: int, steps_file: str, cleanup: bool = False) -> None:
    """Child process: run the rotation (or the cleanup) and SIGKILL itself after step ``kill_at``
    (0: never; then write the list of steps to ``steps_file``)."""
    steps = []

    def hook(step: str) -> None:
        steps.append(step)
        if len(steps) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.fault_hook = hook
    if cleanup:
        clean_stale_temporaries(ckpt_dir)
    else:
        rotate(ckpt_dir, *NEXT, k)
    with open(steps_file, "w") as f:
        json.dump(steps, f)


def _ctx():
    ctx = mp.get_context("forkserver")  # a clean process per child, torch imported once
    ctx.set_forkserver_preload(["torch", "controller.workspace.checkpoint", "controller.workspace.topk",
                                "controller.model.diffusion.ema_model"])
    return ctx


def _run_children(jobs, parallel: int = 4, timeout: float = 120.0):
    """Run ``_child(*args)`` for every args tuple in ``jobs``; returns their exit codes."""
    ctx = _ctx()
    codes, running, queue = {}, {}, list(enumerate(jobs))
    deadline = time.monotonic() + timeout * max(1, len(jobs) // parallel + 1)
    while queue or running:
        while queue and len(running) < parallel:
            i, args = queue.pop(0)
            proc = ctx.Process(target=_child, args=args)
            proc.start()
            running[i] = proc
        for i, proc in list(running.items()):
            proc.join(0.05)
            if proc.exitcode is not None:
                codes[i] = proc.exitcode
                del running[i]
        if time.monotonic() > deadline:
            for proc in running.values():
                proc.kill()
            raise AssertionError("checkpoint child processes timed out")
    return [codes[i] for i in range(len(jobs))]


@pytest.fixture(scope="module", params=[1, 2], ids=["k1", "k2"])
def template(request, tmp_path_factory):
    """``(k, directory)``: checkpoints after the epochs in HISTORY (latest = epoch 2, top k kept)."""
    k = request.param
    d = str(tmp_path_factory.mktemp(f"tpl{k}") / "checkpoints")
    for epoch, loss in HISTORY:
        rotate(d, epoch, loss, k)
    return k, d


@pytest.fixture(scope="module")
def rotation_steps(template, tmp_path_factory):
    """The steps of one full rotation, recorded by a child that is not killed."""
    k, template_dir = template
    work = tmp_path_factory.mktemp("steps")
    d = str(work / "checkpoints")
    shutil.copytree(template_dir, d)
    assert _run_children([(d, k, 0, str(work / "steps.json"))]) == [0]
    with open(work / "steps.json") as f:
        return json.load(f)


def _names(d):
    return sorted(os.listdir(d))


def _load_tiny(path: str) -> Tiny:
    model = Tiny(-1.0)
    load_policy_weights(model, path, use_ema=True)
    return model


def _assert_recoverable(d: str, k: int) -> None:
    """What must hold after a kill at any step, before and after the cleanup."""
    # a loadable latest (possibly an .old- survivor), from before or after the rotation
    latest = resolve_checkpoint_dir(os.path.join(d, "latest"))
    epoch = read_meta(latest)["epoch"]
    assert epoch in (HISTORY[-1][0], NEXT[0])
    assert torch.all(_load_tiny(latest).lin.weight == epoch)
    assert load_training_state(latest)["epoch"] == epoch
    # a loadable best, at least as good as before the rotation
    topk = _topk(d, k)
    assert topk.path_value, "top-k lost every checkpoint"
    best_path = min(topk.path_value, key=topk.path_value.get)
    assert topk.path_value[best_path] <= PRE_BEST
    for path in topk.path_value:
        _load_tiny(path)

    report = clean_stale_temporaries(d)
    names = _names(d)
    assert not [n for n in names if ".tmp-" in n or ".old-" in n or n.endswith(".tmp")], (names, report)
    with open(os.path.join(d, STATE_FILE)) as f:
        state = json.load(f)
    assert state["pending"] is None and state["evicting"] == []
    assert set(state["entries"]) == set(names) - {"latest", STATE_FILE}
    before = _kept_values(k, [loss for _, loss in HISTORY])
    assert sorted(state["entries"].values()) in (before, _kept_values(k, before + [NEXT[1]]))
    for name in state["entries"]:
        _load_tiny(os.path.join(d, name))
    # what resume loaded is now under the real name
    assert ckpt.is_checkpoint_dir(os.path.join(d, "latest"))
    assert read_meta(os.path.join(d, "latest"))["epoch"] == epoch
    # and training goes on normally from here
    rotate(d, 4, 0.1, k)
    names = _names(d)
    with open(os.path.join(d, STATE_FILE)) as f:
        entries = json.load(f)["entries"]
    assert set(entries) == set(names) - {"latest", STATE_FILE} and len(entries) == k
    assert min(entries.values()) == 0.1


def test_rotation_steps_are_in_the_safe_order(rotation_steps):
    """Write, fsync, move the old aside, rename the new in, fsync the parent, then delete."""
    save = ["tmp_created", "model_written", "written", "synced", "old_moved_aside", "renamed", "parent_synced",
            "discard:model_removed", "discard:removed", "rotated"]
    first_save = [s for s in save if s != "old_moved_aside" and not s.startswith("discard:")]
    expected = (save  # latest replaces latest
                + ["topk_state_tmp_written", "topk_decided"]  # decision recorded, nothing deleted
                + first_save  # the new top-k checkpoint (a new name)
                + ["topk_state_tmp_written", "topk_committed",  # in topk.json, evicted one marked
                   "discard:model_removed", "discard:removed",  # only now the displaced one goes
                   "topk_state_tmp_written", "topk_done"])
    assert rotation_steps == expected


@pytest.fixture
def no_fsync_here(monkeypatch):
    """The parent's own checks need no durability (the children keep their real fsyncs)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_kill_at_every_step_leaves_a_loadable_latest_and_best(template, rotation_steps, tmp_path, no_fsync_here):
    k, template_dir = template
    n = len(rotation_steps)
    dirs = [str(tmp_path / f"kill{i:02d}" / "checkpoints") for i in range(1, n + 1)]
    for d in dirs:
        shutil.copytree(template_dir, d)
    codes = _run_children([(d, k, i, os.path.join(os.path.dirname(d), "steps.json"))
                           for i, d in enumerate(dirs, start=1)])
    assert codes == [-signal.SIGKILL] * n, list(zip(rotation_steps, codes))
    for step, d in zip(rotation_steps, dirs):
        try:
            _assert_recoverable(d, k)
        except Exception as exc:
            raise AssertionError(f"after a kill at step '{step}' ({d}): {exc!r}") from exc


def test_kill_during_cleanup(template, rotation_steps, tmp_path, no_fsync_here):
    """The cleanup itself is killed at each of its steps; a second cleanup still recovers."""
    k, template_dir = template
    crashed = str(tmp_path / "crashed" / "checkpoints")
    shutil.copytree(template_dir, crashed)
    # a kill between moving latest aside and renaming the new one in: latest exists as .old- only
    kill_at = rotation_steps.index("old_moved_aside") + 1
    assert _run_children([(crashed, k, kill_at, str(tmp_path / "s.json"))]) == [-signal.SIGKILL]
    assert not os.path.exists(os.path.join(crashed, "latest"))
    probe = str(tmp_path / "probe" / "checkpoints")
    shutil.copytree(crashed, probe)
    assert _run_children([(probe, k, 0, str(tmp_path / "probe.json"), True)]) == [0]
    with open(tmp_path / "probe.json") as f:
        steps = json.load(f)
    assert steps[0] == "clean:restored" and len(steps) >= 3
    dirs = [str(tmp_path / f"c{i}" / "checkpoints") for i in range(1, len(steps) + 1)]
    for d in dirs:
        shutil.copytree(crashed, d)
    codes = _run_children([(d, k, i, os.path.join(os.path.dirname(d), "s.json"), True)
                           for i, d in enumerate(dirs, start=1)])
    assert codes == [-signal.SIGKILL] * len(steps)
    for step, d in zip(steps, dirs):
        try:
            _assert_recoverable(d, k)
        except Exception as exc:
            raise AssertionError(f"after a kill of the cleanup at '{step}': {exc!r}") from exc


# ---------------------------------------------------------------------------- survivors, leftovers
def _tiny_ckpt(path: str, epoch: int) -> str:
    return save_checkpoint(path, Tiny(epoch), training_state={"epoch": epoch}, meta={"epoch": epoch})


def _stamped(parent: str, base: str, kind: str, when: float, pid: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when % 1 * 1e9):09d}Z"
    return os.path.join(parent, f"{base}.{kind}-{stamp}-{pid}")


def test_resolve_picks_the_newest_survivor_by_time_not_by_name(tmp_path):
    d = str(tmp_path)
    now = time.time()
    # newest by time but with a small pid, oldest with a large one: the old names
    # (<pid>-<monotonic>) sorted these the wrong way round
    newest = _tiny_ckpt(_stamped(d, "latest", "old", now - 10, 7), 3)
    _tiny_ckpt(_stamped(d, "latest", "old", now - 100, 99999), 2)
    legacy = _tiny_ckpt(os.path.join(d, "latest.old-999999-123456789"), 1)
    os.utime(os.path.join(legacy, "meta.json"), (now - 1000, now - 1000))
    # newer still, but its deletion was interrupted (no model file): not a candidate
    broken = _tiny_ckpt(_stamped(d, "latest", "old", now - 1, 5), 4)
    os.unlink(os.path.join(broken, "model.safetensors"))
    _tiny_ckpt(_stamped(d, "latest", "tmp", now, 5), 5)  # a .tmp- is never a candidate
    assert resolve_checkpoint_dir(os.path.join(d, "latest")) == newest
    assert read_meta(os.path.join(d, "latest"))["epoch"] == 3
    # a legacy-named survivor newer (by meta.json mtime) than a stamped one wins
    os.utime(os.path.join(legacy, "meta.json"), (now - 5, now - 5))
    assert resolve_checkpoint_dir(os.path.join(d, "latest")) == legacy
    # the names made by this code sort by time
    a, b = temp_dir_name(os.path.join(d, "x"), "old"), temp_dir_name(os.path.join(d, "x"), "old")
    assert a < b


def test_cleanup_restores_the_survivor_and_removes_every_leftover(tmp_path):
    d = str(tmp_path / "checkpoints")
    now = time.time()
    survivor = _tiny_ckpt(_stamped(d, "latest", "old", now - 10, os.getpid()), 7)
    _tiny_ckpt(_stamped(d, "latest", "old", now - 20, os.getpid()), 6)
    _tiny_ckpt(_stamped(d, "latest", "tmp", now - 5, os.getpid()), 8)
    os.makedirs(os.path.join(d, "latest.tmp-123-456"))  # legacy-named, half written
    keep = _tiny_ckpt(os.path.join(d, "epoch=0001-train_loss=0.5000"), 1)
    evicted = _tiny_ckpt(os.path.join(d, "epoch=0000-train_loss=0.9000"), 0)
    os.unlink(os.path.join(evicted, "model.safetensors"))  # interrupted eviction
    _tiny_ckpt(os.path.join(d, "epoch=0001-train_loss=0.5000") + ".old-123-789", 1)
    unrelated = os.path.join(d, "notes.tmp-backup")  # not a temporary name: untouched
    os.makedirs(unrelated)
    with open(os.path.join(d, STATE_FILE), "w") as f:
        json.dump({"version": 2, "entries": {"epoch=0001-train_loss=0.5000": 0.5, "gone": 0.1},
                   "pending": {"name": "epoch=0002-train_loss=0.4000", "value": 0.4,
                               "evict": "epoch=0001-train_loss=0.5000"},
                   "evicting": ["epoch=0000-train_loss=0.9000"]}, f)
    with open(os.path.join(d, STATE_FILE + ".tmp"), "w") as f:
        f.write("{half")
    assert resolve_checkpoint_dir(os.path.join(d, "latest")) == survivor
    calls = []
    report = clean_stale_temporaries(d, barrier=lambda: calls.append(1))
    assert calls == [1, 1]
    assert report["restored"] == [os.path.join(d, "latest")]
    assert _names(d) == sorted(["epoch=0001-train_loss=0.5000", "latest", "notes.tmp-backup", STATE_FILE])
    assert read_meta(os.path.join(d, "latest"))["epoch"] == 7
    with open(os.path.join(d, STATE_FILE)) as f:
        state = json.load(f)
    # the pending checkpoint was never written: forgotten, its would-be eviction did not happen
    assert state["entries"] == {"epoch=0001-train_loss=0.5000": 0.5}
    assert state["pending"] is None and state["evicting"] == []
    assert ckpt.is_checkpoint_dir(keep)
    # not the main process: waits, touches nothing
    _tiny_ckpt(_stamped(d, "latest", "tmp", now, os.getpid()), 9)
    assert clean_stale_temporaries(d, is_main_process=False) == {"restored": [], "removed": []}
    assert any(".tmp-" in n for n in _names(d))


def test_topk_decides_without_deleting_and_commits_after(tmp_path):
    d = str(tmp_path)
    topk = TopKCheckpointManager(d, "train_loss", "min", k=1, format_str=FMT)
    first = topk.get_ckpt_path({"epoch": 0, "train_loss": 0.5})
    _tiny_ckpt(first, 0)
    assert topk.commit(first) is None
    assert topk.get_ckpt_path({"epoch": 1, "train_loss": 0.6}) is None
    second = topk.get_ckpt_path({"epoch": 2, "train_loss": 0.2})
    assert topk.pending_eviction == first and ckpt.is_checkpoint_dir(first)  # nothing deleted yet
    with open(os.path.join(d, STATE_FILE)) as f:
        assert json.load(f)["entries"] == {os.path.basename(first): 0.5}
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        topk.commit(second)  # not written yet
    with pytest.raises(ValueError, match="without a matching"):
        topk.commit(first)
    _tiny_ckpt(second, 2)
    assert topk.commit(second) == first
    assert not os.path.exists(first) and topk.path_value == {second: 0.2}
    # entries whose directory vanished are dropped on load; the first-format topk.json still loads
    shutil.rmtree(second)
    assert TopKCheckpointManager(d, "train_loss", k=1, format_str=FMT).path_value == {}
    kept = _tiny_ckpt(os.path.join(d, "epoch=0005-train_loss=0.1000"), 5)
    with open(os.path.join(d, STATE_FILE), "w") as f:
        json.dump({"/elsewhere/epoch=0005-train_loss=0.1000": 0.1, "/elsewhere/missing": 0.2}, f)
    assert TopKCheckpointManager(d, "train_loss", k=1, format_str=FMT).path_value == {kept: 0.1}
    assert reconcile_topk_state(d) == []
    with open(os.path.join(d, STATE_FILE), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match="topk.json"):
        TopKCheckpointManager(d, "train_loss", k=1, format_str=FMT)
