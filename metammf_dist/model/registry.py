"""Config strings -> model parts: the fusion kinds and the scorers, and ``build_model``.

``ModelConfig.fusion`` picks a fusion layer kind from ``FUSION_LAYERS`` (defined next to the layers in
``fusion.py``, re-exported here); ``ModelConfig.scorer`` picks a scorer builder from ``SCORERS``.  A
scorer builder returns the message-passing module that refines the ID+fusion vectors, or ``None`` for
plain matrix factorization (dot product of the raw vectors).  The GCN builder imports DGL only when it
is used, so MF models work without DGL installed.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from torch import nn

from metammf_dist.config import ModelConfig
from metammf_dist.model.fusion import FUSION_LAYERS, FusionNet

__all__ = ["FUSION_LAYERS", "SCORERS", "build_fusion", "build_scorer", "build_model"]


def build_fusion(cfg: ModelConfig, feat_dim: int) -> FusionNet:
    """The meta-learner + fusion MLP for items with ``feat_dim`` concatenated multimodal features."""
    if cfg.fusion not in FUSION_LAYERS:
        raise ValueError(f"model.fusion: unknown kind {cfg.fusion!r} (known: {', '.join(FUSION_LAYERS)})")
    return FusionNet(
        feat_dim,
        cfg.fusion_dims,
        kind=cfg.fusion,
        meta_dim=cfg.meta_dim,
        meta_hidden=cfg.meta_hidden,
        cp_rank=cfg.cp_rank,
        leaky_slope=cfg.leaky_slope,
    )


def _build_mf(cfg: ModelConfig) -> Optional[nn.Module]:
    return None  # MF: the score is the dot product of the user and item vectors themselves


def _build_gcn(cfg: ModelConfig) -> Optional[nn.Module]:
    from metammf_dist.model.gcn import GCN  # imports DGL: only when a GCN is asked for

    return GCN(
        cfg.user_id_dim,
        num_layers=cfg.gcn_layers,
        dropout=cfg.gcn_dropout,
        combine=cfg.gcn_combine,
        leaky_slope=cfg.leaky_slope,
        kind=cfg.gcn_type,
    )


SCORERS: Dict[str, Callable[[ModelConfig], Optional[nn.Module]]] = {"mf": _build_mf, "gcn": _build_gcn}


def build_scorer(cfg: ModelConfig) -> Optional[nn.Module]:
    if cfg.scorer not in SCORERS:
        raise ValueError(f"model.scorer: unknown scorer {cfg.scorer!r} (known: {', '.join(SCORERS)})")
    return SCORERS[cfg.scorer](cfg)


def build_model(cfg: ModelConfig, num_users: int, num_items: int, feat_dim: int, id_device=None) -> nn.Module:
    """A ``MetaMMFRecommender`` for the given config and dataset sizes (``id_device="meta"``: ID tables left
    unallocated, for row-sharded tables)."""
    # deferred: recommender.py builds its parts with the functions above
    from metammf_dist.model.recommender import MetaMMFRecommender

    return MetaMMFRecommender(cfg, num_users, num_items, feat_dim, id_device=id_device)
