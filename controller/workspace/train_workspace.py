"""Training workspace of the DexGraspVLA controller (Hydra config in, checkpoints out).

One object owns a run: it builds the dataset, policy, optimiser, LR schedule and (optional) EMA
from the config, trains with ``accelerate`` (DDP over N processes; bf16 autocast on CUDA, fp32
on CPU), and writes metrics (wandb + JSON lines), attention maps and atomic checkpoints.

Exact resume: the batch order of an epoch depends only on ``(seed, epoch)`` and every RNG state
is saved per rank, so ``training.resume=true`` continues with the same step count and the same
losses as an uninterrupted run.

Pre-emption (``training.preemption``): SIGTERM (SLURM, Kubernetes) and SIGINT (Ctrl-C) only set a
flag. After each optimiser step the ranks agree on it (an all-reduce of the signal number, every
``check_every`` steps), save ``checkpoints/latest`` with the position inside the epoch (batches
consumed, this epoch's losses so far, every rank's RNG) and exit with ``128 + signal`` (143 for
SIGTERM, 130 for SIGINT). A signal during the end-of-epoch work (validation, sampling, rollout,
checkpointing) lets that work finish; ``latest`` then holds the completed epoch. Resuming continues
the interrupted epoch at the next batch (the sampler starts past the consumed ones) and gives
bit-identical losses and weights. Per-sample randomness in the dataset depends only on
``(seed, epoch, index)`` (:class:`controller.common.samplers.EpochSeededDataset`), so neither the
worker that loads a sample nor the resume point changes what the model sees; the global RNGs are
restored at the point they were saved (see :meth:`TrainDexGraspVLAControllerWorkspace._resume`).
DataLoader workers ignore the stop signals (a cluster signals every process of the job; the main
process owns the shutdown).
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from controller.common.json_logger import JsonLogger
from controller.common.registry import instantiate
from controller.common.pytorch_util import to_device
from controller.common.samplers import EpochSeededDataset, EpochShuffleSampler
from controller.workspace import checkpoint as ckpt_lib
from controller.workspace import fsdp_state
from controller.workspace.topk import TopKCheckpointManager

logger = logging.getLogger(__name__)


def resolve_mixed_precision(value: str) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 support, else ``no``."""
    value = str(value).lower()
    if value not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"training.mixed_precision must be auto|no|fp16|bf16, got '{value}'")
    if value == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return value


def is_tty(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where tqdm writes) is a terminal: progress bars only there;
    a log file gets plain periodic lines instead of carriage-return redraws."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``1:05``."""
    seconds = int(round(max(0.0, float(seconds))))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def epoch_line(epoch: int, num_epochs: int, metrics: Dict[str, Any], lr: float, samples_per_s: float,
               epoch_s: float, eta_s: Optional[float]) -> str:
    """The console line of one finished epoch (rank 0), e.g.::

        epoch 3 [4/84]  train_loss 0.0412  val_loss 0.0530  val_mse 0.0121  lr 9.98e-05  412.3 samples/s  0:41/epoch  ETA 0:56:07
    """
    parts = [f"epoch {epoch} [{epoch + 1}/{num_epochs}]", f"train_loss {metrics['train_loss']:.4f}"]
    for key, label in (("val_loss", "val_loss"), ("train_action_mse_error", "train_mse"),
                       ("val_action_mse_error", "val_mse")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.4f}")
    for key in sorted(k for k in metrics if k.startswith("rollout/") and k.endswith("/success_rate")):
        parts.append(f"rollout_{key.split('/')[1]} {100 * metrics[key]:.0f}%")
    parts += [f"lr {lr:.2e}", f"{samples_per_s:.1f} samples/s", f"{format_duration(epoch_s)}/epoch"]
    parts.append(f"ETA {format_duration(eta_s)}" if eta_s is not None else "ETA -")
    return "  ".join(parts)


def checkpoints_line(best: Optional[Tuple[str, float]], monitor_key: str, latest: Optional[str]) -> str:
    """The final console line: ``checkpoints: best <path> (train_loss=0.0412), latest <path>``."""
    best_s = f"best {best[0]} ({monitor_key}={best[1]:.4f})" if best else "best none (checkpoint.topk.k=0)"
    latest_s = f"latest {latest}" if latest else "latest none (checkpoint.save_last_ckpt=false)"
    return f"checkpoints: {best_s}, {latest_s}"


class TrainingPreempted(SystemExit):
    """Raised by :meth:`TrainDexGraspVLAControllerWorkspace.run` after a stop signal, once
    ``checkpoints/latest`` is saved.

    It is a ``SystemExit``: uncaught (``train.py``), the process exits with ``code`` = 128 + the
    signal number -- 143 for SIGTERM, 130 for SIGINT, the shell's convention for "ended by that
    signal" -- so schedulers see a non-zero status. In-process callers can catch it.
    """

    def __init__(self, signum: int, epoch: int, global_step: int, checkpoint: str, mid_epoch: bool) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.epoch, self.global_step = int(signum), int(epoch), int(global_step)
        self.checkpoint, self.mid_epoch = checkpoint, bool(mid_epoch)

    def __str__(self) -> str:
        return preempted_message(self.epoch, self.global_step, self.checkpoint)


