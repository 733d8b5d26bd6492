"""Fusion cache: the item fusion outputs of the whole catalog, refreshed every K training steps.

A 2-hop neighbourhood of a 3,000-edge batch reaches a large share of a big catalog (about a fifth of
1M items with fan-outs [10, 10]), and fusing each of those items (features from the shard store, the
meta-learner and the meta layers) is what a sampled step spends most of its time and memory on.  With
``train.fusion_cache_refresh: K`` the trainer

* fuses only the step's **seed items** (its positive and negative items, the dst items of the last
  block) exactly, with gradient, from their features;
* takes the fusion outputs of all other (neighbour) input items from this cache: no features are read
  for them, and no gradient flows through them (their ID rows and the GCN still get gradients);
* recomputes the whole cache, without gradient, before every step whose global step is a multiple of K
  (and before the first step).

After each step the seeds' exact fusion outputs (computed in that step's forward) are written back into
the cache (all-gathered across ranks; ``push``), so an item's entry is its fusion at the last refresh or
at the last step that had it as a seed, whichever is later.

The cache is identical on every rank: at a refresh the catalog is cut into fixed chunks, rank r fuses
chunks r, r + W, ..., and one all-reduce (a sum with zeros elsewhere, which is exact) assembles it; every
rank applies the same gathered pushes.  It is saved with each checkpoint (``fusion_cache.pt``, rank 0), so a
resumed run continues with the same cache as an uninterrupted one.

Memory: ``num_items x fusion_dims[-1]`` float32 per rank (128 MB at 1M items and 32 dims).  Cost of a
refresh: one no-grad fusion pass over the catalog, split across ranks; amortised over K steps.

**Deferred neighbour gradients** (``train.fusion_cache_deferred_grad``).  Without the cache, every neighbour
item j of a step also sends the fusion a gradient ``J_j^T g_j`` (``g_j``: the loss gradient at j's fusion row,
``J_j``: the fusion's Jacobian at j's features).  With this option the cached rows a step reads are leaves
with gradient, so backward yields every ``g_j`` for free; ``accumulate`` sums them per item (``pending``).  The
next refresh, which fuses the whole catalog anyway, runs that fusion with gradient and backpropagates
``pending`` through it: ``Gamma = sum_j J_j^T pending_j``, the summed neighbour fusion gradient of the window
just ended (Jacobians at the current weights).  Each step of the following window then adds ``Gamma / (steps
in the ended window)`` to the fusion parameters' gradient (``offset``, through a term of value zero in the
loss), so over a window the fusion receives what the uncached steps would have sent it, one window late and
spread evenly.  Extra cost: a backward through each refresh (about twice the refresh) and one
``num_items x dim`` accumulator; across ranks ``pending`` is averaged (as DeepSpeed averages gradients) and
``Gamma`` summed over the ranks' chunks, so every rank holds the same offset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as tdist

from metammf_dist.config import ConfigError
from metammf_dist.engine.checkpoint import atomic_torch_save
from metammf_dist.engine.sparse_ids import all_gather_rows, last_per_id

FILE_NAME = "fusion_cache.pt"


class FusionCache:
    def __init__(self, num_items: int, dim: int, refresh_every: int, *, rank: int = 0, world_size: int = 1,
                 distributed: bool = False, chunk: int = 8192, device: torch.device = torch.device("cpu"),
                 deferred_grad: bool = False):
        if refresh_every <= 0:
            raise ValueError(f"FusionCache: refresh_every must be > 0, got {refresh_every}")
        self.num_items, self.dim, self.refresh_every = int(num_items), int(dim), int(refresh_every)
        self.rank, self.world_size, self.distributed = int(rank), int(world_size), bool(distributed)
        self.chunk, self.device = int(chunk), device
        self.fused: Optional[torch.Tensor] = None
        self.refreshed_at = -1  # global step of the last refresh
        self.deferred_grad = bool(deferred_grad)
        # deferred neighbour gradients: per-item sum of g_j since the last refresh, the steps it covers, and
        # the per-step fusion-parameter gradient offset (parameter name -> tensor) the last refresh computed
        self.pending: Optional[torch.Tensor] = (
            torch.zeros(self.num_items, self.dim, dtype=torch.float32, device=device) if self.deferred_grad else None)
        self.pending_steps = 0
        self.offset: Optional[Dict[str, torch.Tensor]] = None

    def due(self, global_step: int) -> bool:
        """Refresh before ``global_step``?  Before the first step, then at every multiple of K."""
        if self.fused is None:
            return True
        return global_step % self.refresh_every == 0 and self.refreshed_at != global_step

    @torch.no_grad()
    def refresh(self, model, store, global_step: int) -> None:
        """Collective: recompute every item's fusion output (``model.fuse``) with the current weights.

        Under ZeRO-3 pass the module ``gathered_model(engine, ...)`` yields.  With deferred gradients the
        fusion runs with gradient and the pending neighbour gradients are backpropagated through it (the
        parameters' ``.grad`` are not touched: the result becomes ``offset``)."""
        out = torch.zeros(self.num_items, self.dim, dtype=torch.float32, device=self.device)
        backprop = self.deferred_grad and self.pending_steps > 0
        if backprop:
            self.sync_pending()
        params = fusion_parameters(model) if backprop else {}
        gamma = {name: torch.zeros_like(p) for name, p in params.items()}
        n_chunks = -(-self.num_items // self.chunk)
        # every rank makes the same number of fusion calls (an empty one when it has no chunk left): under
        # ZeRO-3 each module call runs the engine's parameter hooks, which must line up across ranks
        for rnd in range(-(-n_chunks // self.world_size)):
            c = rnd * self.world_size + self.rank
            lo = min(c * self.chunk, self.num_items)
            hi = min(lo + self.chunk, self.num_items)
            feats = np.asarray(store.gather_concat(np.arange(lo, hi, dtype=np.int64)), dtype=np.float32)
            feats = feats.reshape(hi - lo, model.feat_dim)
            if not backprop:
                out[lo:hi] = model.fuse(torch.from_numpy(feats).to(self.device)).float()
                continue
            with torch.enable_grad():
                fused = model.fuse(torch.from_numpy(feats).to(self.device))
                grads = torch.autograd.grad(fused, list(params.values()),
                                            grad_outputs=self.pending[lo:hi].to(fused.dtype), allow_unused=True)
            out[lo:hi] = fused.detach().float()
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    gamma[name] += g
        if self.distributed and self.world_size > 1:
            tdist.all_reduce(out)
            for g in gamma.values():  # each rank backpropagated its own chunks
                tdist.all_reduce(g)
        self.fused, self.refreshed_at = out, int(global_step)
        if self.deferred_grad:
            self.offset = {name: g / self.pending_steps for name, g in gamma.items()} if backprop else None
            self.pending.zero_()
            self.pending_steps = 0

    @torch.no_grad()
    def sync_pending(self) -> None:
        """Collective: every rank's ``pending`` becomes the ranks' average (DeepSpeed averages gradients over
        ranks; so does the offset).  At each refresh, and before a checkpoint saves rank 0's copy."""
        if self.deferred_grad and self.distributed and self.world_size > 1:
            tdist.all_reduce(self.pending)
            self.pending /= self.world_size

    @torch.no_grad()
    def accumulate(self, item_ids: torch.Tensor, grad: Optional[torch.Tensor]) -> None:
        """Deferred gradients: add one step's loss gradient at the cached rows it read (``grad[k]`` at item
        ``item_ids[k]``; None when the step read none) to ``pending``, on this rank."""
        if not self.deferred_grad:
            raise RuntimeError("FusionCache.accumulate without deferred_grad")
        if grad is not None and item_ids.numel():
            self.pending.index_add_(0, item_ids.to(device=self.pending.device, dtype=torch.int64),
                                    grad.to(device=self.pending.device, dtype=self.pending.dtype))
        self.pending_steps += 1

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

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"fused": self.fused, "refreshed_at": self.refreshed_at, "refresh_every": self.refresh_every,
                "pending": self.pending, "pending_steps": self.pending_steps, "offset": self.offset}

    def save(self, path: Path) -> None:
        atomic_torch_save(self.state_dict(), path)

    def load(self, path: Path) -> bool:
        """Restore from ``path`` if it exists and matches this catalog; returns whether it did."""
        path = Path(path)
        if not path.exists():
            return False
        blob = torch.load(path, map_location=self.device, weights_only=False)
        fused = blob.get("fused")
        if fused is None or tuple(fused.shape) != (self.num_items, self.dim):
            return False
        self.fused, self.refreshed_at = fused.to(self.device), int(blob["refreshed_at"])
        if self.deferred_grad:
            pending = blob.get("pending")
            if pending is None:  # a checkpoint of a run without deferred gradients: start the window afresh
                self.pending.zero_()
                self.pending_steps, self.offset = 0, None
            else:
                self.pending = pending.to(self.device)
                self.pending_steps = int(blob["pending_steps"])
                offset = blob.get("offset")
                self.offset = None if offset is None else {k: v.to(self.device) for k, v in offset.items()}
        return True


def check_deferred_grad(ds_config: dict) -> None:
    """``train.fusion_cache_deferred_grad`` adds its offset through a loss term over the full fusion parameters
    and reads raw gradients at the cached rows: it needs parameters that are whole inside the forward (ZeRO
    stage 0-2) and no fp16 loss scaling."""
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    fp16 = bool((ds_config.get("fp16") or {}).get("enabled", False))
    if stage == 3 or fp16:
        raise ConfigError("config key 'train.fusion_cache_deferred_grad': needs ZeRO stage 0-2 without fp16 loss "
                          f"scaling (the DeepSpeed config has stage {stage}, fp16 {fp16}); set it to false")


# Deferred gradients arrive one window late and push the fusion with the same offset for a whole window; under
# Adam a constant gradient is a steady drift of about lr per step.  Measured: K = 10 at 10k items tracks the
# uncached run, K = 400 at 1M items ends 29 % below it after 600 steps (README, Scaling).
DEFERRED_GRAD_WINDOW_HINT = 20


def deferred_grad_note(refresh_every: int) -> Optional[str]:
    """A start-up note when deferred gradients run with a refresh period longer than measured to work."""
    if refresh_every <= DEFERRED_GRAD_WINDOW_HINT:
        return None
    return (f"note: train.fusion_cache_deferred_grad with train.fusion_cache_refresh={refresh_every}: the neighbour "
            f"gradients of a window are applied over the next one, so they are up to {2 * refresh_every} steps old; "
            f"measured to help at K = 10 and to hurt at K = 400 (1M items, -29 % test Recall@20 after 600 steps); "
            f"keep K <= {DEFERRED_GRAD_WINDOW_HINT}")


def fusion_parameters(model) -> Dict[str, torch.Tensor]:
    """The trainable parameters ``model.fuse`` depends on, by their name in ``model``."""
    return {name: p for name, p in model.named_parameters() if name.startswith("fusion.") and p.requires_grad}
