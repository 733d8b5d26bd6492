"""Stage 1, the item sampler: which train edges each rank trains on at each step of an epoch.

Takes the number of train edges, the global batch size and (seed, epoch, rank, world_size); gives the
rank's list of edge-id batches for the epoch.

* One permutation of all edge ids per epoch, seeded by (seed, epoch) only, so every rank computes the
  same one without communicating.
* Global step ``s`` takes the next ``G = world_size * (batch_size // world_size)`` edges of the
  permutation and splits them into ``world_size`` contiguous, equal chunks; chunk ``r`` is rank ``r``'s
  batch.  So the ranks' batches are disjoint, every rank runs the same number of steps (DeepSpeed needs
  equal step counts), and the union over ranks of one global step is what a single process with the
  same global batch would see.
* The remainder ``E mod G`` is never dropped: if it holds at least one edge per rank it becomes one
  extra, smaller last step (split as evenly as possible); otherwise it is folded into the last full
  step (at most one extra edge for some ranks).  Each epoch therefore covers every edge exactly once.
  Last-step batches may thus differ in size by one edge across ranks.

Everything is a pure function of its arguments; ``derive_seed`` mixes integer keys into one seed and
is shared by the other stages so that each has its own independent random stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

# Stream tags: one independent random stream per stage.
TAG_PERMUTATION = 0
TAG_NEGATIVES = 1
TAG_NEIGHBORS = 2


def derive_seed(*keys: int) -> int:
    """Mix non-negative integer keys (e.g. seed, epoch, rank, tag) into one 63-bit seed."""
    for k in keys:
        if int(k) < 0:
            raise ValueError(f"seed keys must be non-negative, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & (2**63 - 1)


@dataclass(frozen=True)
class EdgePartition:
    num_edges: int
    batch_size: int  # global batch of positive edges, split across ranks
    rank: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if self.batch_size < self.world_size:
            raise ValueError(
                f"train.batch_size={self.batch_size} is smaller than world_size={self.world_size}: "
                "each rank needs at least one edge per step"
            )
        if self.num_edges < self.world_size:
            raise ValueError(f"{self.num_edges} train edges cannot be split across {self.world_size} ranks")

    @property
    def per_rank_batch(self) -> int:
        return self.batch_size // self.world_size

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * self.world_size

    def num_batches(self) -> int:
        """Steps per epoch, the same on every rank and in every epoch."""
        return epoch_steps(self.num_edges, self.batch_size, self.world_size)

    def _step_bounds(self, step: int) -> tuple:
        """[start, end) of global step ``step`` in the epoch permutation."""
        start = step * self.global_batch
        end = self.num_edges if step == self.num_batches() - 1 else start + self.global_batch
        return start, end

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, TAG_PERMUTATION))
        return torch.randperm(self.num_edges, generator=gen)

    def batches(self, epoch: int) -> List[torch.Tensor]:
        """This rank's edge-id batches (LongTensors) for ``epoch``, in step order."""
        perm = self.epoch_permutation(epoch)
        out = []
        for step in range(self.num_batches()):
            start, end = self._step_bounds(step)
            chunks = torch.tensor_split(perm[start:end], self.world_size)
            out.append(chunks[self.rank].clone())
        return out


def epoch_steps(num_edges: int, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch of ``num_edges`` train edges at global batch ``batch_size`` over ``world_size`` ranks
    (what ``EdgePartition.num_batches`` gives, without building the partition)."""
    global_batch = (int(batch_size) // int(world_size)) * int(world_size)
    full, rest = divmod(int(num_edges), global_batch)
    return full + 1 if rest >= world_size else max(full, 1)
