"""Datasets, size-bucketed batching and collation into :class:`~dao.crystal.CrystalBatch`."""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dao.crystal import Crystal, CrystalBatch


class CrystalDataset(Dataset):
    def __init__(self, crystals: Sequence[Crystal]) -> None:
        self.crystals = list(crystals)

    def __len__(self) -> int:
        return len(self.crystals)

    def __getitem__(self, i: int) -> Crystal:
        return self.crystals[i]

    @property
    def sizes(self) -> np.ndarray:
        return np.array([c.num_atoms for c in self.crystals])


def collate(crystals: list[Crystal], label_key: str = "e_above_hull") -> CrystalBatch:
    """Batch crystals; ``meta[label_key]`` becomes the per-crystal label (NaN where absent)."""
    return CrystalBatch.from_crystals(crystals, energy_key=label_key)


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of crystals of similar size (less padding in the per-crystal attention).

    Each epoch: permute, cut into pools of ``pool_batches`` batches, sort each pool by atom count,
    cut into batches, shuffle the batch order. Deterministic for (seed, epoch). Under DDP every rank
    takes every world_size-th batch (the batch count is trimmed to a multiple of world_size).
    ``skip_next = k`` makes the next epoch start at its k-th batch (resuming a run killed mid-epoch).
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 pool_batches: int = 32, drop_last: bool = False) -> None:
        self.sizes = np.asarray(sizes)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.pool_batches, self.drop_last = pool_batches, drop_last
        self.epoch = 0  # the epoch the next iteration uses
        self.current = 0  # the epoch of the iteration in progress
        self.skip_next = 0  # batches of the next epoch already trained on (exact mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _batches(self) -> list[list[int]]:
        n = len(self.sizes)
        if not self.shuffle:
            order = np.argsort(self.sizes, kind="stable")
            return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, n, pool):
            chunk = perm[start:start + pool]
            chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        self.current = self.epoch
        batches = self._batches()
        rank, world = self._rank_world()
        if world > 1:
            batches = batches[: len(batches) // world * world][rank::world]
        self.epoch += 1 if self.shuffle else 0
        skip, self.skip_next = self.skip_next, 0
        return iter(batches[skip:])

    def __len__(self) -> int:
        rank, world = self._rank_world()
        n = math.ceil(len(self.sizes) / self.batch_size)
        return n // world if world > 1 else n
