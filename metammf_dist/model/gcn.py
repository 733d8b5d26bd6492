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

Two graph backends, one set of parameters.  DGL blocks/graphs run through DGL's ``HeteroGraphConv`` +
``SAGEConv``; torch-backend ``Block`` / ``BipartiteGraph`` objects (``graph/torch_graph.py``) run
through ``sage_mean`` below, a pure-torch GraphSAGE-mean that reads the SAME ``fc_self`` / ``fc_neigh``
weights (neighbour sum by ``index_add_``, divided by the in-degree; a node without in-edges gets a zero
neighbour mean, as in DGL).  DGL is imported only if installed: without it (the latest lane) each layer
is a ``TorchHeteroSAGE``, a module with SAGEConv's parameter names, shapes and initialisation (and the
same order of random draws), so state dicts and checkpoints are interchangeable across backends and lanes.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from metammf_dist.graph.torch_graph import BipartiteGraph, Block

NODE_TYPES = ("user", "item")
EDGE_TYPES = (("user", "ui", "item"), ("item", "iu", "user"))
EDGE_CHUNK = 1 << 22  # edges gathered at once by sage_mean (bounds the [edges, D] message buffer)


def dgl_available() -> bool:
    """Whether DGL (and its C++ library for this torch) loads."""
    try:
        import dgl.nn  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


class SAGEMean(nn.Module):
    """Parameters of ``dgl.nn.SAGEConv(dim, dim, "mean")`` without DGL: same names, shapes, init, RNG order."""

    def __init__(self, dim: int):
        super().__init__()
        self.feat_drop = nn.Dropout(0.0)
        self.fc_neigh = nn.Linear(dim, dim, bias=False)
        self.fc_self = nn.Linear(dim, dim, bias=True)
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_uniform_(self.fc_self.weight, gain=gain)
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=gain)


class TorchHeteroSAGE(nn.Module):
    """Stands in for ``HeteroGraphConv({"ui": SAGEConv, "iu": SAGEConv})`` when DGL is not installed."""

    def __init__(self, dim: int):
        super().__init__()
        self.mods = nn.ModuleDict({"ui": SAGEMean(dim), "iu": SAGEMean(dim)})


