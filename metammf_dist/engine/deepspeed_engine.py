"""Wrap the training objective in a DeepSpeed engine (ZeRO stage 0-3, optional CPU offload).

The ZeRO settings come from a plain JSON file in ``configs/ds/`` (one per stage).  The batch sizes and the
optimizer come from the experiment config so they are stated once: this module fills
``train_micro_batch_size_per_gpu`` / ``train_batch_size`` and builds ``torch.optim.Adam`` (the paper's
optimizer) as DeepSpeed's client optimizer.  A JSON that sets those keys itself is rejected, naming the key.

How the ID tables are held: dense ``nn.Embedding`` parameters inside ZeRO like every other parameter
(stage 1/2 shard their Adam states; stage 3 shards the tables too but gathers a whole table for each
forward).  DeepSpeed has no sparse-gradient path under ZeRO, so sparse embeddings are not offered.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from metammf_dist.config import Config, ConfigError
from metammf_dist.engine.dist import DistInfo

_OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer")


def load_ds_config(cfg: Config, info: DistInfo) -> dict:
    path = Path(cfg.train.ds_config)
    if not path.is_file():
        raise ConfigError(f"config key 'train.ds_config': DeepSpeed JSON not found: {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path}: not valid JSON ({exc})") from exc
    for key in _OWNED_KEYS:
        if key in ds:
            raise ConfigError(
                f"DeepSpeed config {path}: key '{key}' is set from the experiment config (train.batch_size / train.lr); remove it"
            )
    if zero_stage(ds) == 3 and cfg.model.scorer == "gcn" and cfg.model.gcn_type == "light":
        # measured: 2-rank ZeRO-3 runs of the light GCN gave 3 different results in 8 identical runs, and an
        # in-training evaluation that disagreed with the same checkpoint evaluated alone (stages 0 and 2: exact)
        raise ConfigError(f"model.gcn_type=light is not supported with ZeRO stage 3 ({path}): its runs are not "
                          "reproducible there; use model.gcn_type=sage or ZeRO stage 0-2")
    micro = cfg.train.batch_size // info.world_size
    if micro < 1:
        raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} is smaller than the world size {info.world_size}")
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = micro * info.world_size
    return ds


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_engine(module: torch.nn.Module, cfg: Config, ds_config: dict, info: DistInfo):
    """``deepspeed.initialize`` with a client Adam; returns the engine (``engine(batch)`` -> loss)."""
    import deepspeed

    module.to(info.device)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
    return engine


def gathered_parameters(engine):
    """Context manager: full parameters visible on every rank (a no-op below ZeRO-3)."""
    import contextlib

    if engine.zero_optimization_stage() != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
