"""Stage 2, negative sampling: uniform random items paired with each positive edge.

Takes the number of train edges and (seed, epoch); gives a LongTensor ``[num_edges, num_negatives]`` of
item ids, row ``e`` holding the negatives of train edge ``e`` for this epoch.

The whole epoch is drawn at once from a ``torch.Generator`` seeded by (seed, epoch): a fresh stream
every epoch, identical on a rerun or a resume, independent of how the epoch is consumed (a resumed run
can slice from any step) and of the world size (each rank indexes its own edges' rows), so a 2-rank
run sees exactly the negatives a single process with the same global batch sees.  Negatives are uniform
over all items, so a negative may occasionally be one of the user's train positives (as in the
reference implementation); with thousands of items this is rare and acts as label noise only.
"""
from __future__ import annotations

import torch

from metammf_dist.sampler.partition import TAG_NEGATIVES, derive_seed


def negatives_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, epoch, TAG_NEGATIVES))


def draw_epoch_negatives(num_pos: int, num_items: int, num_negatives: int, *, seed: int, epoch: int) -> torch.Tensor:
    """Uniform item ids ``[num_pos, num_negatives]``: row ``e`` = negatives of train edge ``e`` this epoch."""
    if num_negatives < 1:
        raise ValueError(f"train.num_negatives must be positive, got {num_negatives}")
    if num_items < 1:
        raise ValueError("negative sampling needs at least one item")
    gen = negatives_generator(seed, epoch)
    return torch.randint(0, num_items, (num_pos, num_negatives), generator=gen, dtype=torch.int64)
