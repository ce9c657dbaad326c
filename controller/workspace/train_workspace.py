"""Training workspace of the DexGraspVLA controller (Hydra config in, checkpoints out).

One object owns a run: it builds the dataset, policy, optimiser, LR schedule and (optional) EMA
from the config, trains with ``accelerate`` (DDP over N processes; bf16 autocast on CUDA, fp32
on CPU), and writes metrics (wandb + JSON lines), attention maps and atomic checkpoints.

Exact resume: the batch order of an epoch depends only on ``(seed, epoch)`` and every RNG state
is saved per rank, so ``training.resume=true`` continues with the same step count and the same
losses as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from controller.common.json_logger import JsonLogger
from controller.common.registry import instantiate
from controller.common.pytorch_util import to_device
from controller.common.samplers import EpochShuffleSampler
from controller.workspace import checkpoint as ckpt_lib
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


class TrainDexGraspVLAControllerWorkspace:
    """Build everything from ``cfg`` and train; ``run()`` returns the final metrics."""

    def __init__(self, cfg: DictConfig, output_dir: Optional[str] = None) -> None:
        self.cfg = cfg
        self.output_dir = os.path.abspath(output_dir or os.getcwd())
        self.ckpt_dir = os.path.join(self.output_dir, "checkpoints")
        self.global_step = 0
        self.epoch = 0

    # ------------------------------------------------------------------ set-up
    def _seed(self, rank: int) -> None:
        seed = int(self.cfg.training.seed) + rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _make_loader(self, dataset, loader_cfg: DictConfig, shuffle: bool, seed: int, acc):
        sampler = EpochShuffleSampler(len(dataset), acc.num_processes, acc.process_index, seed=seed,
                                      shuffle=shuffle and bool(loader_cfg.get("shuffle", True)))
        workers = int(loader_cfg.get("num_workers", 0))
        kwargs: Dict[str, Any] = dict(batch_size=int(loader_cfg.batch_size), sampler=sampler, num_workers=workers,
                                      pin_memory=bool(loader_cfg.get("pin_memory", False)) and acc.device.type == "cuda",
                                      drop_last=False)
        if workers > 0:
            kwargs["persistent_workers"] = bool(loader_cfg.get("persistent_workers", False))
            kwargs["prefetch_factor"] = int(loader_cfg.get("prefetch_factor", 2))
        return torch.utils.data.DataLoader(dataset, **kwargs), sampler

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

    # ------------------------------------------------------------------ checkpoint
    def _training_state(self, acc) -> Dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.global_step,
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": capture_all_ranks_rng(acc)}

    def save_checkpoint(self, acc, path: str, metrics: Dict[str, float]) -> None:
        state = self._training_state(acc)  # collective: every rank must call
        if acc.is_main_process:
            meta = {"epoch": self.epoch, "global_step": self.global_step, "metrics": metrics,
                    "trainable_parameters": self.policy.num_trainable_parameters()}
            ckpt_lib.save_checkpoint(path, acc.unwrap_model(self.model), cfg=self.cfg, ema=self.ema,
                                     training_state=state, meta=meta,
                                     save_frozen_backbones=bool(self.cfg.checkpoint.save_frozen_backbones))
        acc.wait_for_everyone()

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
        ckpt_lib.load_policy_weights(acc.unwrap_model(self.model), path)
        state = ckpt_lib.load_training_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.epoch = int(state["epoch"]) + 1
        self.global_step = int(state["global_step"])
        rng = state["rng"]
        if len(rng) != acc.num_processes:
            acc.print(f"warning: checkpoint has RNG states for {len(rng)} processes, running {acc.num_processes}; "
                      f"resumed run will not be bitwise identical")
        restore = rng[acc.process_index] if acc.process_index < len(rng) else rng[0]
        ckpt_lib.restore_rng_state(restore)
        acc.print(f"resumed from {path}: next epoch {self.epoch}, global step {self.global_step}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _sample_metrics(self, acc, batch, split: str) -> Dict[str, float]:
        from controller.policy.dexgraspvla_controller import obs_to_uint8_images

        policy = acc.unwrap_model(self.model)
        policy.eval()
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
        """Train for ``training.num_epochs`` epochs; returns the last epoch's metrics."""
        from accelerate import Accelerator
        from tqdm.auto import tqdm

        cfg, tcfg = self.cfg, self.cfg.training
        acc = Accelerator(mixed_precision=resolve_mixed_precision(tcfg.mixed_precision),
                          gradient_accumulation_steps=int(tcfg.gradient_accumulate_every),
                          cpu=not torch.cuda.is_available())
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
        try:
            while self.epoch < stop_at:
                metrics = self._train_epoch(acc, tqdm, jlog, wb)
                metrics.update(self._end_of_epoch(acc, env_runner))
                if jlog:
                    jlog.log(metrics)
                if wb is not None:
                    wb.log(metrics, step=self.global_step)
                self._checkpoints(acc, topk, metrics)
                self.epoch += 1
        finally:
            if jlog:
                jlog.stop()
            if wb is not None:
                wb.finish()
            acc.end_training()
        return metrics

    def _train_epoch(self, acc, tqdm, jlog, wb) -> Dict[str, float]:
        tcfg = self.cfg.training
        self.train_sampler.set_epoch(self.epoch)
        self.model.train()
        losses = []
        self._first_batch = None
        max_steps = int(tcfg.max_train_steps) if tcfg.max_train_steps else None
        total = min(len(self.train_loader), max_steps) if max_steps else len(self.train_loader)
        params = [p for p in self.model.parameters() if p.requires_grad]
        with tqdm(self.train_loader, total=total, desc=f"epoch {self.epoch}", leave=False,
                  mininterval=float(tcfg.tqdm_interval_sec), disable=not acc.is_local_main_process) as bar:
            for i, batch in enumerate(bar):
                batch = to_device(batch, acc.device)
                if self._first_batch is None:
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
                if max_steps and i + 1 >= max_steps:
                    break
        mean_loss = acc.reduce(torch.tensor(float(np.mean(losses)), device=acc.device), "mean").item()
        return {"train_loss": mean_loss, "epoch": self.epoch, "global_step": self.global_step}

    def _end_of_epoch(self, acc, env_runner) -> Dict[str, float]:
        tcfg, out = self.cfg.training, {}
        last = self.epoch == int(tcfg.num_epochs) - 1
        if tcfg.val_every and (self.epoch % int(tcfg.val_every) == 0 or last):
            val = self._val_loss(acc)
            if val is not None:
                out["val_loss"] = val
        if tcfg.sample_every and (self.epoch % int(tcfg.sample_every) == 0 or last):
            out.update(self._sample_metrics(acc, self._first_batch, "train"))
            if self.val_loader is not None:
                vb = to_device(next(iter(self.val_loader)), acc.device)
                out.update(self._sample_metrics(acc, vb, "val"))
        if env_runner is not None and tcfg.rollout_every and (self.epoch % int(tcfg.rollout_every) == 0 or last):
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
        if not acc.is_main_process or mode == "disabled":
            return None
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(project=lcfg.project, name=lcfg.name, mode=mode, dir=self.output_dir,
                          id=lcfg.id, group=lcfg.group, tags=list(lcfg.tags), resume="allow",
                          config=OmegaConf.to_container(self.cfg, resolve=True))


def acc_broadcast_object(acc, obj):
    """Broadcast a picklable object from the main process (no-op on one process)."""
    if acc.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def capture_all_ranks_rng(acc) -> list:
    """RNG states of every rank, gathered to all (so rank r restores its own on resume)."""
    mine = ckpt_lib.capture_rng_state()
    if acc.num_processes == 1:
        return [mine]
    import torch.distributed as dist
    out = [None] * acc.num_processes
    dist.all_gather_object(out, mine)
    return out
