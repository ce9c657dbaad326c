"""Deterministic, resumable, DDP-aware batch order.

The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at epoch ``e`` sees the
same batches as an uninterrupted run. Each rank takes an interleaved shard of the permutation;
indices are padded by wrapping so every rank gets the same number of samples (DDP needs it).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffle with ``torch.Generator().manual_seed(seed + epoch)`` and shard across ranks."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        if length <= 0:
            raise ValueError("EpochShuffleSampler: the dataset is empty (0 samples)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = length // num_replicas
        else:
            self.num_samples = math.ceil(length / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.num_samples * self.num_replicas
        if total > len(order):
            order += order[: total - len(order)]
        order = order[:total]
        return iter(order[self.rank:total:self.num_replicas])
