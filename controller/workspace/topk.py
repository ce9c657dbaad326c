"""Keep the k best checkpoints by a monitored metric (state persisted for resume).

A rotation never deletes before the new checkpoint is safely on disk:

1. :meth:`TopKCheckpointManager.get_ckpt_path` decides (does the new checkpoint enter the top
   k, and which one would it displace) and records that decision as ``pending`` in
   ``topk.json``; it deletes nothing.
2. The caller writes the checkpoint (atomically, :func:`~controller.workspace.checkpoint.save_checkpoint`).
3. :meth:`TopKCheckpointManager.commit` adds it to the kept set, moves the displaced one to
   ``evicting`` in ``topk.json``, then deletes that directory and clears ``evicting``.

After a kill at any point, :func:`reconcile_topk_state` (run by
:func:`~controller.workspace.checkpoint.clean_stale_temporaries` at training start) brings
``topk.json`` and the directories back in line: a pending checkpoint that was completely written
is committed, one that was not is forgotten; kept entries whose directory is gone are dropped;
directories listed in ``evicting`` are deleted. ``topk.json`` names directories relative to the
checkpoint directory, so a run directory can be moved.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

from controller.workspace.checkpoint import (CheckpointError, _fsync_dir, discard_dir, fault_point,
                                             is_checkpoint_dir)

logger = logging.getLogger(__name__)

STATE_FILE = "topk.json"
STATE_VERSION = 2


def _empty_state() -> Dict[str, Any]:
    return {"entries": {}, "pending": None, "evicting": []}


def _read_state(save_dir: str) -> Dict[str, Any]:
    """``topk.json`` as ``{"entries": {name: value}, "pending": {...} | None, "evicting": [names]}``,
    reconciled with the directories in memory (nothing is deleted or written here)."""
    path = os.path.join(save_dir, STATE_FILE)
    if not os.path.isfile(path):
        return _empty_state()
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON ({exc}); delete it to start a fresh top-k "
                              f"(the checkpoint directories next to it are kept)") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object")
    state = _empty_state()
    try:
        if "entries" in raw:
            state["entries"] = {str(n): float(v) for n, v in raw["entries"].items()}
            pending = raw.get("pending")
            if pending is not None:
                state["pending"] = {"name": str(pending["name"]), "value": float(pending["value"]),
                                    "evict": None if pending.get("evict") is None else str(pending["evict"])}
            state["evicting"] = [str(n) for n in raw.get("evicting") or []]
        else:  # first format: {absolute path: value}
            state["entries"] = {os.path.basename(os.path.normpath(p)): float(v) for p, v in raw.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is malformed ({exc!r}); delete it to start a fresh top-k") from exc

    def present(name: str) -> bool:
        return is_checkpoint_dir(os.path.join(save_dir, name))

    pending = state["pending"]
    if pending is not None:
        state["pending"] = None
        if present(pending["name"]):  # written completely before the kill: commit it now
            state["entries"][pending["name"]] = pending["value"]
            evict = pending["evict"]
            if evict is not None and evict != pending["name"]:
                state["entries"].pop(evict, None)
                state["evicting"].append(evict)
    state["entries"] = {n: v for n, v in state["entries"].items() if present(n)}
    state["evicting"] = sorted({n for n in state["evicting"] if n not in state["entries"]})
    return state


def _write_state(save_dir: str, state: Dict[str, Any], monitor_key: Optional[str] = None,
                 mode: Optional[str] = None) -> None:
    """Write ``topk.json`` atomically and durably (temporary file, fsync, rename, fsync dir)."""
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, STATE_FILE)
    payload = {"version": STATE_VERSION, "monitor_key": monitor_key, "mode": mode,
               "entries": state["entries"], "pending": state["pending"], "evicting": state["evicting"]}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fault_point("topk_state_tmp_written")
    os.replace(tmp, path)
    _fsync_dir(save_dir)


def _delete_evicting(save_dir: str, state: Dict[str, Any]) -> List[str]:
    removed = []
    for name in state["evicting"]:
        path = os.path.join(save_dir, name)
        if name not in state["entries"] and os.path.lexists(path):
            discard_dir(path)
            removed.append(path)
    _fsync_dir(save_dir)
    return removed


def reconcile_topk_state(save_dir: str) -> List[str]:
    """Make ``topk.json`` in ``save_dir`` match the directories after a crash; returns the
    directories deleted. A completely written pending checkpoint is committed (and the one it
    displaces evicted), an incomplete one forgotten; entries whose directory is missing are
    dropped; directories marked for eviction are deleted; a stale ``topk.json.tmp`` is removed.
    No-op without ``topk.json``."""
    tmp = os.path.join(save_dir, STATE_FILE + ".tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    path = os.path.join(save_dir, STATE_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except ValueError:
            raw = {}
    monitor_key, mode = (raw.get("monitor_key"), raw.get("mode")) if isinstance(raw, dict) else (None, None)
    state = _read_state(save_dir)
    removed = _delete_evicting(save_dir, state)
    state["evicting"] = []
    _write_state(save_dir, state, monitor_key, mode)
    return removed


class TopKCheckpointManager:
    """Decide whether a new checkpoint enters the top k and evict the one it displaces, in two
    steps: :meth:`get_ckpt_path` before saving, :meth:`commit` after (see the module docstring).

    Args:
        save_dir: directory holding the checkpoint directories.
        monitor_key: metric name, e.g. ``train_loss`` or ``val_loss``.
        mode: ``min`` or ``max``.
        k: how many to keep (0 disables).
        format_str: directory name template, formatted with the metrics dict.
    """

    def __init__(self, save_dir: str, monitor_key: str, mode: str = "min", k: int = 1,
                 format_str: str = "epoch={epoch:04d}-train_loss={train_loss:.4f}") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint.topk.mode must be 'min' or 'max', got '{mode}'")
        if k < 0:
            raise ValueError(f"checkpoint.topk.k must be >= 0, got {k}")
        self.save_dir = os.path.abspath(save_dir)
        self.monitor_key, self.mode, self.k, self.format_str = monitor_key, mode, k, format_str
        self._state_file = os.path.join(self.save_dir, STATE_FILE)
        state = _read_state(self.save_dir)
        #: kept checkpoints: absolute path -> monitored value
        self.path_value: Dict[str, float] = {os.path.join(self.save_dir, n): v for n, v in state["entries"].items()}
        self._evicting: List[str] = state["evicting"]  # names still to delete (from an interrupted run)
        self._pending: Optional[Dict[str, Any]] = None

    def _state(self) -> Dict[str, Any]:
        return {"entries": {os.path.basename(p): v for p, v in self.path_value.items()},
                "pending": self._pending, "evicting": list(self._evicting)}

    def _save_state(self) -> None:
        _write_state(self.save_dir, self._state(), self.monitor_key, self.mode)

    @property
    def pending_eviction(self) -> Optional[str]:
        """Path of the checkpoint the decided-but-uncommitted one will displace, if any."""
        if self._pending is None or self._pending["evict"] is None:
            return None
        return os.path.join(self.save_dir, self._pending["evict"])

    def get_ckpt_path(self, metrics: Dict[str, float]) -> Optional[str]:
        """Path for a new checkpoint with these metrics, or None if it does not make the top k.

        Deletes nothing: the decision (and the checkpoint it would displace, see
        :attr:`pending_eviction`) is recorded in ``topk.json`` as pending. Write the checkpoint
        to the returned path, then call :meth:`commit` with it.
        """
        if self.k == 0:
            return None
        if self.monitor_key not in metrics:
            raise KeyError(f"checkpoint.topk.monitor_key '{self.monitor_key}' is not among the logged metrics "
                           f"{sorted(metrics)}")
        value = float(metrics[self.monitor_key])
        path = os.path.join(self.save_dir, self.format_str.format(**metrics))
        others = {p: v for p, v in self.path_value.items() if p != path}  # re-saving a name replaces it
        evict = None
        if len(others) >= self.k:
            ranked = sorted(others.items(), key=lambda kv: kv[1], reverse=(self.mode == "min"))
            evict, worst = ranked[0]
            better = value < worst if self.mode == "min" else value > worst
            if not better:
                return None
        self._pending = {"name": os.path.basename(path), "value": value,
                         "evict": None if evict is None else os.path.basename(evict)}
        self._save_state()
        fault_point("topk_decided")
        return path

    def commit(self, path: str) -> Optional[str]:
        """Record the checkpoint just written at ``path`` (from :meth:`get_ckpt_path`) as kept,
        then delete the one it displaces; returns the deleted path or None.

        ``topk.json`` is updated (new entry in, displaced one listed under ``evicting``) before
        the directory is deleted, and again after. Raises :class:`CheckpointError` if ``path``
        holds no complete checkpoint, ``ValueError`` if it was not the last decided path.
        """
        path = os.path.abspath(path)
        pending = self._pending
        if pending is None or os.path.join(self.save_dir, pending["name"]) != path:
            raise ValueError(f"commit('{path}') without a matching get_ckpt_path() decision")
        if not is_checkpoint_dir(path):
            raise CheckpointError(f"cannot commit '{path}' to the top k: it holds no complete checkpoint")
        self.path_value[path] = pending["value"]
        evicted = None
        if pending["evict"] is not None:
            evicted = os.path.join(self.save_dir, pending["evict"])
            self.path_value.pop(evicted, None)
            self._evicting.append(pending["evict"])
        self._pending = None
        self._save_state()
        fault_point("topk_committed")
        if self._evicting:
            _delete_evicting(self.save_dir, self._state())
            self._evicting = []
            self._save_state()
        fault_point("topk_done")
        return evicted
