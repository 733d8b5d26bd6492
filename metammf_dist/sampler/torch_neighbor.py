"""Stage 4 (GCN), torch backend: uniform neighbour sampling into ``torch_graph.Block`` objects.

The same semantics as the DGL backend's sampler (``neighbor.UniformNeighborSampler``), written on torch
alone and vectorised (no per-node Python loop), so it runs where the graph lives, CPU or CUDA:

* per layer (``blocks[l]`` sampled with ``fanouts[l]``; the last block's dst nodes are the batch's output
  nodes), each dst node keeps ``min(fanout, usable degree)`` of its in-edges, drawn uniformly without
  replacement (``-1`` = all) from its in-edges minus the batch's seed edges, excluded in both directions
  (``ui`` and ``iu`` id ``e`` are the same interaction), so a positive never reaches its own score;
* src nodes of a block: its dst nodes first, then newly reached nodes in ascending global id.

How a row is drawn: rows with at most ``fanout`` usable edges keep all of them (their edges are gathered
and the excluded ones dropped).  Rows with more draw ``fanout`` distinct ranks among their usable edges
with Floyd's algorithm (``fanout`` vectorised steps over all rows, O(rows * fanout^2) work), and each
rank r is mapped to a position in the full row past the excluded positions p_0 < p_1 < ...: with
q_j = p_j - j, position = r + #{j : q_j <= r}, one ``searchsorted`` over all rows at once.  A hub's
row is never scanned.

Every draw comes from a ``torch.Generator`` (on the graph's device) seeded per step by the caller with
(seed, epoch, rank, step), so a step's blocks are a pure function of those keys on a given device: the
same on a rerun, on a resume, and in a prefetch thread.  (CPU and CUDA generators are different
streams, so CPU and CUDA draw different — equally distributed — samples.)
"""
from __future__ import annotations

import threading
from typing import List, Sequence, Tuple

import torch

from metammf_dist.graph.torch_graph import Adjacency, BipartiteGraph, Block

__all__ = ["TorchNeighborSampler"]


_SCRATCH = threading.local()


def scratch_buffer(name: str, size: int, dtype: torch.dtype, fill, device) -> torch.Tensor:
    """A per-thread graph-sized buffer holding ``fill`` everywhere between uses.

    The samplers (this one, and ``neighbor.py``'s numpy one through ``.numpy()`` views) mark a batch's
    nodes/edges in such buffers and RESET exactly those entries before they return, so a step costs
    O(batch), not O(graph): allocating and clearing 1M-node / 10M-edge buffers every step was most of the
    sampling time at 1M items.  Per thread, because loader threads sample concurrently."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    key = (name, int(size), dtype, str(device))
    buf = buffers.get(key)
    if buf is None:
        buf = buffers[key] = torch.full((int(size),), fill, dtype=dtype, device=device)
    return buf


def forget_scratch() -> None:
    """Drop this thread's buffers: after a failure between marking and resetting, start from clean ones."""
    _SCRATCH.buffers = {}


