"""Torch-only graph structures (``train.graph_backend: torch``): the train graph and message-flow blocks.

No DGL: these are what the latest lane (newest torch, no DGL wheel) trains on, on CPU or CUDA.  They follow
the same contract as the DGL backend (``graph/train_graph.py``):

* node types ``"user"`` / ``"item"``; edge types ``("user", "ui", "item")`` and ``("item", "iu", "user")``;
* edge id ``e`` of ``ui`` and of ``iu`` is train interaction ``e`` (row ``e`` of the input arrays) in the
  two directions.

``BipartiteGraph`` keeps the interactions by edge id plus, per edge type, a CSC view (``Adjacency``:
in-edges grouped by destination node, ascending edge id within a row, and each edge's position inside
its row) that the neighbour sampler (``torch_neighbor``) draws from without scanning a hub's row.

``Block`` is one layer of message flow, with DGL's block conventions: per edge type (src, dst) LOCAL index
tensors and the train edge ids; per node type the GLOBAL ids of the src and dst nodes, where the first
``num_dst_nodes(ntype)`` src nodes are the dst nodes (so a layer's dst inputs are a prefix of its src
inputs).  ``BipartiteGraph.full_block()`` is the whole graph as one block (src = dst = all nodes).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

NODE_TYPES = ("user", "item")
UI = ("user", "ui", "item")
IU = ("item", "iu", "user")
EDGE_TYPES = (UI, IU)
_CANONICAL = {"ui": UI, "iu": IU}

EType = Union[str, Tuple[str, str, str]]


def etype_name(etype: EType) -> str:
    """``"ui"``, ``("user", "ui", "item")`` -> ``"ui"`` (and the same for ``iu``)."""
    name = etype[1] if isinstance(etype, tuple) else etype
    if name not in _CANONICAL or (isinstance(etype, tuple) and tuple(etype) != _CANONICAL[name]):
        raise KeyError(f"unknown edge type {etype!r} (expected one of {list(EDGE_TYPES)})")
    return name


class Adjacency:
    """In-edges of one edge type grouped by destination node (CSC over train edge ids)."""

    def __init__(self, indptr: torch.Tensor, eids: torch.Tensor, position: torch.Tensor, dst: torch.Tensor):
        self.indptr = indptr  # [num_dst + 1]
        self.eids = eids  # [E] edge ids, grouped by dst, ascending within a row
        self.position = position  # [E] position of edge e inside its dst row
        self.dst = dst  # [E] dst node of edge e (a view of the graph's edge arrays)

    @classmethod
    def from_dst(cls, dst: torch.Tensor, num_dst: int) -> "Adjacency":
        num_edges = dst.numel()
        order = torch.sort(dst, stable=True).indices
        indptr = torch.zeros(num_dst + 1, dtype=torch.int64, device=dst.device)
        torch.cumsum(torch.bincount(dst, minlength=num_dst), 0, out=indptr[1:])
        position = torch.empty(num_edges, dtype=torch.int64, device=dst.device)
        position[order] = torch.arange(num_edges, device=dst.device) - indptr[dst[order]]
        return cls(indptr, order, position, dst)

    @property
    def num_dst(self) -> int:
        return self.indptr.numel() - 1

    def degrees(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def to(self, device) -> "Adjacency":
        return Adjacency(self.indptr.to(device), self.eids.to(device), self.position.to(device), self.dst.to(device))


class BipartiteGraph:
    """The train user–item graph: interaction ``e`` = (``edge_users[e]``, ``edge_items[e]``)."""

    is_block = False
    ntypes = NODE_TYPES
    canonical_etypes = EDGE_TYPES

    def __init__(self, edge_users: torch.Tensor, edge_items: torch.Tensor, num_users: int, num_items: int,
                 _in_items: Optional[Adjacency] = None, _in_users: Optional[Adjacency] = None):
        if edge_users.shape != edge_items.shape or edge_users.dim() != 1:
            raise ValueError(f"edge arrays must be 1-D and equal in length, got {tuple(edge_users.shape)} "
                             f"and {tuple(edge_items.shape)}")
        self.edge_users = edge_users.to(torch.int64)
        self.edge_items = edge_items.to(torch.int64)
        self._num_nodes = {"user": int(num_users), "item": int(num_items)}
        # "ui" edges end at items: grouped by item; "iu" edges end at users: grouped by user
        self.in_items = _in_items or Adjacency.from_dst(self.edge_items, int(num_items))
        self.in_users = _in_users or Adjacency.from_dst(self.edge_users, int(num_users))
        self._full: Optional[Block] = None

    # -- DGL-like accessors -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.edge_users.device

    def num_nodes(self, ntype: str) -> int:
        return self._num_nodes[ntype]

    num_src_nodes = num_nodes  # a whole graph: every node is a source and a destination
    num_dst_nodes = num_nodes

    def num_edges(self, etype: Optional[EType] = None) -> int:
        if etype is not None:
            etype_name(etype)
        return int(self.edge_users.numel())

    def edges(self, etype: EType = "ui") -> Tuple[torch.Tensor, torch.Tensor]:
        """(src, dst) global node ids of every edge of ``etype``, in edge-id order."""
        if etype_name(etype) == "ui":
            return self.edge_users, self.edge_items
        return self.edge_items, self.edge_users

    def in_edges(self, etype: EType) -> Adjacency:
        """The CSC view of ``etype`` (grouped by its destination type)."""
        return self.in_items if etype_name(etype) == "ui" else self.in_users

    def to(self, device) -> "BipartiteGraph":
        device = torch.device(device)
        if device == self.device:
            return self
        return BipartiteGraph(self.edge_users.to(device), self.edge_items.to(device), self._num_nodes["user"],
                              self._num_nodes["item"], self.in_items.to(device), self.in_users.to(device))

    def range_block(self, users: Tuple[int, int], items: Tuple[int, int]) -> "Block":
        """All in-edges of the dst nodes ``users = (lo, hi)`` and ``items = (lo, hi)`` as one block: the dst
        nodes lead the src nodes, then the other nodes those edges reach, ascending (a rank's share of a
        full-graph layer when nodes are owned in contiguous ranges)."""
        dst = {"user": torch.arange(*users, device=self.device), "item": torch.arange(*items, device=self.device)}
        in_items, in_users = self.in_items, self.in_users
        ui = in_items.eids[int(in_items.indptr[items[0]]):int(in_items.indptr[items[1]])]  # edges into the items
        iu = in_users.eids[int(in_users.indptr[users[0]]):int(in_users.indptr[users[1]])]  # edges into the users
        reached = {"user": self.edge_users[ui], "item": self.edge_items[iu]}
        src, local = {}, {}
        for ntype, (lo, hi) in (("user", users), ("item", items)):
            ids = reached[ntype]
            other = torch.unique(ids[(ids < lo) | (ids >= hi)])
            src[ntype] = torch.cat([dst[ntype], other])
            mapping = torch.searchsorted(other, ids) + (hi - lo)  # local index of each reached node
            inside = (ids >= lo) & (ids < hi)
            local[ntype] = torch.where(inside, ids - lo, mapping)
        edges = {"ui": (local["user"], self.edge_items[ui] - items[0]), "iu": (local["item"], self.edge_users[iu] - users[0])}
        return Block(edges, {"ui": ui, "iu": iu}, src_nids=src, dst_nids=dst)

    def nodes_block(self, users: torch.Tensor, items: torch.Tensor) -> "Block":
        """All in-edges of the dst nodes ``users`` and ``items`` (ascending ids, any set) as one block, laid out
        like ``range_block``: the dst nodes lead the src nodes, then the other nodes those edges reach, ascending;
        each dst node's edges in the order ``range_block`` gives them."""
        dst = {"user": users.to(self.device, torch.int64), "item": items.to(self.device, torch.int64)}
        ui, ui_dst = _in_edges_of(self.in_items, dst["item"])  # edges into the items
        iu, iu_dst = _in_edges_of(self.in_users, dst["user"])  # edges into the users
        reached = {"user": self.edge_users[ui], "item": self.edge_items[iu]}
        src, local = {}, {}
        for ntype in ("user", "item"):
            ids, nodes = reached[ntype], dst[ntype]
            at = torch.searchsorted(nodes, ids).clamp_(max=max(nodes.numel() - 1, 0))
            inside = nodes[at] == ids if nodes.numel() else torch.zeros_like(ids, dtype=torch.bool)
            other = torch.unique(ids[~inside])
            src[ntype] = torch.cat([nodes, other])
            local[ntype] = torch.where(inside, at, torch.searchsorted(other, ids) + nodes.numel())
        return Block({"ui": (local["user"], ui_dst), "iu": (local["item"], iu_dst)}, {"ui": ui, "iu": iu},
                     src_nids=src, dst_nids=dst)

    def full_block(self) -> "Block":
        """The whole graph as one block: src and dst nodes are all nodes, edges are all edges."""
        if self._full is None:
            every = {nt: torch.arange(self._num_nodes[nt], device=self.device) for nt in NODE_TYPES}
            eids = torch.arange(self.num_edges(), device=self.device)
            self._full = Block(
                {"ui": (self.edge_users, self.edge_items), "iu": (self.edge_items, self.edge_users)},
                {"ui": eids, "iu": eids}, src_nids=every, dst_nids=every,
            )
        return self._full

    def __repr__(self) -> str:
        return (f"BipartiteGraph(num_users={self._num_nodes['user']}, num_items={self._num_nodes['item']}, "
                f"num_edges={self.num_edges()}, device={self.device})")