def preempted_message(epoch: int, global_step: int, checkpoint: str) -> str:
    """The final line a pre-empted run prints."""
    return (f"pre-empted at epoch {epoch} step {global_step}; checkpoint saved at {checkpoint}; "
            f"resume with training.resume=true")


def signal_number(value: Any) -> int:
    """``SIGTERM`` / ``TERM`` / ``15`` -> 15; refuses unknown names and signals that cannot be caught."""
    if isinstance(value, int) or str(value).isdigit():
        num = int(value)
    else:
        name = str(value).upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if not hasattr(signal, name) or not isinstance(getattr(signal, name), signal.Signals):
            raise ValueError(f"training.preemption.signals: unknown signal '{value}'")
        num = int(getattr(signal, name))
    if num in (int(signal.SIGKILL), int(signal.SIGSTOP)) or num not in set(int(s) for s in signal.Signals):
        raise ValueError(f"training.preemption.signals: signal '{value}' cannot be handled")
    return num


class StopSignalFlag:
    """Record stop signals instead of acting on them.

    The handler only stores the number of the first signal received (later ones are ignored:
    ``torchrun`` forwards the signal a rank may already have had from the cluster); the training
    loop polls :attr:`signum` at safe points. Handlers can only be set from the main thread:
    elsewhere :meth:`install` does nothing and returns False.
    """

    def __init__(self, signums: Sequence[int]) -> None:
        self.signums = tuple(int(s) for s in signums)
        self.signum = 0
        self._previous: Dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if not self.signum:
            self.signum = signum

    def install(self) -> bool:
        """Set the handlers (remembering the previous ones); False when not in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for s in self.signums:
            self._previous[s] = signal.signal(s, self._handler)
        return True

    def restore(self) -> None:
        """Put the previous handlers back (``SIG_DFL`` where the previous one was not set from Python)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def ignore_signals(signums: Tuple[int, ...], worker_id: int = 0) -> None:  # noqa: ARG001 - worker_init_fn
    """DataLoader ``worker_init_fn``: the workers ignore the stop signals (the main process saves and
    ends them; a worker killed by the cluster's SIGTERM would make the main process raise instead)."""
    for s in signums:
        signal.signal(s, signal.SIG_IGN)


