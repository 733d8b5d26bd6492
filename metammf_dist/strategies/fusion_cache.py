"""Fusion cache (``train.fusion_cache_refresh: K``): the item fusion outputs of the whole catalog, refreshed every K steps.

A 2-hop neighbourhood of a 3,000-edge batch reaches a large share of a big catalog (about a fifth of
1M items with fan-outs [10, 10]), and fusing each of those items (features from the shard store, the
meta-learner and the meta layers) is what a sampled step spends most of its time and memory on.  With the
cache a step

* fuses only its **seed items** (its positive and negative items, the dst items of the last block) exactly,
  with gradient, from their features;
* takes the fusion outputs of all other (neighbour) input items from this cache: no features are read
  for them, and no gradient flows through them (their ID rows and the GCN still get gradients);
* recomputes the whole cache, without gradient, before every step whose global step is a multiple of K
  (and before the first step).

After each step the seeds' exact fusion outputs (computed in that step's forward) are written back into
the cache (all-gathered across ranks; ``push``), so an item's entry is its fusion at the last refresh or
at the last step that had it as a seed, whichever is later.

The cache is identical on every rank: at a refresh the catalog is cut into fixed chunks, rank r fuses
chunks r, r + W, ..., and one all-reduce (a sum with zeros elsewhere, which is exact) assembles it; every
rank applies the same gathered pushes.  It is saved with each checkpoint (``fusion_cache.pt``), so a resumed
run continues with the same cache as an uninterrupted one.

Memory: ``num_items x fusion_dims[-1]`` float32 per rank (128 MB at 1M items and 32 dims).  Cost of a
refresh: one no-grad fusion pass over the catalog, split across ranks; amortised over K steps.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as tdist

from metammf_dist.distributed.collectives import all_gather_rows, fetch_owned_rows, last_per_id, send_rows_to_owners
from metammf_dist.distributed.sharded_ids import RangeNotCovered, copy_range, row_block, row_range
from metammf_dist.strategies.base import FullModel, Strategy, seed_counts


class FusionCache(Strategy):
    file_name = "fusion_cache.pt"
    seed_features_only = True

    def __init__(self, num_items: int, dim: int, refresh_every: int, store, *, rank: int = 0, world_size: int = 1,
                 distributed: bool = False, chunk: int = 8192, device: torch.device = torch.device("cpu")):
        super().__init__()
        if refresh_every <= 0:
            raise ValueError(f"FusionCache: refresh_every must be > 0, got {refresh_every}")
        self.num_items, self.dim, self.refresh_every = int(num_items), int(dim), int(refresh_every)
        self.store = store
        self.rank, self.world_size, self.distributed = int(rank), int(world_size), bool(distributed)
        self.chunk, self.device = int(chunk), device
        self.fused: Optional[torch.Tensor] = None
        self.refreshed_at = -1  # global step of the last refresh

    # -- the strategy interface ---------------------------------------------------------------------
    def prepare(self, batch, global_step: int, full_model: FullModel) -> Dict[str, object]:
        if self.due(global_step):
            with self.timed_refresh(), full_model() as model:
                self.refresh(model, global_step)
        n_seed = seed_counts(batch)["item"]
        return {"cached_fusion": self.lookup(batch.input_items[n_seed:])}

    def after_step(self, batch, fresh: Optional[dict]) -> None:
        self.push(batch.output_items, fresh["fusion"])

    def state_dict(self) -> dict:
        return {"fused": None if self.fused is None else self.fused.cpu(), "refreshed_at": self.refreshed_at,
                "refresh_every": self.refresh_every}

    def load_state_dict(self, state: dict) -> bool:
        fused = state.get("fused")
        if fused is None or tuple(fused.shape) != (self.num_items, self.dim):
            return False
        self.fused, self.refreshed_at = fused.to(self.device), int(state["refreshed_at"])
        return True

    # -- the cache ----------------------------------------------------------------------------------
    def due(self, global_step: int) -> bool:
        """Refresh before ``global_step``?  Before the first step, then at every multiple of K."""
        if self.fused is None:
            return True
        return global_step % self.refresh_every == 0 and self.refreshed_at != global_step

    @torch.no_grad()
    def refresh(self, model, global_step: int) -> None:
        """Collective: recompute every item's fusion output (``model.fuse``) with the current weights.
        Under ZeRO-3 pass a module with gathered parameters (``prepare`` does)."""
        out = torch.zeros(self.num_items, self.dim, dtype=torch.float32, device=self.device)
        n_chunks = -(-self.num_items // self.chunk)
        # every rank makes the same number of fusion calls (an empty one when it has no chunk left): under
        # ZeRO-3 each module call runs the engine's parameter hooks, which must line up across ranks
        for rnd in range(-(-n_chunks // self.world_size)):
            c = rnd * self.world_size + self.rank
            lo = min(c * self.chunk, self.num_items)
            hi = min(lo + self.chunk, self.num_items)
            out[lo:hi] = self._fuse_rows(model, lo, hi)
        if self.distributed and self.world_size > 1:
            tdist.all_reduce(out)
        self.fused, self.refreshed_at = out, int(global_step)

    def _fuse_rows(self, model, lo: int, hi: int) -> torch.Tensor:
        """``[hi - lo, dim]`` fp32: the fusion outputs of items ``lo..hi-1`` (features read from the store)."""
        feats = np.asarray(self.store.gather_concat(np.arange(lo, hi, dtype=np.int64)), dtype=np.float32)
        return model.fuse(torch.from_numpy(feats.reshape(hi - lo, model.feat_dim)).to(self.device)).float()

    def lookup(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Cached fusion rows of ``item_ids`` (``[n, dim]``, no gradient)."""
        if self.fused is None:
            raise RuntimeError("FusionCache.lookup before the first refresh")
        return self.fused.index_select(0, item_ids.to(self.fused.device))

    @torch.no_grad()
    def push(self, item_ids: torch.Tensor, fused: torch.Tensor) -> None:
        """Write the seeds' fresh fusion rows (``fused[k]`` of item ``item_ids[k]``) into the cache.
        Collective when distributed: every rank's rows are applied on every rank, a later rank's row winning
        for an item that several ranks had."""
        if self.fused is None:
            raise RuntimeError("FusionCache.push before the first refresh")
        ids = item_ids.to(device=self.fused.device, dtype=torch.int64)
        values = fused.detach().to(device=self.fused.device, dtype=self.fused.dtype)
        if self.distributed and self.world_size > 1:
            ids, values = all_gather_rows(ids, values, self.world_size)
        ids, values = last_per_id(ids, values)
        self.fused.index_copy_(0, ids, values)


