"""Keep the k best checkpoints by a monitored metric (state persisted for resume)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional


class TopKCheckpointManager:
    """Decide whether a new checkpoint enters the top k and evict the one it displaces.

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
        self.save_dir, self.monitor_key, self.mode, self.k, self.format_str = save_dir, monitor_key, mode, k, format_str
        self.path_value: Dict[str, float] = {}
        self._state_file = os.path.join(save_dir, "topk.json")
        if os.path.isfile(self._state_file):
            with open(self._state_file) as f:
                self.path_value = {p: v for p, v in json.load(f).items() if os.path.isdir(p)}

    def _save_state(self) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        tmp = self._state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.path_value, f, indent=1)
        os.replace(tmp, self._state_file)

    def get_ckpt_path(self, metrics: Dict[str, float]) -> Optional[str]:
        """Path for a new checkpoint with these metrics, or None if it does not make the top k."""
        if self.k == 0:
            return None
        if self.monitor_key not in metrics:
            raise KeyError(f"checkpoint.topk.monitor_key '{self.monitor_key}' is not among the logged metrics "
                           f"{sorted(metrics)}")
        value = float(metrics[self.monitor_key])
        path = os.path.join(self.save_dir, self.format_str.format(**metrics))
        if len(self.path_value) < self.k:
            self.path_value[path] = value
            self._save_state()
            return path
        ranked = sorted(self.path_value.items(), key=lambda kv: kv[1], reverse=(self.mode == "min"))
        worst_path, worst = ranked[0]
        better = value < worst if self.mode == "min" else value > worst
        if not better:
            return None
        del self.path_value[worst_path]
        if worst_path != path:
            shutil.rmtree(worst_path, ignore_errors=True)
        self.path_value[path] = value
        self._save_state()
        return path