def floyd_sample(n: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """For each row r, ``k`` distinct positions in ``[0, n[r])`` uniformly at random (needs n >= k).

    Floyd's algorithm, vectorised over rows: for j = n-k .. n-1 draw t uniform in [0, j]; keep t unless
    it was already chosen, in which case keep j.  Each k-subset is equally likely.
    """
    rows = n.numel()
    out = torch.empty((rows, k), dtype=torch.int64, device=n.device)
    for t in range(k):
        j = n - k + t
        u = torch.rand(rows, generator=gen, dtype=torch.float64, device=n.device)
        draw = torch.minimum((u * (j + 1).to(torch.float64)).to(torch.int64), j)
        if t:
            taken = (out[:, :t] == draw.unsqueeze(1)).any(dim=1)
            draw = torch.where(taken, j, draw)
        out[:, t] = draw
    return out


def _skip_excluded(ranks: torch.Tensor, slot: torch.Tensor, pos: torch.Tensor, stride: int) -> torch.Tensor:
    """Ranks among usable edges ``[rows, k]`` -> positions in the full rows.

    ``slot``/``pos``: row index (into ``ranks``) and row position of every excluded edge of those rows;
    ``stride`` > any row length.  Only rows that have excluded edges are touched.
    """
    if slot.numel() == 0:
        return ranks
    affected = torch.unique(slot)  # sorted
    sub = torch.searchsorted(affected, slot)
    key = torch.sort(sub * stride + pos).values  # grouped by row, ascending position within a row
    first = torch.searchsorted(key, torch.div(key, stride, rounding_mode="floor") * stride)
    q_key = key - (torch.arange(key.numel(), device=key.device) - first)  # row * stride + (p_j - j): sorted
    base = torch.arange(affected.numel(), device=ranks.device) * stride
    before = torch.searchsorted(q_key, base)  # excluded edges of earlier rows
    mine = ranks.index_select(0, affected)
    count = torch.searchsorted(q_key, (base.unsqueeze(1) + mine).contiguous(), right=True) - before.unsqueeze(1)
    return ranks.index_copy(0, affected, mine + count)


def sample_in_edges(adj: Adjacency, rows: torch.Tensor, fanout: int, excluded: torch.Tensor,
                    is_excluded: torch.Tensor, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """In-edges of the (unique) dst nodes ``rows``: (local dst index into ``rows``, edge id) of each kept edge.

    ``excluded``: unique excluded edge ids; ``is_excluded``: the same as a mask over all edge ids.
    """
    device = rows.device
    n = rows.numel()
    start = adj.indptr.index_select(0, rows)
    degree = adj.indptr.index_select(0, rows + 1) - start
    local = scratch_buffer("local", adj.num_dst, torch.int64, -1, device)
    local.index_copy_(0, rows, torch.arange(n, device=device))
    ex_row = local.index_select(0, adj.dst.index_select(0, excluded))
    local.index_fill_(0, rows, -1)
    hit = torch.nonzero(ex_row >= 0).squeeze(1)
    ex_row, ex_eid = ex_row.index_select(0, hit), excluded.index_select(0, hit)
    usable = degree - torch.bincount(ex_row, minlength=n)
    if fanout >= 0:
        big = usable > fanout
    else:
        big = torch.zeros(n, dtype=torch.bool, device=device)

    # Rows with at most `fanout` usable edges keep all of them.
    small = torch.nonzero(~big).squeeze(1)
    counts = degree.index_select(0, small)
    total = int(counts.sum())
    which = torch.repeat_interleave(torch.arange(small.numel(), device=device), counts, output_size=total)
    shift = start.index_select(0, small) - (torch.cumsum(counts, 0) - counts)  # slot = row start + (i - row offset)
    small_eids = adj.eids.index_select(0, torch.arange(total, device=device) + shift.index_select(0, which))
    small_rows = small.index_select(0, which)
    if ex_eid.numel():
        keep = torch.nonzero(~is_excluded.index_select(0, small_eids)).squeeze(1)
        small_eids, small_rows = small_eids.index_select(0, keep), small_rows.index_select(0, keep)

    # Rows with more: `fanout` distinct ranks among the usable edges, mapped past the excluded positions.
    big_idx = torch.nonzero(big).squeeze(1)
    if big_idx.numel() == 0:
        return small_rows, small_eids
    ranks = floyd_sample(usable.index_select(0, big_idx), fanout, gen)
    if ex_eid.numel():
        slot_of_row = torch.full((n,), -1, dtype=torch.int64, device=device)
        slot_of_row.index_copy_(0, big_idx, torch.arange(big_idx.numel(), device=device))
        ex_slot = slot_of_row.index_select(0, ex_row)
        in_big = torch.nonzero(ex_slot >= 0).squeeze(1)
        ranks = _skip_excluded(ranks, ex_slot.index_select(0, in_big),
                               adj.position.index_select(0, ex_eid.index_select(0, in_big)),
                               stride=int(adj.eids.numel()) + 1)
    big_eids = adj.eids.index_select(0, (start.index_select(0, big_idx).unsqueeze(1) + ranks).reshape(-1))
    big_rows = big_idx.repeat_interleave(fanout)
    return torch.cat([small_rows, big_rows]), torch.cat([small_eids, big_eids])


def relabel(dst_nodes: torch.Tensor, reached: torch.Tensor, num_nodes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(src nodes = dst nodes then new reached nodes ascending, local index of each ``reached`` node)."""
    device = dst_nodes.device
    seen = scratch_buffer("seen", num_nodes, torch.bool, False, device)
    seen.index_fill_(0, reached, True)
    seen.index_fill_(0, dst_nodes, False)
    new = torch.nonzero(seen).squeeze(1)
    seen.index_fill_(0, new, False)
    src_nodes = torch.cat([dst_nodes, new])
    lookup = scratch_buffer("lookup", num_nodes, torch.int64, -1, device)
    lookup.index_copy_(0, src_nodes, torch.arange(src_nodes.numel(), device=device))
    local = lookup.index_select(0, reached)
    lookup.index_fill_(0, src_nodes, -1)
    return src_nodes, local


class TorchNeighborSampler:
    """Multi-layer uniform neighbour sampler over a ``BipartiteGraph`` with seed-edge exclusion."""

    def __init__(self, graph: BipartiteGraph, fanouts: Sequence[int]):
        fanouts = [int(f) for f in fanouts]
        if not fanouts or any(f == 0 or f < -1 for f in fanouts):
            raise ValueError(f"train.fanouts must be positive integers (or -1 for all), got {list(fanouts)}")
        self.graph = graph
        self.fanouts = fanouts
        self.num_users = graph.num_nodes("user")
        self.num_items = graph.num_nodes("item")
        self.num_edges = graph.num_edges()

    def generator(self, seed: int) -> torch.Generator:
        """The per-step random stream (on the graph's device)."""
        return torch.Generator(device=self.graph.device).manual_seed(int(seed))

    def sample_blocks(self, output_users: torch.Tensor, output_items: torch.Tensor, seed_eids: torch.Tensor,
                      gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, List[Block]]:
        """Output nodes -> (input users, input items, blocks), excluding ``seed_eids`` in both directions."""
        device = self.graph.device
        excluded = torch.unique(seed_eids.to(device=device, dtype=torch.int64))
        is_excluded = scratch_buffer("is_excluded", self.num_edges, torch.bool, False, device)
        is_excluded.index_fill_(0, excluded, True)
        users = output_users.to(device=device, dtype=torch.int64)
        items = output_items.to(device=device, dtype=torch.int64)
        blocks: List[Block] = []
        try:
            for fanout in reversed(self.fanouts):
                block = self._layer(users, items, fanout, excluded, is_excluded, gen)
                blocks.insert(0, block)
                users, items = block.src_nids["user"], block.src_nids["item"]
        except BaseException:
            forget_scratch()
            raise
        finally:
            is_excluded.index_fill_(0, excluded, False)
        return users, items, blocks

    def _layer(self, dst_users: torch.Tensor, dst_items: torch.Tensor, fanout: int, excluded: torch.Tensor,
               is_excluded: torch.Tensor, gen: torch.Generator) -> Block:
        g = self.graph
        item_rows, ui_eids = sample_in_edges(g.in_items, dst_items, fanout, excluded, is_excluded, gen)
        user_rows, iu_eids = sample_in_edges(g.in_users, dst_users, fanout, excluded, is_excluded, gen)
        src_users, ui_src = relabel(dst_users, g.edge_users.index_select(0, ui_eids), self.num_users)
        src_items, iu_src = relabel(dst_items, g.edge_items.index_select(0, iu_eids), self.num_items)
        return Block(
            {"ui": (ui_src, item_rows), "iu": (iu_src, user_rows)},
            {"ui": ui_eids, "iu": iu_eids},
            src_nids={"user": src_users, "item": src_items},
            dst_nids={"user": dst_users, "item": dst_items},
        )
