"""Stage 4 (GCN): uniform neighbour sampling into DGL blocks, excluding the batch's own edges.

(This is the DGL backend.  ``NeighborBatches`` over a torch-backend ``BipartiteGraph`` uses
``torch_neighbor.TorchNeighborSampler`` instead: same semantics, torch ``Block`` objects, no DGL.)

Takes the output nodes of a batch (users and items of its positive and negative pairs), its seed edge
ids and a per-step random generator; gives ``len(fanouts)`` DGL blocks (``blocks[l]`` sampled with
``fanouts[l]``, as in ``dgl.dataloading.NeighborSampler``) and the input nodes of the first block.

Semantics are those of ``dgl.dataloading.as_edge_prediction_sampler(NeighborSampler(fanouts),
exclude="reverse_types", reverse_etypes={"ui": "iu", "iu": "ui"})``: in every layer each dst node keeps
``min(fanout, usable degree)`` in-edges drawn uniformly without replacement (``-1`` = all), from its
in-edges minus the seed edges of the batch in both directions, so a positive (u, i) never reaches its own
score through the graph.  One difference, on purpose: DGL 2.1 draws ``fanout`` among ALL in-edges and
drops the excluded ones afterwards, so a node touching a seed edge keeps fewer than ``fanout``; here the
draw is among the usable edges only — the law of DGL's sampler on the graph with the seed edges removed
(``tests/test_torch_backend.py`` pins both).  Blocks follow DGL's conventions: the first ``num_dst_nodes`` src nodes are the dst
nodes, ``srcdata/dstdata[dgl.NID]`` hold global node ids, ``edata[dgl.EID]`` train edge ids.

Why not DGL's own sampler: on CPU its results are not reproducible, which resume equivalence needs.
Measured with DGL 2.1 on 2 OpenMP threads, the same ``dgl.seed`` gave different blocks from run to
run (``to_block`` orders src nodes nondeterministically, which changes the next hop's draws), and
DGL's random engine is per OS thread (seeded with seed + thread index), so a background prefetch
thread draws different samples from the main thread.  Here every draw comes from a numpy generator
seeded by (seed, epoch, rank, step) and node order is canonical (dst nodes, then new nodes sorted), so
a step's blocks are a pure function of those keys — on any thread, thread count or resume point.

Cost per layer is O(#dst nodes * fanout * (fanout + excluded edges per node)) plus the blocks'
construction; a hub's full adjacency is never scanned.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch

from metammf_dist.graph.torch_graph import BipartiteGraph
from metammf_dist.graph.train_graph import IU, UI, train_edges
from metammf_dist.sampler.edges import EdgeBatches, MiniBatch
from metammf_dist.sampler.partition import TAG_NEIGHBORS, derive_seed
from metammf_dist.sampler.torch_neighbor import TorchNeighborSampler, forget_scratch, scratch_buffer

__all__ = ["MiniBatch", "NeighborBatches", "UniformNeighborSampler"]

_NO_POSITION = np.iinfo(np.int64).max


def _floyd_sample(n: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """For each row r, ``k`` distinct positions in ``[0, n[r])`` uniformly at random (needs n >= k).

    Floyd's algorithm, vectorised over rows: for j = n-k .. n-1 draw t in [0, j]; keep t unless it
    was already chosen, in which case keep j.
    """
    out = np.empty((n.size, k), dtype=np.int64)
    for t in range(k):
        j = n - k + t
        draw = rng.integers(0, j + 1)
        if t:
            taken = (out[:, :t] == draw[:, None]).any(axis=1)
            draw = np.where(taken, j, draw)
        out[:, t] = draw
    return out


class _InEdges:
    """In-edges of one edge type grouped by dst node (a CSC view over train edge ids)."""

    def __init__(self, dst: np.ndarray, num_dst: int):
        num_edges = dst.size
        self.eids = np.argsort(dst, kind="stable")  # grouped by dst, ascending edge id within a row
        self.indptr = np.zeros(num_dst + 1, dtype=np.int64)
        np.cumsum(np.bincount(dst, minlength=num_dst), out=self.indptr[1:])
        self.dst = dst
        flat = np.empty(num_edges, dtype=np.int64)
        flat[self.eids] = np.arange(num_edges, dtype=np.int64)
        self.position = flat - self.indptr[dst]  # position of edge e inside its dst row
        self.num_dst = num_dst

    def sample(self, rows: np.ndarray, fanout: int, excluded: np.ndarray, is_excluded: np.ndarray,
               rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Sample in-edges of the (unique) dst nodes ``rows``.

        Returns (local dst index into ``rows``, edge id) of every kept edge, grouped by dst in
        ``rows`` order.  Excluded edges (``excluded``; ``is_excluded`` is its mask over edge ids)
        are removed before drawing.
        """
        start = self.indptr[rows]
        degree = self.indptr[rows + 1] - start
        local = scratch_buffer("local", self.num_dst, torch.int64, -1, "cpu").numpy()
        local[rows] = np.arange(rows.size, dtype=np.int64)
        ex_row = local[self.dst[excluded]]
        local[rows] = -1
        hit = ex_row >= 0
        ex_row, ex_pos = ex_row[hit], self.position[excluded[hit]]
        usable = degree - np.bincount(ex_row, minlength=rows.size)

        big = usable > fanout if fanout >= 0 else np.zeros(rows.size, dtype=bool)

        # Rows with at most `fanout` usable edges keep all of them.
        small = np.flatnonzero(~big)
        counts = degree[small]
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        small_eids = self.eids[np.repeat(start[small], counts) + offsets]
        small_rows = np.repeat(small, counts)
        keep = ~is_excluded[small_eids]
        small_eids, small_rows = small_eids[keep], small_rows[keep]

        # Rows with more: `fanout` distinct ranks among the usable edges, mapped past excluded positions.
        big_idx = np.flatnonzero(big)
        ranks = _floyd_sample(usable[big_idx], fanout, rng) if big_idx.size else np.empty((0, max(fanout, 0)), np.int64)
        in_big = big[ex_row]
        if in_big.any():
            ranks = self._skip_excluded(ranks, big_idx, ex_row[in_big], ex_pos[in_big], rows.size)
        big_eids = self.eids[(start[big_idx][:, None] + ranks).reshape(-1)]
        big_rows = np.repeat(big_idx, ranks.shape[1])

        rows_all = np.concatenate([small_rows, big_rows])
        eids_all = np.concatenate([small_eids, big_eids])
        order = np.argsort(rows_all, kind="stable")
        return rows_all[order], eids_all[order]

    @staticmethod
    def _skip_excluded(ranks: np.ndarray, big_idx: np.ndarray, ex_row: np.ndarray, ex_pos: np.ndarray,
                       num_rows: int) -> np.ndarray:
        """Rank r among a row's usable edges -> its position in the full row (skips excluded ones)."""
        slot = np.full(num_rows, -1, dtype=np.int64)
        slot[big_idx] = np.arange(big_idx.size, dtype=np.int64)
        ex_slot = slot[ex_row]
        affected = np.unique(ex_slot)
        sub = np.searchsorted(affected, ex_slot)
        order = np.lexsort((ex_pos, sub))
        sub, pos = sub[order], ex_pos[order]
        per_row = np.bincount(sub, minlength=affected.size)
        nth = np.arange(sub.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        table = np.full((affected.size, int(per_row.max())), _NO_POSITION, dtype=np.int64)
        table[sub, nth] = pos
        mapped = ranks[affected]
        for j in range(table.shape[1]):  # ascending excluded positions: shift past each one reached
            mapped += mapped >= table[:, j:j + 1]
        ranks = ranks.copy()
        ranks[affected] = mapped
        return ranks


def _extend(dst_nodes: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """Src nodes of a block: the dst nodes first, then newly reached nodes in ascending id order."""
    new = np.setdiff1d(np.unique(reached), dst_nodes, assume_unique=True)
    return np.concatenate([dst_nodes, new])


def _local_ids(nodes: np.ndarray, ids: np.ndarray, num_nodes: int) -> np.ndarray:
    lookup = scratch_buffer("lookup", num_nodes, torch.int64, -1, "cpu").numpy()
    lookup[nodes] = np.arange(nodes.size, dtype=np.int64)
    out = lookup[ids]
    lookup[nodes] = -1
    return out


class UniformNeighborSampler:
    """Multi-layer uniform neighbour sampler over the train graph with seed-edge exclusion."""

    def __init__(self, graph, fanouts: Sequence[int]):
        fanouts = [int(f) for f in fanouts]
        if not fanouts or any(f == 0 or f < -1 for f in fanouts):
            raise ValueError(f"train.fanouts must be positive integers (or -1 for all), got {list(fanouts)}")
        self.fanouts = fanouts
        self.num_users = graph.num_nodes("user")
        self.num_items = graph.num_nodes("item")
        self.edge_users, self.edge_items = train_edges(graph)
        self.num_edges = self.edge_users.size
        self.into_items = _InEdges(self.edge_items, self.num_items)  # "ui" edges, grouped by item
        self.into_users = _InEdges(self.edge_users, self.num_users)  # "iu" edges, grouped by user

    @staticmethod
    def generator(seed: int) -> np.random.Generator:
        """The per-step random stream."""
        return np.random.Generator(np.random.PCG64(seed))

    def sample_blocks(self, output_users: torch.Tensor, output_items: torch.Tensor, seed_eids: torch.Tensor,
                      rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor, List]:
        """Output nodes -> (input users, input items, blocks), excluding ``seed_eids`` in both directions."""
        excluded = np.unique(seed_eids.numpy())
        is_excluded = scratch_buffer("is_excluded", self.num_edges, torch.bool, False, "cpu").numpy()
        is_excluded[excluded] = True
        users, items = output_users.numpy(), output_items.numpy()
        blocks = []
        try:
            for fanout in reversed(self.fanouts):
                block, users, items = self._layer(users, items, fanout, excluded, is_excluded, rng)
                blocks.insert(0, block)
        except BaseException:
            forget_scratch()
            raise
        finally:
            is_excluded[excluded] = False
        return torch.from_numpy(users), torch.from_numpy(items), blocks

    def _layer(self, dst_users: np.ndarray, dst_items: np.ndarray, fanout: int, excluded: np.ndarray,
               is_excluded: np.ndarray, rng: np.random.Generator):
        item_rows, ui_eids = self.into_items.sample(dst_items, fanout, excluded, is_excluded, rng)
        user_rows, iu_eids = self.into_users.sample(dst_users, fanout, excluded, is_excluded, rng)
        import dgl

        ui_src, iu_src = self.edge_users[ui_eids], self.edge_items[iu_eids]
        src_users = _extend(dst_users, ui_src)
        src_items = _extend(dst_items, iu_src)
        block = dgl.create_block(
            {
                UI: (torch.from_numpy(_local_ids(src_users, ui_src, self.num_users)), torch.from_numpy(item_rows)),
                IU: (torch.from_numpy(_local_ids(src_items, iu_src, self.num_items)), torch.from_numpy(user_rows)),
            },
            num_src_nodes={"user": src_users.size, "item": src_items.size},
            num_dst_nodes={"user": dst_users.size, "item": dst_items.size},
            idtype=torch.int64,
        )
        block.srcnodes["user"].data[dgl.NID] = torch.from_numpy(src_users)
        block.srcnodes["item"].data[dgl.NID] = torch.from_numpy(src_items)
        block.dstnodes["user"].data[dgl.NID] = torch.from_numpy(dst_users)
        block.dstnodes["item"].data[dgl.NID] = torch.from_numpy(dst_items)
        block.edges[UI].data[dgl.EID] = torch.from_numpy(ui_eids)
        block.edges[IU].data[dgl.EID] = torch.from_numpy(iu_eids)
        return block, src_users, src_items


class NeighborBatches(EdgeBatches):
    """Edge batches plus sampled GCN blocks: what ``--sampler neighbor`` trains on.

    The graph's type picks the backend: a DGL graph -> ``UniformNeighborSampler`` (DGL blocks), a
    ``BipartiteGraph`` -> ``TorchNeighborSampler`` (torch ``Block`` objects, on the graph's device).
    """

    kind = "neighbor"

    def __init__(self, graph, *, fanouts: Sequence[int], batch_size: int, num_negatives: int,
                 seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0):
        super().__init__(graph, batch_size=batch_size, num_negatives=num_negatives, seed=seed, rank=rank,
                         world_size=world_size, num_workers=num_workers)
        if isinstance(graph, BipartiteGraph):
            self.sampler = TorchNeighborSampler(graph, fanouts)
        else:
            self.sampler = UniformNeighborSampler(graph, fanouts)
        self.fanouts = self.sampler.fanouts

    def _make_batch(self, epoch: int, step: int, eids: torch.Tensor, negatives: torch.Tensor) -> MiniBatch:
        batch = super()._make_batch(epoch, step, eids, negatives)
        rng = self.sampler.generator(derive_seed(self.seed, epoch, self.rank, step, TAG_NEIGHBORS))
        batch.input_users, batch.input_items, batch.blocks = self.sampler.sample_blocks(
            batch.output_users, batch.output_items, eids, rng
        )
        return batch
