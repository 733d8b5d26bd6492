"""Stage 2, negative sampling: uniform random items paired with each positive edge.

Takes the rank's positive edge count for an epoch and (seed, epoch, rank); gives a LongTensor
``[num_pos, num_negatives]`` of item ids, row ``p`` holding the negatives of the rank's ``p``-th positive
of the epoch (in step order).

The whole epoch is drawn at once from a ``torch.Generator`` seeded by (seed, epoch, rank): a fresh
stream every epoch, identical on a rerun or a resume, and independent of how the epoch is consumed
(a resumed run can slice from any step without re-drawing the earlier ones).  Negatives are uniform
over all items, so a negative may occasionally be one of the user's train positives (as in the
reference implementation); with thousands of items this is rare and acts as label noise only.
"""
from __future__ import annotations

import torch

from metammf_dist.sampler.partition import TAG_NEGATIVES, derive_seed


def negatives_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, epoch, rank, TAG_NEGATIVES))


def draw_epoch_negatives(num_pos: int, num_items: int, num_negatives: int, *, seed: int, epoch: int,
                         rank: int) -> torch.Tensor:
    """Uniform item ids ``[num_pos, num_negatives]`` for one rank's epoch."""
    if num_negatives < 1:
        raise ValueError(f"train.num_negatives must be positive, got {num_negatives}")
    if num_items < 1:
        raise ValueError("negative sampling needs at least one item")
    gen = negatives_generator(seed, epoch, rank)
    return torch.randint(0, num_items, (num_pos, num_negatives), generator=gen, dtype=torch.int64)
