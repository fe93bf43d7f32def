"""Deterministic, resumable, rank-sharded sampling of a training set."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


def epoch_order(n_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so resume can replay it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_items, generator=generator).tolist()


class ResumableSampler(Sampler[int]):
    """Yields this rank's share of ``epoch_order`` from batch ``start_batch`` on.

    Every rank gets ``batches_per_epoch * batch_size`` items per epoch (the order wraps around when the
    set does not divide evenly, as DistributedSampler does), so all ranks run the same number of steps.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n_items == 0:
            raise ValueError("empty training set")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = max(1, n_items // (batch_size * world_size))
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _rank_items(self) -> list[int]:
        order = epoch_order(self.n_items, self.seed, self.epoch)
        needed = self.batches_per_epoch * self.batch_size * self.world_size
        order = (order * (needed // len(order) + 1))[:needed]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._rank_items()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
