"""Training mini-batches over the train user–item graph, one rank's share per step.

Per step, as named stages (module: takes -> gives):

1. item sampler (``partition``): (seed, epoch, rank, world_size) -> this rank's disjoint positive edge ids;
2. negative sampling (``negatives``): (seed, epoch, rank) -> ``num_negatives`` uniform items per positive;
3. relabelling (``edges``): pairs -> output nodes + pair indices (``MiniBatch``);
4. neighbour sampling with seed-edge exclusion (``neighbor``) or whole-graph blocks (``full``) -> blocks
   and input nodes;
5. feature fetch (``features``): input items -> ``item_feats`` (optionally one batch ahead in a thread).

Every random draw is keyed by (seed, epoch, rank[, step]), so ``epoch(e)`` gives the same batches on a
rerun, a resume (``epoch(e, start_step=k)``) and with or without the prefetch thread.
"""
from __future__ import annotations

from typing import Sequence

from metammf_dist.sampler.edges import EdgeBatches, MiniBatch
from metammf_dist.sampler.features import attach_features, prefetch
from metammf_dist.sampler.full import FullGraphBatches
from metammf_dist.sampler.graph import build_train_graph
from metammf_dist.sampler.neighbor import NeighborBatches, UniformNeighborSampler
from metammf_dist.sampler.partition import EdgePartition

KINDS = ("neighbor", "edges", "full")

__all__ = [
    "KINDS", "EdgeBatches", "EdgePartition", "FullGraphBatches", "MiniBatch", "NeighborBatches",
    "UniformNeighborSampler", "attach_features", "build_train_graph", "make_batches", "prefetch",
]


def make_batches(kind: str, graph, *, fanouts: Sequence[int], batch_size: int, num_negatives: int, seed: int,
                 rank: int, world_size: int, num_workers: int = 0) -> EdgeBatches:
    """The batch source for ``kind``: "neighbor" (sampled GCN blocks), "edges" (MF, no blocks) or "full"
    (whole-graph blocks, ``len(fanouts)`` layers).  Call ``.epoch(e)`` and ``.num_batches(e)`` on it."""
    common = dict(batch_size=batch_size, num_negatives=num_negatives, seed=seed, rank=rank,
                  world_size=world_size, num_workers=num_workers)
    if kind == "neighbor":
        return NeighborBatches(graph, fanouts=fanouts, **common)
    if kind == "edges":
        return EdgeBatches(graph, **common)
    if kind == "full":
        return FullGraphBatches(graph, num_layers=len(fanouts), **common)
    raise ValueError(f"unknown sampler kind {kind!r} (expected one of {', '.join(KINDS)})")
