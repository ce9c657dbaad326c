"""SHA-256 records of a checkpoint's files, written at export and checked at load.

An exported (deployment) checkpoint's ``meta.json`` holds ``"sha256": {file name: hex digest}``
for ``model.safetensors``, ``config.yaml`` and ``normalizer.json``. :func:`verify_hashes` refuses a
checkpoint whose files no longer match: a config edited after export (a new ``_target_``), a
swapped normaliser, or weights damaged in transfer. The digests detect change, they do not prove
who wrote the file: whoever can rewrite the files can rewrite ``meta.json`` too, which is why the
config is *also* checked against the class registry on every load.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

from controller.workspace.checkpoint import CheckpointError, META_FILE


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recorded_hashes(ckpt_dir: str) -> Dict[str, str]:
    """The ``sha256`` map of ``meta.json`` (empty for training checkpoints, which record none)."""
    path = os.path.join(ckpt_dir, META_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object")
    hashes = meta.get("sha256")
    if hashes is None:  # exports before the field existed recorded the weights' digest only
        return {"model.safetensors": meta["model_sha256"]} if isinstance(meta.get("model_sha256"), str) else {}
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise CheckpointError(f"'{path}': field 'sha256' must map file names to hex digests")
    return hashes


def verify_hashes(ckpt_dir: str) -> int:
    """Check every file ``meta.json`` records a digest for; returns how many were checked.

    Raises :class:`CheckpointError` naming the file whose content changed or that is missing.
    """
    hashes = recorded_hashes(ckpt_dir)
    for name, digest in hashes.items():
        if os.path.basename(name) != name:
            raise CheckpointError(f"'{os.path.join(ckpt_dir, META_FILE)}': sha256 entry '{name}' is not a plain "
                                  f"file name")
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"'{path}' is missing but meta.json records its SHA-256")
        actual = file_sha256(path)
        if actual != digest.lower():
            raise CheckpointError(f"'{path}' does not match the SHA-256 recorded in meta.json at export "
                                  f"(recorded {digest[:12]}..., found {actual[:12]}...): the file was changed "
                                  f"after export; re-export the checkpoint from its training run")
    return len(hashes)
