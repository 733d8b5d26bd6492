"""The mini-batch type and plain edge batches (for the MF scorer, and the base of the graph samplers).

Pipeline of one step (each stage takes -> gives):

1. item sampler (``partition``): (seed, epoch, rank, world_size) -> this rank's positive edge ids;
2. negative sampling (``negatives``): (seed, epoch, rank) -> ``num_negatives`` uniform items per positive
   (items with a train interaction);
3. relabelling (here): global (user, item) pairs -> output node arrays + pair indices into them;
4. neighbour sampling / full-graph blocks (``neighbor``, ``full``): output nodes -> blocks + input nodes;
5. feature fetch (``features``): input items -> ``item_feats``.

``EdgeBatches`` runs stages 1–3 and yields ``MiniBatch`` objects with no blocks (input nodes = output
nodes); ``NeighborBatches`` and ``FullGraphBatches`` subclass it and add stage 4.

Pair layout: positive ``p`` is (``output_users[pos_u[p]]``, ``output_items[pos_i[p]]``); its ``k``-th
negative is pair ``p * num_negatives + k`` of (``neg_u``, ``neg_i``), i.e. negatives are grouped by
positive (``pos.repeat_interleave(num_negatives)`` lines the scores up).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterator, List, Optional

import torch

from metammf_dist.graph.train_graph import train_edges
from metammf_dist.sampler.features import prefetch
from metammf_dist.sampler.negatives import draw_epoch_negatives, negative_pool
from metammf_dist.sampler.partition import EdgePartition


@dataclass
class MiniBatch:
    step: int  # step within the epoch
    seed_eids: torch.Tensor  # train edge ids of the positives (ids of both "ui" and "iu")
    input_users: torch.Tensor  # global ids of the first block's src users (= output_users without blocks)
    input_items: torch.Tensor  # global ids of the first block's src items; item_feats rows follow this order
    blocks: List[Any]  # DGL blocks or torch_graph.Block objects, input -> output; [] for plain edge batches
    output_users: torch.Tensor  # global ids of the last block's dst users
    output_items: torch.Tensor  # global ids of the last block's dst items
    pos_u: torch.Tensor  # [P] indices into output_users
    pos_i: torch.Tensor  # [P] indices into output_items
    neg_u: torch.Tensor  # [P * num_negatives] indices into output_users
    neg_i: torch.Tensor  # [P * num_negatives] indices into output_items
    num_pos: int
    item_feats: Optional[torch.Tensor] = field(default=None, repr=False)  # filled by features.attach_features
    ready: Optional[Any] = field(default=None, repr=False)  # CUDA event of an asynchronous copy (to_device_async)

    @property
    def num_input_users(self) -> int:
        return int(self.input_users.numel())

    @property
    def num_input_items(self) -> int:
        """Unique items whose features this step needs (the trainer logs it)."""
        return int(self.input_items.numel())

    def stats(self) -> dict:
        return {
            "num_pos": self.num_pos,
            "input_users": self.num_input_users,
            "input_items": self.num_input_items,
            "output_users": int(self.output_users.numel()),
            "output_items": int(self.output_items.numel()),
            "block_edges": [int(b.num_edges()) for b in self.blocks],
        }

    def tensors(self) -> dict:
        """The batch's tensor fields by name (blocks apart)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def wait_ready(self) -> "MiniBatch":
        """After an asynchronous copy: make the current CUDA stream wait for it, and tell the allocator the
        tensors are used on that stream; returns self (a no-op otherwise)."""
        if self.ready is not None:
            stream = torch.cuda.current_stream()
            stream.wait_event(self.ready)
            for value in self.tensors().values():
                if value.is_cuda:
                    value.record_stream(stream)
            self.ready = None
        return self

    def to(self, device: torch.device, non_blocking: bool = False, blocks: bool = True) -> "MiniBatch":
        """Moves every tensor field and (``blocks``) the blocks to ``device`` in place; returns self (a no-op when
        already there)."""
        for name, value in self.tensors().items():
            if value.device != device:
                setattr(self, name, value.to(device, non_blocking=non_blocking))
        if blocks:
            self.blocks = [b if b.device == device else b.to(device) for b in self.blocks]
        return self