def _index_sum(total: torch.Tensor, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``total`` plus, for each edge, row ``x[src]`` added at row ``dst`` (``EDGE_CHUNK`` edges at a time)."""
    for lo in range(0, src.numel(), EDGE_CHUNK):
        total = total.index_add(0, dst[lo:lo + EDGE_CHUNK], x.index_select(0, src[lo:lo + EDGE_CHUNK]))
    return total


def neighbour_mean(x_src: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n_dst: int) -> torch.Tensor:
    """``[n_dst, D]``: the mean of ``x_src`` rows over each dst node's in-edges (zero without in-edges)."""
    total = _index_sum(x_src.new_zeros(n_dst, x_src.shape[1]), x_src, src, dst)
    degree = torch.bincount(dst, minlength=n_dst).clamp_(min=1).to(total.dtype)
    return total / degree.unsqueeze(1)


def sage_mean(conv: nn.Module, x_src: torch.Tensor, x_dst: torch.Tensor, src: torch.Tensor,
              dst: torch.Tensor) -> torch.Tensor:
    """GraphSAGE-mean of one edge type: ``fc_self(x_dst) + fc_neigh(mean of x_src over in-edges)``.

    ``src``/``dst``: local indices of each edge's endpoints.  ``conv`` is a DGL ``SAGEConv(mean)`` or a
    ``SAGEMean``.  Zero in-degree -> zero neighbour mean.  As DGL does, the neighbour projection runs
    before aggregation when it shrinks the width.
    """
    lin_before = conv.fc_neigh.in_features > conv.fc_neigh.out_features
    neigh = neighbour_mean(conv.fc_neigh(x_src) if lin_before else x_src, src, dst, x_dst.shape[0])
    if not lin_before:
        neigh = conv.fc_neigh(neigh)
    return conv.fc_self(x_dst) + neigh


def _is_torch_graph(graph) -> bool:
    return isinstance(graph, (Block, BipartiteGraph))


def _torch_layer(layer: nn.Module, graph, h: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One heterogeneous layer over a torch ``Block`` (or a whole ``BipartiteGraph``), summed per dst type."""
    block = graph.full_block() if isinstance(graph, BipartiteGraph) else graph
    out: Dict[str, torch.Tensor] = {}
    for stype, etype, dtype in EDGE_TYPES:
        src, dst = block.edges(etype)
        x_dst = h[dtype][: block.num_dst_nodes(dtype)]  # dst nodes lead the src nodes
        y = sage_mean(layer.mods[etype], h[stype], x_dst, src, dst)
        out[dtype] = out[dtype] + y if dtype in out else y
    return out


def _block_edges(block, etype: str):
    """(src, dst) local indices of ``etype`` in a torch ``Block`` or a DGL block."""
    return block.edges(etype) if _is_torch_graph(block) else block.edges(etype=etype)


def _split_edges(block, etype: str, n_seed_src: int, n_dst: int):
    """``etype``'s edges split by source: (seed src, dst), (neighbour src offset past the seeds, dst), and
    the dst in-degree over all of them (clamped to 1, as ``sage_mean``)."""
    src, dst = _block_edges(block, etype)
    from_seed = src < n_seed_src
    degree = torch.bincount(dst, minlength=n_dst).clamp_(min=1)
    return (src[from_seed], dst[from_seed]), (src[~from_seed] - n_seed_src, dst[~from_seed]), degree


def _sage_mean_split(conv: nn.Module, x_seed: torch.Tensor, x_rest: torch.Tensor, x_dst: torch.Tensor,
                     split) -> torch.Tensor:
    """``sage_mean`` over a block whose src rows are ``x_seed`` (with gradient) then ``x_rest`` (constant):
    the neighbours' message sum is taken without autograd.  Square layers only (the GCN's are), so the
    neighbour projection runs after aggregation."""
    (seed_src, seed_dst), (rest_src, rest_dst), degree = split
    with torch.no_grad():
        total = _index_sum(x_rest.new_zeros(x_dst.shape[0], x_rest.shape[1]), x_rest, rest_src, rest_dst)
    total = _index_sum(total, x_seed, seed_src, seed_dst)
    return conv.fc_self(x_dst) + conv.fc_neigh(total / degree.to(total.dtype).unsqueeze(1))


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
        dgl_modules: Optional[bool] = None,
        kind: str = "sage",
    ):
        """``dgl_modules``: build each layer from DGL's modules (True), from ``TorchHeteroSAGE`` (False), or
        from DGL's when it is installed (None).  Parameters are the same either way; only DGL-built layers
        can run on DGL graphs.  ``kind="light"``: LightGCN propagation instead (see ``light_layer``)."""
        super().__init__()
        if num_layers <= 0:
            raise ValueError(f"GCN needs at least one layer, got {num_layers}")
        if combine not in ("last", "mean"):
            raise ValueError(f"GCN combine must be 'last' or 'mean', got {combine!r}")
        if kind not in ("sage", "light"):
            raise ValueError(f"GCN kind must be 'sage' or 'light', got {kind!r}")
        self.dim, self.num_layers, self.combine, self.kind = dim, num_layers, combine, kind
        self.uses_dgl = dgl_available() if dgl_modules is None else bool(dgl_modules)
        if kind == "light":
            make = nn.Identity  # no parameters: every layer is the same normalised propagation
        elif self.uses_dgl:
            from dgl.nn import HeteroGraphConv, SAGEConv

            make = lambda: HeteroGraphConv(  # noqa: E731
                {"ui": SAGEConv(dim, dim, "mean"), "iu": SAGEConv(dim, dim, "mean")}, aggregate="sum")
        else:
            make = lambda: TorchHeteroSAGE(dim)  # noqa: E731
        self.layers = nn.ModuleList(make() for _ in range(num_layers))
        self.dropouts = nn.ModuleList(nn.Dropout(p) for p in _layer_dropouts(dropout, num_layers))
        self.activation = nn.LeakyReLU(leaky_slope)

    def forward(self, blocks: Sequence, feats: Dict[str, torch.Tensor],
                inv_sqrt_degree: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Blocks (one per layer; DGL or torch ``Block``) + src features of ``blocks[0]`` -> features of
        ``blocks[-1]``'s dst nodes.  ``inv_sqrt_degree`` (``kind="light"`` only): ``1/sqrt(train degree)`` of
        ``blocks[0]``'s src nodes per type (every later block's nodes are a prefix of them)."""
        if len(blocks) != self.num_layers:
            raise ValueError(f"GCN has {self.num_layers} layers but got {len(blocks)} blocks")
        return self._propagate(list(blocks), feats, inv_sqrt_degree)

    def forward_graph(self, g, feats: Dict[str, torch.Tensor],
                      inv_sqrt_degree: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Full-graph propagation: ``feats`` and the result cover every user and item node of ``g`` (a DGL
        graph or a ``BipartiteGraph``)."""
        return self._propagate([g] * self.num_layers, feats, inv_sqrt_degree)

    def forward_history(self, block, seeds: Dict[str, torch.Tensor], rest: Dict[str, torch.Tensor],
                        history: Sequence[Dict[str, torch.Tensor]]):
        """Historical-embedding pass (GNNAutoScale; ``train.gcn_history``): ONE sampled hop for all layers.

        ``block``: the seeds' sampled in-edges (its dst nodes are the seeds, a prefix of its src nodes);
        ``seeds``: layer-0 vectors of the dst nodes (with gradient); ``rest``: layer-0 vectors of the other
        src nodes (the neighbours; read without gradient); ``history[l - 1]``: the neighbours' layer-l vectors,
        read from the history tables, for l = 1 .. L-1.  Layer l aggregates the same sampled neighbours.

        The neighbours carry no gradient, so each layer sums their messages once without autograd and only
        the seed-to-seed messages stay on the tape: backward work follows the seeds, not the (catalog-
        dependent) number of neighbours.  Same values as GraphSAGE-mean over the whole block, dropout
        included (one mask per node).  Returns (the dst nodes' output, combined like ``forward``; their fresh
        layer-0..L-1 vectors, detached, for the caller to push).
        """
        if len(history) != self.num_layers - 1:
            raise ValueError(f"forward_history: {len(history)} history layers for a {self.num_layers}-layer GCN "
                             f"(needs {self.num_layers - 1})")
        n_out = {ntype: block.num_dst_nodes(ntype) for ntype in NODE_TYPES}
        for ntype in NODE_TYPES:
            n_rest = block.num_src_nodes(ntype) - n_out[ntype]
            if seeds[ntype].shape[0] != n_out[ntype] or rest[ntype].shape[0] != n_rest:
                raise ValueError(f"forward_history: {seeds[ntype].shape[0]} seed + {rest[ntype].shape[0]} neighbour "
                                 f"{ntype} rows for a block with {n_out[ntype]} dst of "
                                 f"{block.num_src_nodes(ntype)} src nodes")
        edges = {etype: _split_edges(block, etype, n_out[stype], n_out[dtype]) for stype, etype, dtype in EDGE_TYPES}
        h, outputs = dict(seeds), [dict(seeds)]
        rest = {ntype: x.detach() for ntype, x in rest.items()}
        last = self.num_layers - 1
        for index, layer in enumerate(self.layers):
            drop = self.dropouts[index]
            h = {ntype: drop(x) for ntype, x in h.items()}
            with torch.no_grad():
                rest = {ntype: drop(x) for ntype, x in rest.items()}
            y: Dict[str, torch.Tensor] = {}
            for stype, etype, dtype in EDGE_TYPES:
                out = _sage_mean_split(layer.mods[etype], h[stype], rest[stype], h[dtype], edges[etype])
                y[dtype] = y[dtype] + out if dtype in y else out
            if index < last:
                y = {ntype: self.activation(x) for ntype, x in y.items()}
            outputs.append(y)
            if index < last:
                rows = history[index]
                for ntype in NODE_TYPES:
                    if rows[ntype].shape[0] != rest[ntype].shape[0]:
                        raise ValueError(f"forward_history: layer {index + 1} history has {rows[ntype].shape[0]} "
                                         f"{ntype} rows for {rest[ntype].shape[0]} neighbour nodes")
                h = y
                rest = {ntype: rows[ntype].to(y[ntype].dtype) for ntype in NODE_TYPES}
        fresh = [{ntype: step[ntype].detach() for ntype in NODE_TYPES} for step in outputs[:-1]]
        return self._combine(outputs), fresh

    @torch.no_grad()
    def hidden_graph(self, g, feats: Dict[str, torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Layer-1 .. L-1 vectors of every node of the whole graph ``g`` (no dropout, no gradient): what
        ``train.gcn_history`` refreshes its tables with."""
        h = {ntype: feats[ntype] for ntype in NODE_TYPES}
        hidden = []
        for layer in self.layers[:-1]:
            h = self._layer(layer, g.full_block() if isinstance(g, BipartiteGraph) else g, h)
            h = {ntype: self.activation(x) for ntype, x in h.items()}
            hidden.append(h)
        return hidden

    def _layer(self, layer: nn.Module, graph, h: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if _is_torch_graph(graph):
            return _torch_layer(layer, graph, h)
        if self.uses_dgl:
            return layer(graph, h)
        raise TypeError(f"GCN built without DGL modules got a {type(graph).__name__}: use the torch graph "
                        "backend (train.graph_backend=torch) or build the GCN with DGL installed")

    @staticmethod
    def light_layer(graph, h: Dict[str, torch.Tensor], scale: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """LightGCN propagation, ``h_i' = Σ_{j ∈ N(i)} h_j / sqrt(d_i d_j)`` with ``d`` the train-graph degrees
        (``scale = 1/sqrt(d)``), written as ``sqrt(d_i) · mean_{j ∈ N(i)} (h_j / sqrt(d_j))``: exact on a whole
        graph, and on sampled blocks the mean over the sampled neighbours estimates it.  No weights."""
        block = graph.full_block() if isinstance(graph, BipartiteGraph) else graph
        out: Dict[str, torch.Tensor] = {}
        for stype, etype, dtype in EDGE_TYPES:
            src, dst = _block_edges(block, etype)
            n_dst = block.num_dst_nodes(dtype)
            x = h[stype] * scale[stype][: h[stype].shape[0]].unsqueeze(1).to(h[stype].dtype)
            out[dtype] = neighbour_mean(x, src, dst, n_dst) / scale[dtype][:n_dst].unsqueeze(1).to(x.dtype)
        return out

    def layer_forward(self, index: int, graph, h: Dict[str, torch.Tensor],
                      inv_sqrt_degree: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Layer ``index`` alone over one graph or block: ``h`` covers its src nodes, the result its dst nodes
        (dropout, the layer, and the activation between layers, as ``forward`` applies them).  Running the
        layers one by one over blocks whose src rows the caller assembles (e.g. from other ranks) and
        ``combine_layers`` of [layer-0, layer-1, ...] dst rows gives ``forward_graph``'s rows of those dst nodes."""
        h = {ntype: self.dropouts[index](x) for ntype, x in h.items()}
        if self.kind == "light":
            if inv_sqrt_degree is None:
                raise ValueError("GCN kind 'light' needs the nodes' inverse square-root degrees")
            return self.light_layer(graph, h, inv_sqrt_degree)
        h = self._layer(self.layers[index], graph, h)
        if index < self.num_layers - 1:
            h = {ntype: self.activation(x) for ntype, x in h.items()}
        return h

    def combine_layers(self, outputs: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """The output of layer-0 .. L rows (``gcn_combine``: the last, or their mean)."""
        return self._combine(outputs)

    def _combine(self, outputs: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        if self.combine == "last":
            return outputs[-1]
        return {ntype: torch.stack([step[ntype] for step in outputs]).mean(0) for ntype in NODE_TYPES}

    def _propagate(self, graphs: List, feats: Dict[str, torch.Tensor],
                   inv_sqrt_degree: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        if self.kind == "light" and inv_sqrt_degree is None:
            raise ValueError("GCN kind 'light' needs the nodes' inverse square-root degrees")
        h = {ntype: feats[ntype] for ntype in NODE_TYPES}
        # Output nodes: the dst nodes of the last graph (all nodes for a whole graph).  With DGL blocks
        # they are a prefix of every earlier layer's nodes, so h^l of the outputs is h^l[:n_out].
        n_out = {ntype: graphs[-1].num_dst_nodes(ntype) for ntype in NODE_TYPES}
        history = [{ntype: h[ntype][: n_out[ntype]] for ntype in NODE_TYPES}]
        for index, graph in enumerate(graphs):
            # one dropout mask per node: HeteroGraphConv slices dst inputs from these same src inputs
            h = self.layer_forward(index, graph, h, inv_sqrt_degree)
            history.append({ntype: h[ntype][: n_out[ntype]] for ntype in NODE_TYPES})
        return self._combine(history)
