"""EpochShuffleSampler is DistributedSampler's order plus a start offset (the reason it is kept)."""
from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from controller.common.samplers import EpochShuffleSampler


@pytest.mark.parametrize("length,replicas", [(1, 1), (5, 2), (17, 3), (70, 4), (100, 8)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_start_zero_equals_distributed_sampler(length, replicas, drop_last):
    if drop_last and length < replicas:
        pytest.skip("DistributedSampler gives every rank 0 samples")
    for rank in range(replicas):
        for epoch in (0, 3):
            ref = DistributedSampler(range(length), num_replicas=replicas, rank=rank, shuffle=True, seed=7,
                                     drop_last=drop_last)
            ref.set_epoch(epoch)
            ours = EpochShuffleSampler(length, replicas, rank, seed=7, drop_last=drop_last)
            ours.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)


def test_start_offset_covers_the_rest_once_even_with_other_rank_counts():
    full = EpochShuffleSampler(23, 1, 0, seed=3)
    full.set_epoch(2)
    order = list(full)
    for replicas in (1, 2, 3, 5):
        for start in (0, 4, 7, 11):
            got = []
            for rank in range(replicas):
                s = EpochShuffleSampler(23, replicas, rank, seed=3)
                s.set_epoch(2, start=start)
                got += list(s)
            padded = EpochShuffleSampler(23, replicas, 0, seed=3)
            padded.set_epoch(2)
            assert sorted(got) == sorted(padded.epoch_order()[start:])
            if replicas == 1:
                assert got == order[start:]
