"""Big-catalog strategies: approximations the training loop calls through one interface (``base.Strategy``).

    base.py          the interface (prepare a step's extra inputs, after a step, state for checkpoints)
    fusion_cache.py  ``train.fusion_cache_refresh``: neighbour items read a catalog-wide fusion snapshot
    gcn_history.py   ``train.gcn_history``: one sampled hop, neighbours' inner-layer vectors from tables

``build_strategy(cfg, ...)`` picks one from the config (``None`` = every step exact).
"""
from __future__ import annotations

from typing import Optional

from metammf_dist.strategies.base import Strategy
from metammf_dist.strategies.fusion_cache import FusionCache, ShardedFusionCache
from metammf_dist.strategies.gcn_history import GCNHistory

__all__ = ["FusionCache", "GCNHistory", "ShardedFusionCache", "Strategy", "build_strategy"]


def build_strategy(cfg, num_users: int, num_items: int, store, graph, info) -> Optional[Strategy]:
    """The strategy ``cfg`` asks for: ``train.fusion_cache_refresh: K`` -> ``FusionCache`` (``ShardedFusionCache``
    with row-sharded ID tables); with ``train.gcn_history`` -> ``GCNHistory`` over that cache; else None (every
    step exact).  ``info``: the
    ``DistInfo`` of this rank; ``graph``: the train graph (histories refresh over it, on ``info.device``)."""
    if cfg.train.fusion_cache_refresh <= 0:
        return None
    if cfg.train.id_tables == "sharded":  # cut like the item table: each rank holds its own items' rows
        return ShardedFusionCache(num_items, cfg.model.fusion_dims[-1], cfg.train.fusion_cache_refresh, store,
                                  rank=info.rank, world_size=info.world_size, chunk=cfg.eval.item_chunk,
                                  device=info.device)
    cache = FusionCache(num_items, cfg.model.fusion_dims[-1], cfg.train.fusion_cache_refresh, store,
                        rank=info.rank, world_size=info.world_size, distributed=info.distributed,
                        chunk=cfg.eval.item_chunk, device=info.device)
    if not cfg.train.gcn_history:
        return cache
    return GCNHistory(cache, graph.to(info.device), num_users, cfg.model.user_id_dim, cfg.model.gcn_layers,
                      world_size=info.world_size, distributed=info.distributed, device=info.device)