class ShardedFusionCache(FusionCache):
    """The fusion cache cut like the row-sharded item table (``train.id_tables=sharded``): rank r holds and
    refreshes only the items it owns (``row_range``: ``ceil(items / world)`` per rank), so the cache costs
    ``items / world x dim`` floats per rank and a refresh fuses only the owned items (no catalog-wide
    all-reduce).  A step's neighbour rows are fetched from their owners and its seeds' fresh rows sent to them
    (``distributed/collectives``: one all-to-all each way); duplicates resolve as in the replicated cache (the
    later rank's row wins).  Saved per rank with its row range (``sharded``), re-cut on load for any world size."""

    sharded = True

    def __init__(self, num_items: int, dim: int, refresh_every: int, store, *, rank: int = 0, world_size: int = 1,
                 chunk: int = 8192, device: torch.device = torch.device("cpu")):
        super().__init__(num_items, dim, refresh_every, store, rank=rank, world_size=world_size,
                         distributed=world_size > 1, chunk=chunk, device=device)
        self.lo, self.hi = row_range(self.num_items, self.rank, self.world_size)
        self.block = row_block(self.num_items, self.world_size)

    @torch.no_grad()
    def refresh(self, model, global_step: int) -> None:
        """Collective: recompute this rank's items' fusion outputs with the current weights."""
        out = torch.zeros(self.hi - self.lo, self.dim, dtype=torch.float32, device=self.device)
        # the same number of fusion calls on every rank (ZeRO-3's module hooks must line up): empty ones at the end
        for c in range(-(-self.block // self.chunk)):
            lo = min(self.lo + c * self.chunk, self.hi)
            hi = min(lo + self.chunk, self.hi)
            out[lo - self.lo:hi - self.lo] = self._fuse_rows(model, lo, hi)
        self.fused, self.refreshed_at = out, int(global_step)

    def lookup(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Collective: the cached rows of ``item_ids``, fetched from their owners."""
        if self.fused is None:
            raise RuntimeError("FusionCache.lookup before the first refresh")
        return fetch_owned_rows(item_ids.to(self.fused.device), self.fused, self.lo, self.block, self.world_size)

    @torch.no_grad()
    def push(self, item_ids: torch.Tensor, fused: torch.Tensor) -> None:
        """Collective: every rank's fresh seed rows go to their owners, which write them."""
        if self.fused is None:
            raise RuntimeError("FusionCache.push before the first refresh")
        ids, values = send_rows_to_owners(item_ids.to(device=self.fused.device, dtype=torch.int64),
                                          fused.detach().to(device=self.fused.device, dtype=self.fused.dtype),
                                          self.block, self.world_size)
        if ids.numel():
            ids, values = last_per_id(ids, values)
            self.fused.index_copy_(0, ids - self.lo, values)

    def state_dict(self) -> dict:
        return {"fused": None if self.fused is None else self.fused.cpu(), "refreshed_at": self.refreshed_at,
                "refresh_every": self.refresh_every, "lo": self.lo, "hi": self.hi, "rows": self.num_items}

    def load_state_dict(self, shards) -> bool:
        """``shards``: every rank's saved state (any world size)."""
        if not shards or any(s.get("fused") is None or s.get("rows") != self.num_items for s in shards):
            return False
        out = torch.empty(self.hi - self.lo, self.dim, dtype=torch.float32, device=self.device)
        try:
            copy_range(shards, "fused", self.lo, self.hi, out, what="fusion cache")
        except RangeNotCovered:  # the saved ranks do not cover this rank's items: refresh instead
            return False
        self.fused, self.refreshed_at = out, int(shards[0]["refreshed_at"])
        return True
