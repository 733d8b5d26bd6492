"""Stage 4 (``--sampler full``): whole-graph blocks, every user and item recomputed every step.

Takes the same edge batches as ``EdgeBatches`` (partition + negatives); gives ``num_layers`` blocks that
each cover the entire train graph (built once — ``dgl.to_block`` over all nodes for a DGL graph,
``BipartiteGraph.full_block()`` for the torch backend — and shared by all steps), input and output nodes = all users and all items, and pair indices that are simply global ids.
This is what the reference implementation does: full-graph propagation, then scoring of the batch pairs.

Seed edges are NOT excluded here (as in the reference): a positive (u, i) contributes to u's and i's
representations through the graph while being scored.  Use the neighbour sampler for leakage-free
training.  The blocks are the same objects at every step; a model must not rely on data it left in
them (DGL ``local_scope`` is the usual way).
"""
from __future__ import annotations

from typing import List

import torch

from metammf_dist.graph.torch_graph import BipartiteGraph
from metammf_dist.sampler.edges import EdgeBatches, MiniBatch


def full_graph_blocks(graph, num_layers: int) -> List:
    """``num_layers`` blocks whose src and dst nodes are all nodes and whose edges are all edges."""
    if num_layers < 1:
        raise ValueError(f"full-graph blocks need at least one layer, got {num_layers}")
    if isinstance(graph, BipartiteGraph):
        return [graph.full_block()] * num_layers
    import dgl

    every = {ntype: torch.arange(graph.num_nodes(ntype), dtype=torch.int64) for ntype in graph.ntypes}
    return [dgl.to_block(graph, dst_nodes=every) for _ in range(num_layers)]


class FullGraphBatches(EdgeBatches):
    kind = "full"

    def __init__(self, graph, *, num_layers: int, batch_size: int, num_negatives: int,
                 seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0):
        super().__init__(graph, batch_size=batch_size, num_negatives=num_negatives, seed=seed, rank=rank,
                         world_size=world_size, num_workers=num_workers)
        self.blocks = full_graph_blocks(graph, num_layers)
        self.all_users = torch.arange(self.num_users, dtype=torch.int64)
        self.all_items = torch.arange(self.num_items, dtype=torch.int64)

    def _make_batch(self, epoch: int, step: int, eids: torch.Tensor, negatives: torch.Tensor) -> MiniBatch:
        pos_users = self.edge_users[eids]
        return MiniBatch(
            step=step,
            seed_eids=eids,
            input_users=self.all_users,
            input_items=self.all_items,
            blocks=list(self.blocks),
            output_users=self.all_users,
            output_items=self.all_items,
            pos_u=pos_users,
            pos_i=self.edge_items[eids],
            neg_u=pos_users.repeat_interleave(self.num_negatives),
            neg_i=negatives.reshape(-1),
            num_pos=int(eids.numel()),
        )
