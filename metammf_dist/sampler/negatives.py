"""Stage 2, negative sampling: uniform random items paired with each positive edge.

Takes the number of train edges and (seed, epoch); gives a LongTensor ``[num_edges, num_negatives]`` of
item ids, row ``e`` holding the negatives of train edge ``e`` for this epoch.

The whole epoch is drawn at once from a ``torch.Generator`` seeded by (seed, epoch): a fresh stream
every epoch, identical on a rerun or a resume, independent of how the epoch is consumed (a resumed run
can slice from any step) and of the world size (each rank indexes its own edges' rows), so a 2-rank
run sees exactly the negatives a single process with the same global batch sees.  Negatives are uniform
over the items that have a train interaction (``pool``; all items when every item has one, drawn exactly as
``randint(0, num_items)``), so a negative may occasionally be one of the user's train positives (as in the
reference implementation); with thousands of items this is rare and acts as label noise only.  Items with no
train interaction are cold (held out, or new): they are never negatives, or training would teach the fusion
that their features mean "not liked" before any user has seen them.
"""
from __future__ import annotations

import torch

from metammf_dist.sampler.partition import TAG_NEGATIVES, derive_seed


def negatives_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, epoch, TAG_NEGATIVES))


def negative_pool(train_items: torch.Tensor, num_items: int):
    """The item ids negatives are drawn from: the items with a train interaction, or None when that is every item."""
    pool = torch.unique(torch.as_tensor(train_items, dtype=torch.int64))
    return None if pool.numel() == num_items else pool


DRAW_CHUNK = 1 << 20  # rows drawn at a time when only some rows are kept


def draw_epoch_negatives(num_pos: int, num_items: int, num_negatives: int, *, seed: int, epoch: int,
                         pool=None, rows=None, chunk: int = DRAW_CHUNK) -> torch.Tensor:
    """Uniform item ids ``[num_pos, num_negatives]``: row ``e`` = negatives of train edge ``e`` this epoch;
    uniform over ``pool`` (sorted item ids) when given, else over all ``num_items`` items.

    ``rows`` (sorted edge ids): only those rows, ``[len(rows), num_negatives]`` — the stream is drawn in
    chunks of ``chunk`` rows and each chunk keeps the rows asked for, so a rank holds its own edges'
    negatives and never the epoch's (the values are those of the whole draw: ``tests/test_sampler.py``)."""
    if num_negatives < 1:
        raise ValueError(f"train.num_negatives must be positive, got {num_negatives}")
    size = num_items if pool is None else int(pool.numel())
    if size < 1:
        raise ValueError("negative sampling needs at least one item")
    gen = negatives_generator(seed, epoch)
    if rows is None:
        draws = torch.randint(0, size, (num_pos, num_negatives), generator=gen, dtype=torch.int64)
    else:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        bounds = torch.searchsorted(rows, torch.arange(0, num_pos + chunk, chunk))
        parts = []
        for c, lo in enumerate(range(0, num_pos, chunk)):
            drawn = torch.randint(0, size, (min(chunk, num_pos - lo), num_negatives), generator=gen,
                                  dtype=torch.int64)
            parts.append(drawn[rows[bounds[c]:bounds[c + 1]] - lo])
        draws = torch.cat(parts) if parts else torch.zeros(0, num_negatives, dtype=torch.int64)
    return draws if pool is None else pool[draws]