class TrainDexGraspVLAControllerWorkspace:
    """Build everything from ``cfg`` and train; ``run()`` returns the final metrics."""

    def __init__(self, cfg: DictConfig, output_dir: Optional[str] = None) -> None:
        self.cfg = cfg
        self.output_dir = os.path.abspath(output_dir or os.getcwd())
        self.ckpt_dir = os.path.join(self.output_dir, "checkpoints")
        self.global_step = 0
        self.epoch = 0
        self._stop_flag: Optional[StopSignalFlag] = None
        self._mid_epoch: Optional[Dict[str, Any]] = None     # set while saving a mid-epoch checkpoint
        self._resume_mid: Optional[Dict[str, Any]] = None    # position inside the epoch to resume at
        self._pending_rng: Optional[Dict[str, Any]] = None   # the RNG states to restore (see _resume)
        self._latest_saved: Optional[tuple] = None            # (epoch, step, mid_epoch) of checkpoints/latest
        self._first_batch = None

    def _preemption_settings(self) -> Tuple[bool, Tuple[int, ...], int]:
        """(enabled, signal numbers, check_every) from ``training.preemption``."""
        p = self.cfg.training.get("preemption") or {}
        signums = tuple(signal_number(s) for s in (p.get("signals") or ["SIGTERM", "SIGINT"]))
        check_every = int(p.get("check_every") or 1)
        if check_every < 1:
            raise ValueError(f"training.preemption.check_every must be >= 1, got {check_every}")
        return bool(p.get("enabled", True)), signums, check_every

    # ------------------------------------------------------------------ set-up
    def _seed(self, rank: int) -> None:
        seed = int(self.cfg.training.seed) + rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _make_loader(self, dataset, loader_cfg: DictConfig, shuffle: bool, seed: int, acc):
        """DataLoader over ``EpochSeededDataset(dataset)``, fed ``(epoch, index)`` keys by the sampler."""
        sampler = EpochShuffleSampler(len(dataset), acc.num_processes, acc.process_index, seed=seed,
                                      shuffle=shuffle and bool(loader_cfg.get("shuffle", True)),
                                      with_epoch=True)
        workers = int(loader_cfg.get("num_workers", 0))
        kwargs: Dict[str, Any] = dict(batch_size=int(loader_cfg.batch_size), sampler=sampler, num_workers=workers,
                                      pin_memory=bool(loader_cfg.get("pin_memory", False)) and acc.device.type == "cuda",
                                      drop_last=False)
        if workers > 0:
            kwargs["persistent_workers"] = bool(loader_cfg.get("persistent_workers", False))
            kwargs["prefetch_factor"] = int(loader_cfg.get("prefetch_factor", 2))
            enabled, signums, _ = self._preemption_settings()
            if enabled:
                kwargs["worker_init_fn"] = functools.partial(ignore_signals, signums)
        return torch.utils.data.DataLoader(EpochSeededDataset(dataset, seed), **kwargs), sampler

    def _build(self, acc) -> None:
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        self.dataset = instantiate(cfg.task.dataset, ("dataset",), where="task.dataset", trusted=True)
        if len(self.dataset) == 0:
            raise ValueError(f"task.dataset has no training samples (paths: {list(cfg.task.dataset_paths)})")
        self.val_dataset = self.dataset.get_validation_dataset()
        self.train_loader, self.train_sampler = self._make_loader(self.dataset, cfg.dataloader, True,
                                                                  int(cfg.training.seed), acc)
        self.val_loader = None
        if len(self.val_dataset) > 0:
            self.val_loader, _ = self._make_loader(self.val_dataset, cfg.val_dataloader, False,
                                                   int(cfg.training.seed), acc)
        self.policy = instantiate(cfg.policy, ("policy",), where="policy", trusted=True)
        self.policy.set_normalizer(self.dataset.get_normalizer())
        if cfg.policy.get("start_ckpt_path"):
            info = ckpt_lib.load_policy_weights(self.policy, cfg.policy.start_ckpt_path, use_ema=True,
                                                allow_new_zero_init=True)
            acc.print(f"fine-tuning from {info['path']}"
                      + (f" (new zero-initialised modules: {len(info['new_zero_init'])} tensors)"
                         if info["new_zero_init"] else ""))
            self.policy.set_normalizer(self.dataset.get_normalizer())  # the new data's statistics
        n_trainable = self.policy.num_trainable_parameters()
        acc.print(f"policy: {n_trainable:,} trainable parameters ({n_trainable / 1e6:.2f}M); "
                  f"{len(self.dataset)} train samples, {len(self.val_dataset)} val samples; "
                  f"{acc.num_processes} process(es) on {acc.device.type}, mixed precision '{acc.mixed_precision}'")
        self.optimizer = self.policy.get_optimizer(**cfg.optimizer)
        steps_per_epoch = len(self.train_loader)
        if cfg.training.max_train_steps:
            steps_per_epoch = min(steps_per_epoch, int(cfg.training.max_train_steps))
        accum = int(cfg.training.gradient_accumulate_every)
        self.total_steps = int(cfg.training.num_epochs) * math.ceil(steps_per_epoch / accum)
        self.lr_scheduler = get_scheduler(cfg.training.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=int(cfg.training.lr_warmup_steps),
                                          num_training_steps=self.total_steps)
        self.ema = None
        if cfg.training.use_ema:
            from controller.model.diffusion.ema_model import EMAModel
            self.ema = EMAModel(self.policy, **cfg.ema)
        if cfg.training.get("compile"):
            # in place (nn.Module.compile): parameter names and checkpoints stay as they are
            self.policy.model.compile(**dict(cfg.training.get("compile_options") or {}))
            acc.print("torch.compile: the denoiser (policy.model) is compiled on its first step")
        self.model, self.optimizer = acc.prepare(self.policy, self.optimizer)
        fsdp_state.shard_ema(self.ema, self.model)  # FSDP2: the EMA shadow sharded like the parameters

    # ------------------------------------------------------------------ checkpoint
    def _training_state(self, acc) -> Dict[str, Any]:
        """Everything a resume needs. ``mid_epoch`` is None at an epoch boundary (``epoch`` is then the
        last completed epoch); after a stop signal inside epoch ``epoch`` it holds the position::

            {"batches_done": k (per rank), "start": k * batch_size * num_processes (sampler offset),
             "batch_size": ..., "num_processes": ..., "losses": [[this epoch's losses] per rank]}
        """
        mid = None
        if self._mid_epoch is not None:
            k, bs = int(self._mid_epoch["batches_done"]), int(self.train_loader.batch_size)
            mid = {"batches_done": k, "start": k * bs * acc.num_processes, "batch_size": bs,
                   "num_processes": acc.num_processes,
                   "losses": all_gather_object(acc, [float(v) for v in self._mid_epoch["losses"]])}
        return {"epoch": self.epoch, "global_step": self.global_step,
                "optimizer": fsdp_state.optimizer_state_dict(self.model, self.optimizer),
                "lr_scheduler": self.lr_scheduler.state_dict(), "ema": fsdp_state.ema_state_dict(self.ema),
                "rng": capture_all_ranks_rng(acc), "mid_epoch": mid}

    def save_checkpoint(self, acc, path: str, metrics: Dict[str, float],
                        extra_meta: Optional[Dict[str, Any]] = None) -> None:
        """Save a checkpoint of the current state (collective: every rank must call)."""
        state = self._training_state(acc)  # collective: every rank must call
        weights = fsdp_state.full_model_state_dict(self.model)  # FSDP: gathered on rank 0; else None
        if acc.is_main_process:
            meta = {"epoch": self.epoch, "global_step": self.global_step, "metrics": metrics,
                    "trainable_parameters": self.policy.num_trainable_parameters(), **(extra_meta or {})}
            ckpt_lib.save_checkpoint(path, acc.unwrap_model(self.model), cfg=self.cfg, ema=self.ema,
                                     training_state=state, meta=meta, state_dict=weights, ema_state=state["ema"],
                                     save_frozen_backbones=bool(self.cfg.checkpoint.save_frozen_backbones))
        acc.wait_for_everyone()
        if os.path.abspath(path) == os.path.abspath(os.path.join(self.ckpt_dir, "latest")):
            self._latest_saved = (self.epoch, self.global_step, self._mid_epoch is not None)

    def _resume(self, acc) -> None:
        tcfg = self.cfg.training
        path = tcfg.get("resume_from") or os.path.join(self.ckpt_dir, "latest")
        if not tcfg.resume and not tcfg.get("resume_from"):
            return
        try:
            path = ckpt_lib.resolve_checkpoint_dir(path)
        except ckpt_lib.CheckpointError:
            if tcfg.get("resume_from"):
                raise
            acc.print(f"training.resume=true but no checkpoint at {path}: starting fresh")
            return
        if fsdp_state.fsdp_version(self.model):  # sharded: scattered from the full tensors (collective)
            fsdp_state.load_model_weights(self.model, path)
        else:
            ckpt_lib.load_policy_weights(acc.unwrap_model(self.model), path)
        state = ckpt_lib.load_training_state(path)
        fsdp_state.load_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
            fsdp_state.shard_ema(self.ema, self.model)
        self.epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        mid = state.get("mid_epoch")
        if mid:  # stopped inside epoch state["epoch"]: continue that epoch at the next batch
            self.epoch = int(state["epoch"])
            self._resume_mid = self._resume_position(acc, mid)
        rng = state["rng"]
        if len(rng) != acc.num_processes:
            acc.print(f"warning: checkpoint has RNG states for {len(rng)} processes, running {acc.num_processes}; "
                      f"resumed run will not be bitwise identical")
        # Restored where they were captured: at an epoch boundary right before the next epoch starts
        # (after wandb / the env runner are set up); mid-epoch right before the next forward, because
        # the DataLoader's iterator creation at the start of the epoch (which draws the workers' base
        # seed from the torch RNG) had happened before the checkpoint and happens again on resume.
        self._pending_rng = rng[acc.process_index] if acc.process_index < len(rng) else rng[0]
        where = (f"epoch {self.epoch} after batch {self._resume_mid['batches_done']}" if mid
                 else f"next epoch {self.epoch}")
        acc.print(f"resumed from {path}: {where}, global step {self.global_step}")

    def _resume_position(self, acc, mid: Dict[str, Any]) -> Dict[str, Any]:
        """Where this rank continues an interrupted epoch, and its loss list so far."""
        bs = int(self.train_loader.batch_size)
        if int(mid["num_processes"]) == acc.num_processes and int(mid["batch_size"]) == bs:
            return {"batches_done": int(mid["batches_done"]), "start": int(mid["start"]),
                    "losses": list(mid["losses"][acc.process_index])}
        acc.print(f"warning: the checkpoint stopped mid-epoch with {mid['num_processes']} process(es) x batch "
                  f"{mid['batch_size']}, now {acc.num_processes} x {bs}: the epoch continues after the samples "
                  f"already seen, but not bitwise identically")
        return {"batches_done": int(mid["start"]) // (bs * acc.num_processes), "start": int(mid["start"]),
                "losses": [float(v) for rank_losses in mid["losses"] for v in rank_losses]}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _sample_metrics(self, acc, batch, split: str) -> Dict[str, float]:
        from controller.policy.dexgraspvla_controller import obs_to_uint8_images

        policy = acc.unwrap_model(self.model)
        policy.eval()
        if "language" in batch and "language" in inspect.signature(policy.predict_action).parameters:
            # a language-conditioned policy (DexVLA): instruction in, chunk + reasoning out
            want_attn = False
            with acc.autocast():
                pred, record = policy.predict_action(batch["obs"], language=batch["language"])["action"], None
        else:
            want_attn = bool(self.cfg.training.gen_attn_map) and acc.is_main_process
            with acc.autocast():
                out = policy.predict_action(batch["obs"], return_attention=want_attn)
            pred, record = out if want_attn else (out, None)
        gt = batch["action"]
        valid = (~batch["action_is_pad"].bool()).unsqueeze(-1).float()
        mse = (((pred.float() - gt.float()) ** 2) * valid).sum() / (valid.sum() * gt.shape[-1]).clamp_min(1)
        if record is not None:
            from controller.viz.attention_io import save_attention_maps
            n = record["attn"].shape[2]
            path = os.path.join(self.output_dir, "attention_maps", f"epoch_{self.epoch:04d}_{split}.npz")
            save_attention_maps(path, **record, **obs_to_uint8_images(batch["obs"], n),
                                meta={"epoch": self.epoch, "global_step": self.global_step, "split": split})
        policy.train()
        return {f"{split}_action_mse_error": acc.reduce(mse.detach(), "mean").item()}

    @torch.no_grad()
    def _val_loss(self, acc) -> Optional[float]:
        if self.val_loader is None:
            return None
        self.model.eval()
        losses, max_steps = [], self.cfg.training.max_val_steps
        for i, batch in enumerate(self.val_loader):
            with acc.autocast():
                losses.append(self.model(to_device(batch, acc.device)).detach())
            if max_steps and i + 1 >= int(max_steps):
                break
        self.model.train()
        return acc.reduce(torch.stack(losses).mean(), "mean").item()

    # ------------------------------------------------------------------ main loop
    def run(self) -> Dict[str, float]:
        """Train for ``training.num_epochs`` epochs; returns the last epoch's metrics.

        With ``training.preemption.enabled`` the stop signals only set a flag while this runs (the
        previous handlers are put back at the end); a stop raises :class:`TrainingPreempted` after
        saving ``checkpoints/latest``.
        """
        enabled, signums, _ = self._preemption_settings()
        self._stop_flag = StopSignalFlag(signums) if enabled else None
        if self._stop_flag is not None and not self._stop_flag.install():
            logger.warning("run() is not in the main thread: stop signals keep their default behaviour")
            self._stop_flag = None
        try:
            return self._run()
        finally:
            if self._stop_flag is not None:
                self._stop_flag.restore()

    def _run(self) -> Dict[str, float]:
        from accelerate import Accelerator
        from tqdm.auto import tqdm

        cfg, tcfg = self.cfg, self.cfg.training
        acc = Accelerator(mixed_precision=resolve_mixed_precision(tcfg.mixed_precision),
                          gradient_accumulation_steps=int(tcfg.gradient_accumulate_every),
                          cpu=not torch.cuda.is_available())
        if not acc.is_main_process:  # one console: the other ranks log warnings and errors only
            logging.getLogger().setLevel(logging.WARNING)
        # every rank uses rank 0's run directory (Hydra resolves ${now:...} in each process: ranks that
        # start a second apart would otherwise get different directories)
        self.output_dir = acc_broadcast_object(acc, self.output_dir)
        self.ckpt_dir = os.path.join(self.output_dir, "checkpoints")
        acc.print(f"run directory: {self.output_dir}", flush=True)
        if tcfg.get("threads") and acc.device.type == "cpu":
            torch.set_num_threads(int(tcfg.threads))
        self._seed(acc.process_index)
        self._build(acc)
        self._resume(acc)
        ckpt_lib.clean_stale_temporaries(self.ckpt_dir, is_main_process=acc.is_main_process,
                                         barrier=acc.wait_for_everyone)  # after resume read what it needs
        topk = TopKCheckpointManager(self.ckpt_dir, **cfg.checkpoint.topk)
        jlog = JsonLogger(os.path.join(self.output_dir, "logs.json.txt")) if acc.is_main_process else None
        wb = self._start_wandb(acc)
        if jlog:
            jlog.start(max_step=self.global_step if self.global_step > 0 else None)
        env_runner = None
        if cfg.task.get("env_runner") and acc.is_main_process:
            env_runner = instantiate(cfg.task.env_runner, ("env_runner",), where="task.env_runner", trusted=True,
                                     output_dir=self.output_dir)
        metrics: Dict[str, float] = {}
        stop_at = int(tcfg.num_epochs)
        if tcfg.get("epochs_per_run"):  # time-limited cluster jobs: stop early, resume later
            stop_at = min(stop_at, self.epoch + int(tcfg.epochs_per_run))
        self._align_persistent_loaders()
        if self._pending_rng is not None and self._resume_mid is None:  # epoch boundary (see _resume)
            ckpt_lib.restore_rng_state(self._pending_rng)
            self._pending_rng = None
        epoch_times = []
        try:
            while self.epoch < stop_at:
                t0 = time.monotonic()
                metrics = self._train_epoch(acc, tqdm, jlog, wb)
                if self._mid_epoch is not None:  # every rank agreed to stop after an optimiser step
                    self._stop_for_signal(acc, self._mid_epoch["signum"])
                samples_per_s = metrics.pop("samples_per_s", 0.0)
                metrics.update(self._end_of_epoch(acc, env_runner))
                if jlog:
                    jlog.log(metrics)
                if wb is not None:
                    wb.log(metrics, step=self.global_step)
                self._checkpoints(acc, topk, metrics)
                epoch_times.append(time.monotonic() - t0)
                remaining = int(tcfg.num_epochs) - self.epoch - 1
                acc.print(epoch_line(self.epoch, int(tcfg.num_epochs), metrics, self.lr_scheduler.get_last_lr()[0],
                                     samples_per_s, epoch_times[-1], float(np.mean(epoch_times)) * remaining),
                          flush=True)
                signum = self._agreed_stop_signal(acc)  # a signal during validation/sampling/rollout/saving
                if signum:
                    self._stop_for_signal(acc, signum)
                self.epoch += 1
            if acc.is_main_process:
                self._print_final_line(acc, topk, stop_at)
        finally:
            if jlog:
                jlog.stop()
            if wb is not None:
                wb.finish()
            acc.end_training()
        return metrics

    def _print_final_line(self, acc, topk: TopKCheckpointManager, stop_at: int) -> None:
        """``checkpoints: best <path> (<monitor>=...), latest <path>`` (rank 0, after the last epoch)."""
        if stop_at < int(self.cfg.training.num_epochs):
            acc.print(f"stopped after epoch {self.epoch - 1} (training.epochs_per_run); continue with "
                      f"training.resume=true hydra.run.dir={self.output_dir}", flush=True)
        best = None
        if topk.path_value:
            pick = min if topk.mode == "min" else max
            best = pick(topk.path_value.items(), key=lambda kv: kv[1])
        latest = os.path.join(self.ckpt_dir, "latest")
        acc.print(checkpoints_line(best, topk.monitor_key, latest if ckpt_lib.is_checkpoint_dir(latest) else None),
                  flush=True)

    def _train_epoch(self, acc, tqdm, jlog, wb) -> Dict[str, float]:
        """One epoch (or its rest after a mid-epoch resume). If the ranks agree on a stop signal after
        an optimiser step, return early with ``self._mid_epoch`` set to the position."""
        tcfg = self.cfg.training
        resume, self._resume_mid = self._resume_mid or {"batches_done": 0, "start": 0, "losses": []}, None
        done = int(resume["batches_done"])
        self.train_sampler.set_epoch(self.epoch, start=int(resume["start"]))  # skip consumed batches unloaded
        self.model.train()
        losses = list(resume["losses"])
        self._first_batch = None  # loaded again at the end of the epoch if this run did not see it
        max_steps = int(tcfg.max_train_steps) if tcfg.max_train_steps else None
        total = min(len(self.train_loader), max(0, max_steps - done)) if max_steps else len(self.train_loader)
        params = [p for p in self.model.parameters() if p.requires_grad]
        _, _, check_every = self._preemption_settings()
        # A bar on a terminal; in a log file (not a tty) no bar -- its redraws would be carriage-return
        # spam -- but a plain line every training.progress_every_sec seconds (0 = none).
        tty = is_tty()
        plain_every = float(tcfg.get("progress_every_sec") or 0)
        t_start = t_plain = time.monotonic()
        n_samples = 0
        with tqdm(self.train_loader, total=done + total, desc=f"epoch {self.epoch}", initial=done,
                  leave=False, mininterval=float(tcfg.tqdm_interval_sec), dynamic_ncols=True,
                  disable=not (acc.is_local_main_process and tty)) as bar:
            for i, batch in enumerate(bar, start=done):
                if i >= done + total:  # resumed with max_train_steps already reached
                    break
                n_samples += int(batch["action"].shape[0]) * acc.num_processes
                batch = to_device(batch, acc.device)
                self._restore_pending_rng()  # mid-epoch resume: the state saved after the last step
                if i == 0:
                    self._first_batch = batch
                with acc.accumulate(self.model):
                    with acc.autocast():
                        loss = self.model(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and tcfg.max_grad_norm:
                        acc.clip_grad_norm_(params, float(tcfg.max_grad_norm))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    self.lr_scheduler.step()
                    if self.ema is not None:
                        self.ema.step(acc.unwrap_model(self.model))
                    self.global_step += 1
                loss_v = loss.detach().item()
                losses.append(loss_v)
                bar.set_postfix(loss=f"{loss_v:.4f}", refresh=False)
                step_log = {"train_loss": loss_v, "global_step": self.global_step, "epoch": self.epoch,
                            "lr": self.lr_scheduler.get_last_lr()[0]}
                if jlog:
                    jlog.log(step_log)
                if wb is not None:
                    wb.log(step_log, step=self.global_step)
                # stop only right after an optimiser step (no half-accumulated gradients to lose), at the
                # same step on every rank: global_step is equal everywhere, the check is collective
                if (acc.sync_gradients and self._stop_flag is not None
                        and (acc.num_processes == 1 or self.global_step % check_every == 0)):
                    signum = self._agreed_stop_signal(acc)
                    if signum:
                        self._mid_epoch = {"signum": signum, "batches_done": i + 1, "losses": losses,
                                           "batches_total": done + total}
                        return {}
                now = time.monotonic()
                if not tty and plain_every > 0 and now - t_plain >= plain_every and acc.is_main_process:
                    t_plain = now
                    acc.print(f"  epoch {self.epoch}: batch {i + 1}/{done + total} ({100 * (i + 1) / (done + total):.0f}%)"
                              f"  loss {loss_v:.4f}  {n_samples / max(now - t_start, 1e-9):.1f} samples/s"
                              f"  epoch ETA {format_duration((now - t_start) / (i + 1 - done) * (done + total - i - 1))}",
                              flush=True)
                if max_steps and i + 1 >= done + total:  # max_train_steps: do not load a batch for nothing
                    break
        self._restore_pending_rng()  # resumed after the epoch's last batch: nothing left to train
        mean_loss = acc.reduce(torch.tensor(float(np.mean(losses)), device=acc.device), "mean").item()
        return {"train_loss": mean_loss, "epoch": self.epoch, "global_step": self.global_step,
                "samples_per_s": n_samples / max(time.monotonic() - t_start, 1e-9)}

    def _end_of_epoch(self, acc, env_runner) -> Dict[str, float]:
        tcfg, out = self.cfg.training, {}
        last = self.epoch == int(tcfg.num_epochs) - 1
        if tcfg.val_every and (self.epoch % int(tcfg.val_every) == 0 or last):
            val = self._val_loss(acc)
            if val is not None:
                out["val_loss"] = val
        if tcfg.sample_every and (self.epoch % int(tcfg.sample_every) == 0 or last):
            out.update(self._sample_metrics(acc, self._epoch_first_batch(acc), "train"))
            if self.val_loader is not None:
                vb = to_device(next(iter(self.val_loader)), acc.device)
                out.update(self._sample_metrics(acc, vb, "val"))
        if env_runner is not None and self._rollout_due(last):
            acc.print(f"rollout after epoch {self.epoch} (training.rollout_every={tcfg.rollout_every})", flush=True)
            policy = acc.unwrap_model(self.model)
            policy.eval()
            if self.ema is not None:
                with self.ema.applied_to(policy):
                    out.update(env_runner.run(policy))
            else:
                out.update(env_runner.run(policy))
            policy.train()
        acc.wait_for_everyone()
        return out

    def _rollout_due(self, last: bool) -> bool:
        """Rollouts (tasks with an env runner) after every ``rollout_every``-th completed epoch and after
        the last one; ``rollout_every: 0`` = never. Not after epoch 0 (an untrained policy) unless
        ``rollout_every: 1`` or ``training.rollout_at_start: true``."""
        tcfg = self.cfg.training
        every = int(tcfg.get("rollout_every") or 0)
        if every <= 0:
            return False
        if self.epoch == 0 and tcfg.get("rollout_at_start"):
            return True
        return last or (self.epoch + 1) % every == 0

    def _restore_pending_rng(self) -> None:
        if self._pending_rng is not None:
            ckpt_lib.restore_rng_state(self._pending_rng)
            self._pending_rng = None

    def _align_persistent_loaders(self) -> None:
        """A loader with persistent workers draws from the torch RNG (its workers' base seed) only
        when its iterator is first created -- in epoch 0 of an uninterrupted run, and never again.
        A run resumed at a later epoch creates those iterators here with the RNG forked, so that it
        does not draw either."""
        if self.epoch == 0:
            return
        for loader in (self.train_loader, self.val_loader):
            if loader is not None and loader.persistent_workers:
                with torch.random.fork_rng(devices=[]):
                    iter(loader)

    def _epoch_first_batch(self, acc):
        """This rank's first training batch of the epoch (for the sample metrics). After a mid-epoch
        resume this run did not load it: it is loaded again from the same indices (per-sample
        randomness depends on (seed, epoch, index) only, so it is the same batch, bit for bit)."""
        if self._first_batch is None:
            loader = self.train_loader
            keys = [(self.epoch, i) for i in self.train_sampler.rank_indices()[:loader.batch_size]]
            self._first_batch = to_device(loader.collate_fn([loader.dataset[k] for k in keys]), acc.device)
        return self._first_batch

    # ------------------------------------------------------------------ pre-emption
    def _agreed_stop_signal(self, acc) -> int:
        """The signal every rank stops for, 0 = go on: the largest signal number any rank received
        (an all-reduce with several processes, so every rank must call it at the same point)."""
        if self._stop_flag is None:
            return 0
        local = int(self._stop_flag.signum)
        if acc.num_processes == 1:
            return local
        import torch.distributed as dist
        flag = torch.tensor([local], dtype=torch.int64, device=acc.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def _stop_for_signal(self, acc, signum: int) -> None:
        """Save ``checkpoints/latest`` (unless it already holds exactly this state) and raise
        :class:`TrainingPreempted`. Mid-epoch when ``self._mid_epoch`` is set, else after the epoch."""
        name = signal.Signals(signum).name
        path = os.path.join(self.ckpt_dir, "latest")
        mid = self._mid_epoch
        if mid is not None:
            where = (f"inside epoch {self.epoch} after {mid['batches_done']} of {mid['batches_total']} "
                     f"batches (step {self.global_step})")
        else:
            where = f"at the end of epoch {self.epoch} (step {self.global_step})"
        acc.print(f"received {name}: stopping {where}; saving {path}", flush=True)
        try:
            if mid is not None or self._latest_saved != (self.epoch, self.global_step, False):
                self.save_checkpoint(acc, path, {}, extra_meta={
                    "preempted": name,
                    "mid_epoch": {"batches_done": mid["batches_done"]} if mid is not None else None})
        finally:
            self._mid_epoch = None
        if acc.is_main_process:
            print(preempted_message(self.epoch, self.global_step, path), file=sys.stderr, flush=True)
        acc.wait_for_everyone()  # no rank exits (and makes a launcher kill the others) before the message
        raise TrainingPreempted(signum, self.epoch, self.global_step, path, mid is not None)

    def _checkpoints(self, acc, topk: TopKCheckpointManager, metrics: Dict[str, float]) -> None:
        ccfg, tcfg = self.cfg.checkpoint, self.cfg.training
        last = self.epoch == int(tcfg.num_epochs) - 1
        if not (tcfg.checkpoint_every and (self.epoch % int(tcfg.checkpoint_every) == 0 or last)):
            return
        if ccfg.save_last_ckpt:
            self.save_checkpoint(acc, os.path.join(self.ckpt_dir, "latest"), metrics)
        path = topk.get_ckpt_path(dict(metrics)) if acc.is_main_process else None
        path = acc_broadcast_object(acc, path)
        if path:
            self.save_checkpoint(acc, path, metrics)
            if acc.is_main_process:  # only now, with the new one on disk, drop the one it displaces
                topk.commit(path)

    def _start_wandb(self, acc):
        lcfg = self.cfg.logging
        mode = str(lcfg.mode)
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logging.mode must be online|offline|disabled, got '{mode}'")
        if not acc.is_main_process:
            return None
        if mode == "disabled":
            acc.print(wandb_line(None, mode, self.output_dir), flush=True)
            return None
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(project=lcfg.project, name=lcfg.name, mode=mode, dir=self.output_dir,
                         id=lcfg.id, group=lcfg.group, tags=list(lcfg.tags), resume="allow",
                         config=OmegaConf.to_container(self.cfg, resolve=True))
        acc.print(wandb_line(run, mode, self.output_dir), flush=True)
        return run


def wandb_line(run, mode: str, output_dir: str) -> str:
    """Where the wandb run is: its URL (online), its directory and the upload command (offline)."""
    metrics_file = os.path.join(output_dir, "logs.json.txt")
    if run is None or getattr(run, "disabled", False):
        why = "logging.mode=disabled" if mode == "disabled" else "WANDB_MODE=disabled"
        return f"wandb: disabled ({why}); metrics in {metrics_file}"
    if getattr(run, "offline", False) or mode == "offline":
        run_dir = os.path.dirname(run.dir) if getattr(run, "dir", None) else os.path.join(output_dir, "wandb")
        return f"wandb: offline run in {run_dir} (upload: wandb sync {run_dir})"
    return f"wandb: {run.url}"


def acc_broadcast_object(acc, obj):
    """Broadcast a picklable object from the main process (no-op on one process)."""
    if acc.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def all_gather_object(acc, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (collective; picklable objects)."""
    if acc.num_processes == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * acc.num_processes
    dist.all_gather_object(out, obj)
    return out


def capture_all_ranks_rng(acc) -> list:
    """RNG states of every rank, gathered to all (so rank r restores its own on resume)."""
    mine = ckpt_lib.capture_rng_state()
    if acc.num_processes == 1:
        return [mine]
    import torch.distributed as dist
    out = [None] * acc.num_processes
    dist.all_gather_object(out, mine)
    return out
