"""GCN scorer: GraphSAGE-mean message passing over the user–item graph (DGL).

Each of the ``gcn_layers`` layers is a ``dgl.nn.HeteroGraphConv`` with one ``SAGEConv(D, D, "mean")``
per direction, summed per destination type:

    h_u^{l+1} = W_self^iu h_u^l + W_neigh^iu · mean_{i ∈ N(u)} h_i^l + b^iu        (user  <- items)
    h_i^{l+1} = W_self^ui h_i^l + W_neigh^ui · mean_{u ∈ N(i)} h_u^l + b^ui        (item  <- users)

Dropout (``gcn_dropout[l]``, paper: 0.5 then 0.2) is applied to the inputs of layer l, LeakyReLU
between layers, none after the last.  ``combine="last"`` returns h^L; ``combine="mean"`` returns the
mean of h^0..h^L of the output nodes (h^0 = the node's own input vector).

Graph contract: node types ``"user"`` and ``"item"``; edge types ``("user", "ui", "item")`` and
``("item", "iu", "user")``.  ``forward(blocks, feats)`` takes a list of DGL blocks (message flow graphs
from neighbour sampling or ``dgl.to_block``) and features of the first block's src nodes; it returns
the last block's dst nodes.  In DGL blocks the dst nodes are the first ``num_dst_nodes`` src nodes, so
the output nodes' h^l is the prefix of every layer's representation.  ``forward_graph(g, feats)`` runs
the same layers on a whole graph (every node is both source and destination).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from dgl.nn import HeteroGraphConv, SAGEConv

NODE_TYPES = ("user", "item")
EDGE_TYPES = (("user", "ui", "item"), ("item", "iu", "user"))


def _layer_dropouts(dropout: Sequence[float], num_layers: int) -> List[float]:
    """One rate per layer; a shorter list repeats its last rate, an empty one means no dropout."""
    rates = [float(p) for p in dropout] or [0.0]
    return [rates[min(layer, len(rates) - 1)] for layer in range(num_layers)]


class GCN(nn.Module):
    """``num_layers`` GraphSAGE-mean layers of width ``dim`` over the user–item heterograph."""

    def __init__(
        self,
        dim: int,
        num_layers: int = 2,
        dropout: Sequence[float] = (0.5, 0.2),
        combine: str = "last",
        leaky_slope: float = 0.01,
    ):
        super().__init__()
        if num_layers <= 0:
            raise ValueError(f"GCN needs at least one layer, got {num_layers}")
        if combine not in ("last", "mean"):
            raise ValueError(f"GCN combine must be 'last' or 'mean', got {combine!r}")
        self.dim, self.num_layers, self.combine = dim, num_layers, combine
        self.layers = nn.ModuleList(
            HeteroGraphConv({"ui": SAGEConv(dim, dim, "mean"), "iu": SAGEConv(dim, dim, "mean")}, aggregate="sum")
            for _ in range(num_layers)
        )
        self.dropouts = nn.ModuleList(nn.Dropout(p) for p in _layer_dropouts(dropout, num_layers))
        self.activation = nn.LeakyReLU(leaky_slope)

    def forward(self, blocks: Sequence, feats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Blocks (one per layer) + src features of ``blocks[0]`` -> features of ``blocks[-1]``'s dst nodes."""
        if len(blocks) != self.num_layers:
            raise ValueError(f"GCN has {self.num_layers} layers but got {len(blocks)} blocks")
        return self._propagate(list(blocks), feats)

    def forward_graph(self, g, feats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Full-graph propagation: ``feats`` and the result cover every user and item node of ``g``."""
        return self._propagate([g] * self.num_layers, feats)

    def _propagate(self, graphs: List, feats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        h = {ntype: feats[ntype] for ntype in NODE_TYPES}
        # Output nodes: the dst nodes of the last graph (all nodes for a whole graph).  With DGL blocks
        # they are a prefix of every earlier layer's nodes, so h^l of the outputs is h^l[:n_out].
        n_out = {ntype: graphs[-1].num_dst_nodes(ntype) for ntype in NODE_TYPES}
        history = [{ntype: h[ntype][: n_out[ntype]] for ntype in NODE_TYPES}]
        last = self.num_layers - 1
        for index, (layer, graph) in enumerate(zip(self.layers, graphs)):
            # one dropout mask per node: HeteroGraphConv slices dst inputs from these same src inputs
            h = {ntype: self.dropouts[index](x) for ntype, x in h.items()}
            h = layer(graph, h)
            if index < last:
                h = {ntype: self.activation(x) for ntype, x in h.items()}
            history.append({ntype: h[ntype][: n_out[ntype]] for ntype in NODE_TYPES})
        if self.combine == "last":
            return history[-1]
        return {ntype: torch.stack([step[ntype] for step in history]).mean(0) for ntype in NODE_TYPES}
