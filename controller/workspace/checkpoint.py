"""Checkpoints: safetensors weights + resolved config + normaliser, written atomically.

Layout of one checkpoint directory::

    model.safetensors      policy state dict (normaliser included; frozen backbones optional)
    ema.safetensors        EMA of the trainable parameters (when EMA is on)
    normalizer.json        the fitted normaliser in plain numbers (for people)
    config.yaml            the fully resolved training config
    training_state.pt      optimiser, LR scheduler, EMA counters, RNG states, epoch and step
                           (tensors and plain containers only: loads with weights_only=True)
    meta.json              epoch, global step, metrics, parameter counts, versions

Crash safety. A directory is rotated in this order (:func:`atomic_write_dir`): the new one is
written under ``<name>.tmp-<stamp>-<pid>``, its files and directories are fsynced, the one it
replaces is renamed to ``<name>.old-<stamp>-<pid>``, the new one is renamed to ``<name>``, the
parent directory is fsynced, and only then is the displaced ``.old-`` directory deleted. A kill
at any point therefore leaves either ``<name>`` or (between the two renames) an ``.old-``
survivor that :func:`resolve_checkpoint_dir` falls back to. ``<stamp>`` is the UTC wall-clock
time, fixed width (``20250102T030405.123456789Z``), so temporaries order by the time they were
made across processes and reboots; :func:`clean_stale_temporaries` (run at training start)
restores a survivor to its real name and deletes the rest.

Damage. Every loader here raises :class:`CheckpointError` naming the file (and, for safetensors
files, the first tensor whose header entry does not fit the file), never a raw
``SafetensorError`` / ``KeyError`` / ``OSError``.
"""
from __future__ import annotations

import calendar
import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
NORMALIZER_FILE = "normalizer.json"
FORMAT = "dexgraspvla-controller-v1"
BACKBONE_PREFIXES = ("obs_encoder.dino_head.", "obs_encoder.dino_wrist.")
#: safetensors metadata key holding the number of tensors a weight file was saved with.
TENSOR_COUNT_KEY = "tensor_count"
#: Keys the training workspace reads from ``training_state.pt`` on resume.
TRAINING_STATE_KEYS = ("epoch", "global_step", "optimizer", "lr_scheduler", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, damaged, or does not fit the model."""


# ---------------------------------------------------------------------------- fault injection
#: Test hook: when set, called with the name of every step of a checkpoint rotation (here and in
#: :mod:`controller.workspace.topk`) right after that step is done. The crash-safety tests set it
#: in a child process to ``SIGKILL`` the process at step N, for every N. ``None`` in production.
fault_hook: Optional[Callable[[str], None]] = None


def fault_point(step: str) -> None:
    """Report that rotation step ``step`` is done to :data:`fault_hook` (no-op when unset)."""
    hook = fault_hook
    if hook is not None:
        hook(step)


# ---------------------------------------------------------------------------- temporaries
_TEMP_KINDS = ("tmp", "old")
_STAMP_RE = re.compile(r"^(\d{8}T\d{6})\.(\d{9})Z-(\d+)$")
_LEGACY_RE = re.compile(r"^\d+-\d+$")  # <pid>-<monotonic ns>: written before the stamps
_last_stamp_ns = 0


def _utc_stamp() -> str:
    """Fixed-width UTC wall-clock stamp with nanoseconds, strictly increasing within a process."""
    global _last_stamp_ns
    ns = max(time.time_ns(), _last_stamp_ns + 1)
    _last_stamp_ns = ns
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(sec)) + f".{frac:09d}Z"


def temp_dir_name(final_dir: str, kind: str) -> str:
    """``<final_dir>.<kind>-<UTC stamp>-<pid>`` for ``kind`` ``tmp`` (being written) or ``old``
    (displaced, to be deleted). Names sort by creation time, whichever process made them."""
    if kind not in _TEMP_KINDS:
        raise ValueError(f"kind must be one of {_TEMP_KINDS}, got '{kind}'")
    return f"{final_dir}.{kind}-{_utc_stamp()}-{os.getpid()}"


def _split_temp_name(name: str) -> Optional[Tuple[str, str, str]]:
    """``(base, kind, suffix)`` for a temporary's file name (``<base>.tmp-<stamp>-<pid>``, or the
    older ``<base>.tmp-<pid>-<monotonic ns>``; same for ``.old-``), else None."""
    for kind in _TEMP_KINDS:
        marker = f".{kind}-"
        i = name.rfind(marker)
        suffix = name[i + len(marker):]
        if i > 0 and (_STAMP_RE.match(suffix) or _LEGACY_RE.match(suffix)):
            return name[:i], kind, suffix
    return None


def _temp_time_ns(path: str) -> int:
    """When a temporary was made: the UTC stamp in its name; for names of the older
    ``<pid>-<monotonic ns>`` form (which do not order across processes) the mtime of its
    ``meta.json``, else of the directory itself."""
    parts = _split_temp_name(os.path.basename(path))
    m = _STAMP_RE.match(parts[2]) if parts else None
    if m:
        sec = calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S"))
        return sec * 1_000_000_000 + int(m.group(2))
    for candidate in (os.path.join(path, META_FILE), path):
        try:
            return os.stat(candidate).st_mtime_ns
        except OSError:
            continue
    return 0


def is_checkpoint_dir(path: str) -> bool:
    """A directory holding ``model.safetensors`` (the file :func:`discard_dir` deletes first)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_FILE))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_tree(root: str) -> None:
    """fsync every file, then every directory (deepest first) under ``root``, ``root`` included."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(dirpath)


def discard_dir(path: str) -> None:
    """Delete a checkpoint directory so that a kill half-way never leaves a loadable-looking one:
    ``model.safetensors`` goes first (so :func:`is_checkpoint_dir` is false from then on)."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        try:
            os.unlink(os.path.join(path, MODEL_FILE))
            fault_point("discard:model_removed")
        except FileNotFoundError:
            pass
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)
    fault_point("discard:removed")


