"""The order of training images, one process or several: each process takes every world-th image of one
permutation seeded by (seed, epoch), so the global batch of N processes is the batch of one process.

With batch B split as B / N per process, process r's k-th batch holds positions r, r + N, ... of the slice
[k B, (k + 1) B) of the permutation: together, exactly one process's k-th batch. `set_epoch` replaces a reseed.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler


def shuffled(dataset, seed: int, rank: int = 0, world: int = 1) -> DistributedSampler:
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)


class Balanced(Sampler[int]):
    """Balanced batches (class weighting "sampler"): each image drawn with probability 1 / (its class's size),
    with replacement; one draw per epoch shared by every process, which takes its every world-th."""

    def __init__(self, labels: Sequence[int], num_classes: int, seed: int, rank: int = 0, world: int = 1):
        counts = np.bincount(labels, minlength=num_classes)
        self.weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.per = -(-len(labels) // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per * self.world, replacement=True, generator=g)
        return iter(draw[self.rank::self.world].tolist())