class EdgeBatches:
    """Plain edge batches: this rank's positives with their negatives, no graph blocks."""

    kind = "edges"
    seed_features_only = False  # fusion cache on: the feature stage reads only the seed (output) items
    device: Optional[torch.device] = None  # CUDA: the prefetch thread also copies batches there, ahead

    def __init__(self, graph, *, batch_size: int, num_negatives: int, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0):
        self.graph = graph
        self.num_users = graph.num_nodes("user")
        self.num_items = graph.num_nodes("item")
        users, items = train_edges(graph)
        self.edge_users = torch.from_numpy(users)
        self.edge_items = torch.from_numpy(items)
        self.negative_pool = negative_pool(self.edge_items, self.num_items)  # items with a train interaction
        self.num_negatives = int(num_negatives)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.partition = EdgePartition(
            num_edges=int(users.size), batch_size=int(batch_size), rank=self.rank,
            world_size=self.world_size, seed=self.seed,
        )

    def num_batches(self, epoch: int = 0) -> int:
        """Steps per epoch on this rank (equal on all ranks; does not depend on the epoch)."""
        return self.partition.num_batches()

    def epoch(self, epoch: int, start_step: int = 0, store=None) -> Iterator[MiniBatch]:
        """The batches of ``epoch`` from ``start_step`` on (skipped steps cost nothing).

        With ``store`` the feature stage runs too.  With ``num_workers > 0`` sampling (and feature
        fetch) run that many batches ahead in a background thread; the batches are the same either way.
        """
        batches = self._generate(int(epoch), int(start_step))
        if self.num_workers > 0 or store is not None:
            return prefetch(batches, store, ahead=self.num_workers, seeds_only=self.seed_features_only,
                            device=self.device)
        return batches

    # -- stages -----------------------------------------------------------------------------------
    def _generate(self, epoch: int, start_step: int) -> Iterator[MiniBatch]:
        edge_batches = self.partition.batches(epoch)  # stage 1
        # stage 2: negatives are drawn per edge id for the whole epoch, from a stream keyed by
        # (seed, epoch) only, so a positive gets the same negatives at any world size or rank; the rank
        # keeps the rows of its own edges only.
        own = torch.cat(edge_batches).sort().values if edge_batches else torch.zeros(0, dtype=torch.int64)
        negatives = draw_epoch_negatives(
            self.partition.num_edges, self.num_items, self.num_negatives, seed=self.seed, epoch=epoch,
            pool=self.negative_pool, rows=own,
        )
        for step, eids in enumerate(edge_batches):
            if step >= start_step:
                yield self._make_batch(epoch, step, eids, negatives[torch.searchsorted(own, eids)])

    def _make_batch(self, epoch: int, step: int, eids: torch.Tensor, negatives: torch.Tensor) -> MiniBatch:
        """Stage 3: global pairs -> sorted unique output nodes and indices into them."""
        pos_users = self.edge_users[eids]
        pos_items = self.edge_items[eids]
        neg_items = negatives.reshape(-1)
        neg_users = pos_users.repeat_interleave(self.num_negatives)
        out_users = torch.unique(pos_users)
        out_items = torch.unique(torch.cat([pos_items, neg_items]))
        return MiniBatch(
            step=step,
            seed_eids=eids,
            input_users=out_users,
            input_items=out_items,
            blocks=[],
            output_users=out_users,
            output_items=out_items,
            pos_u=torch.searchsorted(out_users, pos_users),
            pos_i=torch.searchsorted(out_items, pos_items),
            neg_u=torch.searchsorted(out_users, neg_users),
            neg_i=torch.searchsorted(out_items, neg_items),
            num_pos=int(eids.numel()),
        )