def atomic_write_dir(final_dir: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` to ``final_dir`` (replacing it).

    Order: write into ``<final_dir>.tmp-*`` -> fsync its files and directories -> rename the
    current ``final_dir`` (if any) to ``<final_dir>.old-*`` -> rename the new one into place ->
    fsync the parent -> delete the ``.old-`` one. Returns the absolute ``final_dir``.
    """
    final_dir = os.path.abspath(final_dir)
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = temp_dir_name(final_dir, "tmp")
    os.makedirs(tmp)
    fault_point("tmp_created")
    old = None
    try:
        write(tmp)
        fault_point("written")
        _fsync_tree(tmp)
        fault_point("synced")
        if os.path.lexists(final_dir):
            old = temp_dir_name(final_dir, "old")
            os.rename(final_dir, old)
            fault_point("old_moved_aside")
        os.rename(tmp, final_dir)
        fault_point("renamed")
        _fsync_dir(parent)
        fault_point("parent_synced")
    except BaseException:
        if old is not None and not os.path.lexists(final_dir):
            try:  # put the previous one back under its real name
                os.rename(old, final_dir)
                old = None
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        discard_dir(old)
        _fsync_dir(parent)
    fault_point("rotated")
    return final_dir


def newest_survivor(path: str) -> Optional[str]:
    """The newest complete ``<path>.old-*`` directory (by the time in its name, see
    :func:`temp_dir_name`), or None. Such a survivor exists when a kill hit between moving the
    previous checkpoint aside and renaming the new one into place."""
    path = os.path.abspath(path)
    parent, base = os.path.dirname(path), os.path.basename(path)
    try:
        names = os.listdir(parent)
    except OSError:
        return None
    olds = []
    for name in names:
        parts = _split_temp_name(name)
        full = os.path.join(parent, name)
        if parts and parts[0] == base and parts[1] == "old" and is_checkpoint_dir(full):
            olds.append((_temp_time_ns(full), name, full))
    return max(olds)[2] if olds else None


def resolve_checkpoint_dir(path: str) -> str:
    """Accept a checkpoint dir, or a dir whose ``latest.old-*`` survived an interrupted swap
    (the newest complete one, see :func:`newest_survivor`)."""
    path = os.path.abspath(path)
    if is_checkpoint_dir(path):
        return path
    survivor = newest_survivor(path)
    if survivor is not None:
        return survivor
    if os.path.isfile(path) and path.endswith(".ckpt"):
        raise CheckpointError(f"'{path}' looks like a reference-format (pickled) checkpoint; convert it first "
                              f"with: python -m controller.convert_checkpoint {path} OUT_DIR --trust-pickle")
    raise CheckpointError(f"no checkpoint at '{path}' (expected a directory containing {MODEL_FILE})")


def clean_stale_temporaries(ckpt_dir: str, is_main_process: bool = True,
                            barrier: Optional[Callable[[], Any]] = None) -> Dict[str, List[str]]:
    """Recover and tidy ``ckpt_dir`` after crashes; call at training start, after resume.

    For every checkpoint name with leftovers: if ``<name>`` is missing, its newest complete
    ``<name>.old-*`` survivor is renamed back to ``<name>`` (what resume loaded stays where the
    next run finds it); then every ``*.tmp-*`` and every other ``*.old-*`` is deleted. Last,
    ``topk.json`` is reconciled with the directories (see
    :func:`controller.workspace.topk.reconcile_topk_state`). Temporaries of a still running
    process are deleted too: only one process may write checkpoints into ``ckpt_dir``.

    With several processes pass ``is_main_process`` and a ``barrier`` (e.g.
    ``accelerator.wait_for_everyone``): all wait until everybody is done loading, the main process
    cleans, all wait again. Returns ``{"restored": [...], "removed": [...]}``.
    """
    report: Dict[str, List[str]] = {"restored": [], "removed": []}
    if barrier is not None:
        barrier()
    if is_main_process and os.path.isdir(ckpt_dir):
        _clean(os.path.abspath(ckpt_dir), report)
        from controller.workspace.topk import reconcile_topk_state
        report["removed"] += reconcile_topk_state(ckpt_dir)
        if report["restored"] or report["removed"]:
            logger.info("checkpoint dir %s: restored %s, removed %s", ckpt_dir, report["restored"],
                        report["removed"])
    if barrier is not None:
        barrier()
    return report


def _clean(ckpt_dir: str, report: Dict[str, List[str]]) -> None:
    groups: Dict[str, List[str]] = {}
    for name in sorted(os.listdir(ckpt_dir)):
        parts = _split_temp_name(name)
        if parts:
            groups.setdefault(parts[0], []).append(os.path.join(ckpt_dir, name))
    for base, temps in groups.items():
        final = os.path.join(ckpt_dir, base)
        keep = None
        if not is_checkpoint_dir(final):
            keep = newest_survivor(final)
            if keep is not None and not os.path.lexists(final):
                os.rename(keep, final)
                _fsync_dir(ckpt_dir)
                fault_point("clean:restored")
                report["restored"].append(final)
                keep = final
        for path in temps:
            if path == keep or not os.path.lexists(path):
                continue
            discard_dir(path)
            report["removed"].append(path)
    _fsync_dir(ckpt_dir)


# ---------------------------------------------------------------------------- RNG state
def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python, numpy, torch (and CUDA) as tensors/plain values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- save / load
def policy_state_for_saving(policy: torch.nn.Module, save_frozen_backbones: bool = True,
                            state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """CPU, contiguous, de-aliased state dict (safetensors refuses shared storage) of ``policy``, or
    of ``state_dict`` when given (e.g. the full state dict gathered from an FSDP-sharded policy)."""
    out = {}
    for k, v in (policy.state_dict() if state_dict is None else state_dict).items():
        if not save_frozen_backbones and k.startswith(BACKBONE_PREFIXES):
            continue
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def save_checkpoint(ckpt_dir: str, policy: torch.nn.Module, cfg: Any = None, ema=None,
                    training_state: Optional[Dict[str, Any]] = None, meta: Optional[Dict[str, Any]] = None,
                    save_frozen_backbones: bool = True, state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                    ema_state: Optional[Mapping[str, Any]] = None) -> str:
    """Write a complete checkpoint directory atomically; returns its path.

    ``state_dict`` / ``ema_state`` replace ``policy.state_dict()`` / ``ema.state_dict()`` when
    given: the full states gathered from an FSDP-sharded policy
    (:mod:`controller.workspace.fsdp_state`), whose own ``state_dict()`` holds shards."""
    from omegaconf import OmegaConf

    weights = policy_state_for_saving(policy, save_frozen_backbones, state_dict)
    if ema_state is None and ema is not None:
        ema_state = ema.state_dict()
    ema_weights = ({k: v.detach().cpu().contiguous().clone() for k, v in ema_state["shadow"].items()}
                   if ema_state is not None else None)
    normalizer = {}
    if state_dict is not None:
        normalizer = {k[len("normalizer."):]: v.detach().cpu().tolist() for k, v in state_dict.items()
                      if k.startswith("normalizer.")}
    elif hasattr(policy, "normalizer"):
        normalizer = {k: v.detach().cpu().tolist() for k, v in policy.normalizer.state_dict().items()}
    meta = dict(meta or {})
    meta.update({"format": FORMAT, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "torch": torch.__version__, "frozen_backbones_saved": bool(save_frozen_backbones),
                 "has_ema": ema_state is not None})

    def write(tmp: str) -> None:
        save_file(weights, os.path.join(tmp, MODEL_FILE), metadata=_file_metadata(weights))
        fault_point("model_written")
        if ema_weights is not None:
            save_file(ema_weights, os.path.join(tmp, EMA_FILE), metadata=_file_metadata(ema_weights))
        if cfg is not None:
            text = OmegaConf.to_yaml(cfg, resolve=True) if OmegaConf.is_config(cfg) else OmegaConf.to_yaml(
                OmegaConf.create(cfg))
            with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
                f.write(text)
        with open(os.path.join(tmp, NORMALIZER_FILE), "w") as f:
            json.dump(normalizer, f)
        if training_state is not None:
            torch.save(training_state, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, default=str)

    return atomic_write_dir(ckpt_dir, write)


# ---------------------------------------------------------------------------- safe readers
#: Bytes per element of the safetensors dtypes (unknown dtypes skip the size check).
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_HEADER_BYTES = 100 * 2 ** 20  # the limit safetensors itself enforces


def _file_metadata(tensors: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    """safetensors metadata of a checkpoint weight file: the format and how many tensors it holds
    (so a file that lost tensors is told from one that never had them, see :func:`read_safetensors`)."""
    return {"format": FORMAT, TENSOR_COUNT_KEY: str(len(tensors))}


def check_safetensors_file(path: str) -> Dict[str, Dict[str, Any]]:
    """Validate a safetensors file's header against the file; returns its tensor entries.

    The format is an 8-byte little-endian header length, a JSON header mapping each tensor name
    to ``dtype``, ``shape`` and ``data_offsets`` (``[begin, end)`` in the data section that
    follows), then the data. Checked: the header fits the file and is a JSON object; every
    tensor's entry is well formed, its byte range lies inside the data section and its length
    equals ``prod(shape) * dtype size``. Tensors are checked in data order, so a truncated file
    names the first tensor it cut. Raises :class:`CheckpointError` naming the file and tensor.
    """
    return {k: v for k, v in _validated_header(path).items() if k != "__metadata__"}


def _validated_header(path: str) -> Dict[str, Any]:
    """The JSON header of a safetensors file (``__metadata__`` included), checked as described in
    :func:`check_safetensors_file`."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"'{path}' is truncated: {size} bytes, too short for a safetensors header")
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > _MAX_HEADER_BYTES:
                raise CheckpointError(f"'{path}' is damaged or truncated: its first 8 bytes announce a "
                                      f"{n}-byte header but the file has {size} bytes in all")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"could not read '{path}': {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is damaged: its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' is damaged: its header is not a JSON object")
    data_len = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not isinstance(header.get("__metadata__", {}), dict):
        raise CheckpointError(f"'{path}' is damaged: its header's __metadata__ is not a JSON object")

    def start(item):
        offsets = item[1].get("data_offsets") if isinstance(item[1], dict) else None
        ok = isinstance(offsets, list) and offsets and isinstance(offsets[0], int)
        return (offsets[0] if ok else -1, item[0])

    for name, info in sorted(tensors.items(), key=start):
        where = f"'{path}': tensor '{name}'"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where} has a malformed header entry ({info!r})")
        offsets, shape, dtype = info.get("data_offsets"), info.get("shape"), info.get("dtype")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CheckpointError(f"{where} has malformed data_offsets {offsets!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{where} has a malformed shape {shape!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise CheckpointError(f"{where} has data_offsets {offsets} that do not form a byte range")
        if end > data_len:
            raise CheckpointError(f"{where} is not in the file (truncated or damaged): it needs bytes "
                                  f"[{begin}, {end}) of the data section, which holds {data_len} bytes")
        itemsize = _DTYPE_BYTES.get(dtype)
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:
            raise CheckpointError(f"{where} ({dtype}, shape {tuple(shape)}) should take "
                                  f"{math.prod(shape) * itemsize} bytes but its header gives {end - begin}")
    return header


def read_safetensors(path: str, expected: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` that raises :class:`CheckpointError` naming the file (and
    the first bad tensor, see :func:`check_safetensors_file`) for a missing or damaged file.

    Files written by :func:`save_checkpoint` record their tensor count in the safetensors
    metadata; a file holding fewer tensors is refused too, naming those of ``expected`` (names the
    file should hold, when the caller knows them) that are absent.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is missing")
    header = _validated_header(path)
    names = set(header) - {"__metadata__"}
    metadata = header.get("__metadata__")
    count = metadata.get(TENSOR_COUNT_KEY) if isinstance(metadata, dict) else None
    if isinstance(count, str) and count.isdigit() and int(count) != len(names):
        absent = sorted(set(expected or ()) - names)
        raise CheckpointError(f"'{path}' is incomplete or altered: it holds {len(names)} tensors but was saved "
                              f"with {count}" + (f"; missing: {_fmt_keys(absent)}" if absent else ""))
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise CheckpointError(f"could not read '{path}': {exc}") from exc


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not readable JSON (damaged?): {exc}") from exc


def read_meta(ckpt_dir: str) -> Dict[str, Any]:
    """``meta.json`` of a checkpoint as a dict (empty when the file is absent).

    Raises :class:`CheckpointError` when it is not a readable JSON object."""
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), META_FILE)
    if not os.path.isfile(path):
        return {}
    meta = _read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object, found {type(meta).__name__}")
    return meta