def _in_edges_of(adj: Adjacency, nodes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ids of the edges into ``nodes`` (node by node, each node's in CSR order) and each edge's dst position
    in ``nodes``."""
    starts = adj.indptr[nodes]
    counts = adj.indptr[nodes + 1] - starts
    where = torch.arange(nodes.numel(), device=nodes.device).repeat_interleave(counts)
    first = torch.cumsum(counts, 0) - counts  # each node's first edge in the output
    offset = torch.arange(where.numel(), device=nodes.device) - first[where]
    return adj.eids[starts[where] + offset], where


class Block:
    """One message-flow layer: src nodes -> dst nodes, per edge type (see the module docstring)."""

    is_block = True
    ntypes = NODE_TYPES
    canonical_etypes = EDGE_TYPES

    def __init__(self, edges: Dict[str, Tuple[torch.Tensor, torch.Tensor]], eids: Dict[str, torch.Tensor],
                 src_nids: Dict[str, torch.Tensor], dst_nids: Dict[str, torch.Tensor]):
        self._edges = {etype_name(k): (s, d) for k, (s, d) in edges.items()}
        self._eids = {etype_name(k): v for k, v in eids.items()}
        self.src_nids = dict(src_nids)  # global ids of src nodes per type; dst nodes lead
        self.dst_nids = dict(dst_nids)  # global ids of dst nodes per type

    @property
    def device(self) -> torch.device:
        return self.src_nids["user"].device

    def num_src_nodes(self, ntype: str) -> int:
        return int(self.src_nids[ntype].numel())

    def num_dst_nodes(self, ntype: str) -> int:
        return int(self.dst_nids[ntype].numel())

    def num_edges(self, etype: Optional[EType] = None) -> int:
        if etype is None:
            return sum(int(s.numel()) for s, _ in self._edges.values())
        return int(self._edges[etype_name(etype)][0].numel())

    def edges(self, etype: EType) -> Tuple[torch.Tensor, torch.Tensor]:
        """(src, dst) LOCAL indices (into ``src_nids[src type]`` / ``dst_nids[dst type]``) of ``etype``."""
        return self._edges[etype_name(etype)]

    def edge_ids(self, etype: EType) -> torch.Tensor:
        """Train edge ids of ``etype``'s edges (same order as ``edges``)."""
        return self._eids[etype_name(etype)]

    def to(self, device, non_blocking: bool = False) -> "Block":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Block({k: (move(s), move(d)) for k, (s, d) in self._edges.items()},
                     {k: move(v) for k, v in self._eids.items()},
                     {k: move(v) for k, v in self.src_nids.items()}, {k: move(v) for k, v in self.dst_nids.items()})

    def __repr__(self) -> str:
        nodes = ", ".join(f"{nt}: {self.num_src_nodes(nt)}->{self.num_dst_nodes(nt)}" for nt in NODE_TYPES)
        edges = ", ".join(f"{k}: {self.num_edges(k)}" for k in self._edges)
        return f"Block({nodes}; edges {edges})"
