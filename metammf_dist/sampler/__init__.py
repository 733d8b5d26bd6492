"""Training mini-batches over the train user–item graph, one rank's share per step.

Per step, as named stages (module: takes -> gives):

1. item sampler (``partition``): (seed, epoch, rank, world_size) -> this rank's disjoint positive edge ids;
2. negative sampling (``negatives``): (seed, epoch, rank) -> ``num_negatives`` uniform items per positive;
3. relabelling (``edges``): pairs -> output nodes + pair indices (``MiniBatch``);
4. neighbour sampling with seed-edge exclusion (``neighbor``; ``torch_neighbor`` for the torch backend)
   or whole-graph blocks (``full``) -> blocks and input nodes;
5. feature fetch (``features``): input items -> ``item_feats`` (optionally one batch ahead in a thread).

Every random draw is keyed by (seed, epoch, rank[, step]), so ``epoch(e)`` gives the same batches on a
rerun, a resume (``epoch(e, start_step=k)``) and with or without the prefetch thread.

Two graph backends (``build_train_graph(..., backend=)``, config ``train.graph_backend``): ``"dgl"`` (DGL
heterograph and DGL blocks) and ``"torch"`` (``torch_graph.BipartiteGraph`` and ``Block``, no DGL).  The
batch sources follow the graph they are given; DGL is imported only by the DGL backend.
"""
from __future__ import annotations

from typing import Optional, Sequence

from metammf_dist.graph.torch_graph import BipartiteGraph, Block
from metammf_dist.graph.train_graph import BACKENDS, build_train_graph, graph_backend
from metammf_dist.sampler.edges import EdgeBatches, MiniBatch
from metammf_dist.sampler.features import attach_features, prefetch
from metammf_dist.sampler.full import FullGraphBatches
from metammf_dist.sampler.neighbor import NeighborBatches, UniformNeighborSampler
from metammf_dist.sampler.partition import EdgePartition
from metammf_dist.sampler.torch_neighbor import TorchNeighborSampler

KINDS = ("neighbor", "edges", "full")

__all__ = [
    "BACKENDS", "KINDS", "batch_kind", "BipartiteGraph", "Block", "EdgeBatches", "EdgePartition", "FullGraphBatches", "MiniBatch",
    "NeighborBatches", "TorchNeighborSampler", "UniformNeighborSampler", "attach_features", "build_train_graph",
    "graph_backend", "make_batches", "prefetch",
]


def batch_kind(scorer: str, sampler: str) -> str:
    """The batch source a model needs: ``"full"`` for ``train.sampler=full``, else ``"neighbor"`` (sampled blocks)
    for the GCN scorer and ``"edges"`` (no blocks) for MF."""
    if sampler == "full":
        return "full"
    return "neighbor" if scorer == "gcn" else "edges"


def make_batches(kind: str, graph, *, fanouts: Sequence[int], batch_size: int, num_negatives: int, seed: int,
                 rank: int, world_size: int, num_workers: int = 0, backend: Optional[str] = None) -> EdgeBatches:
    """The batch source for ``kind``: "neighbor" (sampled GCN blocks), "edges" (MF, no blocks) or "full"
    (whole-graph blocks, ``len(fanouts)`` layers).  Call ``.epoch(e)`` and ``.num_batches(e)`` on it.

    The blocks are of the graph's backend (``build_train_graph(..., backend=)``); ``backend``, if given,
    must name that backend (a guard against a graph built for the other one)."""
    if backend is not None and backend != graph_backend(graph):
        raise ValueError(f"make_batches: backend={backend!r} but the graph is a {graph_backend(graph)}-backend graph")
    common = dict(batch_size=batch_size, num_negatives=num_negatives, seed=seed, rank=rank,
                  world_size=world_size, num_workers=num_workers)
    if kind == "neighbor":
        return NeighborBatches(graph, fanouts=fanouts, **common)
    if kind == "edges":
        return EdgeBatches(graph, **common)
    if kind == "full":
        return FullGraphBatches(graph, num_layers=len(fanouts), **common)
    raise ValueError(f"unknown sampler kind {kind!r} (expected one of {', '.join(KINDS)})")