def _is_numbers(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_normalizer(ckpt_dir: str) -> Dict[str, Any]:
    """``normalizer.json`` of a checkpoint: ``{state-dict key: number or nested list of numbers}``.

    Raises :class:`CheckpointError` (naming the file, and the key when one value is wrong) when it
    is missing, not JSON, or not of that form."""
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), NORMALIZER_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is missing")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object, found {type(data).__name__}")
    for key, value in data.items():
        if not _is_numbers(value):
            raise CheckpointError(f"'{path}': entry '{key}' is not a number or a list of numbers")
    return data


def load_training_state(ckpt_dir: str, required: Sequence[str] = TRAINING_STATE_KEYS) -> Dict[str, Any]:
    """The optimiser/scheduler/RNG payload, loaded with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file when it is missing, damaged, not a dict, or
    lacks one of the ``required`` keys (pass ``()`` to accept any dict)."""
    path = os.path.join(resolve_checkpoint_dir(ckpt_dir), STATE_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"'{path}' is missing: this checkpoint holds weights only and cannot resume "
                              f"training (use policy.start_ckpt_path to fine-tune from it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - RuntimeError, UnpicklingError, EOFError, OSError, ...
        raise CheckpointError(f"could not read '{path}' (damaged, or not written by this project): {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' must hold a dict, found {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"'{path}' lacks {', '.join(missing)}: it cannot resume training")
    return state


#: Modules that start as exact no-ops (zero-initialised output); a fine-tuning start checkpoint
#: made without them may lack their weights.
ZERO_INIT_PREFIXES = ("obs_encoder.mask_geometry_net.",)


def _fmt_keys(keys: Sequence[str]) -> str:
    return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")


_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
                 "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64}


class _TensorFile:
    """A safetensors file read one tensor at a time (for :func:`load_policy_weights`).

    The header is checked as :func:`read_safetensors` checks it (every entry fits the file, the
    recorded tensor count); ``shapes`` lists the tensors without reading any. :meth:`get` reads one
    tensor with plain file reads into fresh memory: a loader that copies it into its parameter and
    drops it holds the model plus one tensor. (``load_file`` holds every tensor of the file at
    once; tensors of ``safe_open`` are views of a memory map, whose pages count in the resident
    set once copied from, until the file is closed: either way a second copy of the model.)"""

    def __init__(self, path: str, expected: Optional[Iterable[str]] = None) -> None:
        if not os.path.isfile(path):
            raise CheckpointError(f"'{path}' is missing")
        header = _validated_header(path)
        self.path = path
        self.entries = {k: v for k, v in header.items() if k != "__metadata__"}
        self.shapes = {k: tuple(v["shape"]) for k, v in self.entries.items()}
        metadata = header.get("__metadata__")
        count = metadata.get(TENSOR_COUNT_KEY) if isinstance(metadata, dict) else None
        if isinstance(count, str) and count.isdigit() and int(count) != len(self.shapes):
            absent = sorted(set(expected or ()) - set(self.shapes))
            raise CheckpointError(f"'{path}' is incomplete or altered: it holds {len(self.shapes)} tensors but was "
                                  f"saved with {count}" + (f"; missing: {_fmt_keys(absent)}" if absent else ""))
        for name, entry in self.entries.items():  # checked before anything is copied
            if entry.get("dtype") not in _TORCH_DTYPES:
                raise CheckpointError(f"'{path}': tensor '{name}' has dtype {entry.get('dtype')!r}, not one "
                                      f"safetensors writes (damaged header?)")
        self._file = None
        self._data_start = 0

    def __enter__(self) -> "_TensorFile":
        try:
            self._file = open(self.path, "rb")
            self._data_start = 8 + int.from_bytes(self._file.read(8), "little")
        except OSError as exc:
            raise CheckpointError(f"could not read '{self.path}': {exc}") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def get(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype = _TORCH_DTYPES[entry["dtype"]]
        if sys.byteorder != "little":  # the file is little-endian: on other hosts the library decodes
            from safetensors import safe_open
            with safe_open(self.path, framework="pt") as f:
                return f.get_tensor(name).clone()
        out = torch.empty(end - begin, dtype=torch.uint8)
        try:
            self._file.seek(self._data_start + begin)
            got = self._file.readinto(out.numpy()) if end > begin else 0
        except OSError as exc:
            raise CheckpointError(f"could not read '{self.path}': tensor '{name}': {exc}") from exc
        if got != end - begin:
            raise CheckpointError(f"could not read '{self.path}': tensor '{name}' is truncated "
                                  f"({got} of {end - begin} bytes)")
        return out.view(dtype).reshape(self.shapes[name])


def _loads_plainly(policy: torch.nn.Module) -> bool:
    """True when ``load_state_dict`` would only copy tensors into place (no module but the
    normaliser, loaded on its own, overrides ``_load_from_state_dict`` or has load hooks)."""
    from controller.model.common.normalizer import LinearNormalizer
    for m in policy.modules():
        if isinstance(m, LinearNormalizer):
            continue
        if (type(m)._load_from_state_dict is not torch.nn.Module._load_from_state_dict
                or m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks):
            return False
    return not policy._load_state_dict_post_hooks


def load_policy_weights(policy: torch.nn.Module, ckpt_dir: str, use_ema: bool = False,
                        allow_missing_backbones: bool = False, allow_new_zero_init: bool = False) -> Dict[str, Any]:
    """Load ``model.safetensors`` (optionally with EMA weights on top) strictly into ``policy``.

    ``allow_new_zero_init`` (fine-tuning starts only) tolerates missing weights of the
    zero-initialised modules in :data:`ZERO_INIT_PREFIXES`, which then keep their no-op init.
    With ``use_ema`` and no ``ema.safetensors`` the raw weights are used, unless ``meta.json``
    says the checkpoint was saved with EMA (then the file is missing: an error).

    Memory: names and shapes are checked from the files' headers first; then each tensor is read
    and copied into its parameter on its own, so loading needs the model plus one tensor (reading
    whole files first held a second copy of the model: +2.2 GB for the paper preset). A tensor
    the EMA file holds is read from there only. An I/O error while copying leaves the policy
    partly loaded (the error says so); nothing of a file that does not fit is copied.

    Raises :class:`CheckpointError` listing missing/unexpected keys and shape mismatches, or
    naming the damaged file (and tensor).
    """
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    path = os.path.join(ckpt_dir, MODEL_FILE)
    model_file = _TensorFile(path)
    shapes = dict(model_file.shapes)
    source = dict.fromkeys(shapes, model_file)
    files = [model_file]
    if use_ema:
        ema_path = os.path.join(ckpt_dir, EMA_FILE)
        if os.path.isfile(ema_path):  # EMA weights checked against the raw ones: complete, known, same shapes
            trainable = [n for n, p in policy.named_parameters() if p.requires_grad and n in shapes]
            ema_file = _TensorFile(ema_path, expected=trainable)
            unknown = sorted(set(ema_file.shapes) - set(shapes))
            if unknown:
                raise CheckpointError(f"'{ema_path}' has tensors {MODEL_FILE} lacks: {_fmt_keys(unknown)}")
            wrong = sorted(k for k, s in ema_file.shapes.items() if s != shapes[k])
            if wrong:
                raise CheckpointError(f"'{ema_path}': shape mismatch with {MODEL_FILE}: " + _fmt_keys(
                    [f"{k}: {ema_file.shapes[k]} vs {shapes[k]}" for k in wrong]))
            source.update(dict.fromkeys(ema_file.shapes, ema_file))
            files.append(ema_file)
        elif read_meta(ckpt_dir).get("has_ema"):
            raise CheckpointError(f"'{ema_path}' is missing although "
                                  f"'{os.path.join(ckpt_dir, META_FILE)}' says the checkpoint has EMA weights")
    with contextlib.ExitStack() as stack:
        for f in files:
            stack.enter_context(f)
        if hasattr(policy, "normalizer"):  # a fresh policy's normaliser is empty: create its fields first
            nsd = {k[len("normalizer."):]: source[k].get(k) for k in shapes if k.startswith("normalizer.")}
            if not nsd:
                raise CheckpointError(f"checkpoint '{path}' has no normaliser ('normalizer.*' keys)")
            try:
                policy.normalizer.load_state_dict(nsd)
            except Exception as exc:  # noqa: BLE001
                raise CheckpointError(f"'{path}': the normaliser tensors ('normalizer.*') do not load: {exc}") from exc
            del nsd
        own = policy.state_dict()
        missing = sorted(set(own) - set(shapes))
        if allow_missing_backbones:
            missing = [k for k in missing if not k.startswith(BACKBONE_PREFIXES)]
        new_modules = [k for k in missing if allow_new_zero_init and k.startswith(ZERO_INIT_PREFIXES)]
        missing = [k for k in missing if k not in new_modules]
        unexpected = sorted(set(shapes) - set(own))
        wrong = sorted(k for k in set(own) & set(shapes) if tuple(own[k].shape) != shapes[k])
        if missing or unexpected or wrong:
            parts = []
            if wrong:
                parts.append("shape mismatch: " + _fmt_keys([f"{k}: checkpoint {shapes[k]} vs model "
                                                            f"{tuple(own[k].shape)}" for k in wrong]))
            if missing:
                parts.append(f"missing keys: {_fmt_keys(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {_fmt_keys(unexpected)}")
            raise CheckpointError(f"checkpoint '{path}' does not fit the model ({'; '.join(parts)}). "
                                  f"Check that the policy preset/config matches the one it was trained with.")
        if _loads_plainly(policy):
            # what load_state_dict does for plain modules (copy_ under no_grad), one tensor at a time
            try:
                with torch.no_grad():
                    for k, dest in own.items():
                        if k in shapes and not k.startswith("normalizer."):
                            dest.copy_(source[k].get(k))
            except CheckpointError as exc:
                raise CheckpointError(f"{exc} (the policy is left partly loaded)") from exc
            return {"path": path, "missing": [k for k in own if k not in shapes], "new_zero_init": new_modules}
        sd = {k: source[k].get(k) for k in shapes}  # a module with its own loading logic: load_state_dict
    try:
        result = policy.load_state_dict(sd, strict=not (allow_missing_backbones or new_modules))
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint '{path}' does not load into the model: {exc}") from exc
    return {"path": path, "missing": list(getattr(result, "missing_keys", [])), "new_zero_init": new_modules}
