"""Typed experiment configuration: YAML file + ``key=value`` overrides -> one ``Config`` object.

Every section is a dataclass; unknown or mistyped keys are errors that name the key.  The config is
built once (``load_config``) and passed down; nothing deep in the code reads YAML or globals.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


@dataclass
class DataConfig:
    path: str = ""  # canonical dataset folder or fsspec URL (see metammf_dist.data.dataset)
    cache_mb: int = 512  # feature-store LRU cache, bytes bound in MiB
    verify: bool = True  # sha256-check each shard on first open
    storage_options: dict = field(default_factory=dict)  # passed to fsspec (e.g. s3 endpoint)


@dataclass
class ModelConfig:
    fusion: str = "meta"  # meta | cp | static | none (ID-only: no fusion, no meta-learner; item_id_dim = user_id_dim)
    fusion_dims: List[int] = field(default_factory=lambda: [1024, 512, 256, 32])  # hidden..., output
    meta_dim: int = 5  # s, size of the item-specific meta vector
    meta_hidden: Optional[int] = None  # meta-learner hidden width; None = input feature dim (paper)
    cp_rank: int = 16
    item_id_dim: int = 32
    user_id_dim: int = 64
    leaky_slope: float = 0.01
    feature_norm: str = "none"  # none | standardize (per-dim z-score with dataset statistics, kept as buffers)
    scorer: str = "gcn"  # mf | gcn
    gcn_layers: int = 2
    gcn_dropout: List[float] = field(default_factory=lambda: [0.5, 0.2])
    gcn_combine: str = "last"  # last | mean  (mean: average of layer-0..L representations)
    gcn_type: str = "sage"  # sage: GraphSAGE-mean layers (paper) | light: LightGCN propagation (no weights)
    id_init_std: float = 0.1  # ID embeddings start ~ N(0, std²)
    id_init: str = "normal"  # normal: torch's global generator | blocks: seeded row blocks, any range drawn alone
    #                          (the same rows whatever the placement or world size; needed by train.id_tables=sharded)
    item_knn: int = 0  # 0 = off; k > 0: item vectors add the mean ID row of the item's k nearest items by features
    item_knn_at: str = "output"  # output: added to the scorer's item vectors; input: to the layer-0 ID part (GCN input)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 3000  # global batch of positive edges (split across ranks)
    lr: float = 1e-3
    weight_decay: float = 1e-6
    num_negatives: int = 1
    fanouts: List[int] = field(default_factory=lambda: [10, 10])
    sampler: str = "neighbor"  # neighbor | full
    num_workers: int = 0
    seed: int = 2023
    ds_config: str = "configs/ds/zero0.json"
    eval_every: int = 1
    patience: int = 5
    checkpoint_every_steps: int = 0  # 0 = only at epoch ends
    keep_checkpoints: int = 2  # most recent complete checkpoints kept (plus the best one)
    max_steps_per_epoch: int = 0  # 0 = full epoch (benchmarks and smoke tests cap it)
    log_every: int = 10
    graph_backend: str = "dgl"  # dgl | torch (torch-only graph, sampler and GCN path: no DGL needed)
    tf32: bool = True  # fp32 matmuls may use TF32 on GPUs that have it (false: full fp32); bf16 is the DeepSpeed JSON's
    fusion_cache_refresh: int = 0  # 0 = off; K > 0: neighbour items read a fusion cache refreshed every K steps
    id_tables: str = "dense"  # dense: inside the DeepSpeed engine (ZeRO); sparse: outside it, replicated, updated row by
    #                           row; sharded: row-sharded across ranks on TorchRec (the latest lane)
    id_optimizer: str = "adam"  # sparse / sharded tables: adam (lazy; sharded: CUDA only) | rowwise_adagrad
    id_lr: float = 0.0  # learning rate of sparse ID tables (0 = train.lr); a row is updated only when it is looked up
    lr_schedule: str = "constant"  # constant | cosine (train.lr -> train.lr * lr_min_ratio over train.epochs)
    lr_min_ratio: float = 0.0  # cosine: the last step's rate as a fraction of train.lr
    gcn_history: bool = False  # GCN layer histories (GNNAutoScale): one sampled hop (fanouts[-1]); needs the fusion cache


@dataclass
class EvalConfig:
    ks: List[int] = field(default_factory=lambda: [10, 20])
    item_chunk: int = 8192  # items (and, sharded, users) per chunk of evaluation's passes: fusion, each GCN layer
    user_chunk: int = 1024  # users per scoring chunk
    metric: str = "recall@20"  # early-stopping metric on the valid split; several joined by + are summed
    max_users: int = 0  # 0 = every user with interactions in the split; N = a fixed random N of them (big catalogs)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str = "runs/default"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{prefix}{key}' (known in this section: {known})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name] or {}, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(raw[f.name], tp, prefix + f.name)
    return cls(**kwargs)


_CHOICES = {
    "model.fusion": ("meta", "cp", "static", "none"),
    "model.scorer": ("mf", "gcn"),
    "model.gcn_combine": ("last", "mean"),
    "model.feature_norm": ("none", "standardize"),
    "model.item_knn_at": ("output", "input"),
    "model.gcn_type": ("sage", "light"),
    "train.sampler": ("neighbor", "full"),
    "train.graph_backend": ("dgl", "torch"),
    "train.id_tables": ("dense", "sparse", "sharded"),
    "train.id_optimizer": ("adam", "rowwise_adagrad"),
    "model.id_init": ("normal", "blocks"),
    "train.lr_schedule": ("constant", "cosine"),
}


def sampled_fanouts(cfg: Config) -> List[int]:
    """The fan-outs the neighbour sampler draws: one hop (``fanouts[-1]``) with ``train.gcn_history``, whose
    layers all aggregate the seeds' sampled neighbours; else one per GCN layer."""
    return [cfg.train.fanouts[-1]] if cfg.train.gcn_history else list(cfg.train.fanouts)


def validate(cfg: Config) -> Config:
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")
    positive = {  # sizes, rates and counts that must be > 0
        "train.batch_size": cfg.train.batch_size,
        "train.num_negatives": cfg.train.num_negatives,
        "train.lr": cfg.train.lr,
        "train.epochs": cfg.train.epochs,
        "train.eval_every": cfg.train.eval_every,
        "train.patience": cfg.train.patience,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "model.meta_dim": cfg.model.meta_dim,
        "model.cp_rank": cfg.model.cp_rank,
        "model.item_id_dim": cfg.model.item_id_dim,
        "model.user_id_dim": cfg.model.user_id_dim,
        "model.id_init_std": cfg.model.id_init_std,
        "model.gcn_layers": cfg.model.gcn_layers,
        "data.cache_mb": cfg.data.cache_mb,
        "eval.item_chunk": cfg.eval.item_chunk,
        "eval.user_chunk": cfg.eval.user_chunk,
    }
    if cfg.model.meta_hidden is not None:
        positive["model.meta_hidden"] = cfg.model.meta_hidden
    for key, value in positive.items():
        if not value > 0:  # also catches NaN
            raise ConfigError(f"config key '{key}': must be positive, got {value}")
    non_negative = {  # 0 means "off" / "all" for these
        "train.weight_decay": cfg.train.weight_decay,
        "train.id_lr": cfg.train.id_lr,
        "train.num_workers": cfg.train.num_workers,
        "train.max_steps_per_epoch": cfg.train.max_steps_per_epoch,
        "train.checkpoint_every_steps": cfg.train.checkpoint_every_steps,
        "train.log_every": cfg.train.log_every,
        "train.seed": cfg.train.seed,
        "model.leaky_slope": cfg.model.leaky_slope,
        "eval.max_users": cfg.eval.max_users,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {value}")
    for i, dim in enumerate(cfg.model.fusion_dims):
        if dim <= 0:
            raise ConfigError(f"config key 'model.fusion_dims[{i}]': must be positive, got {dim} "
                              f"(in {cfg.model.fusion_dims})")
    for i, fanout in enumerate(cfg.train.fanouts):
        if fanout == 0 or fanout < -1:
            raise ConfigError(f"config key 'train.fanouts[{i}]': must be positive or -1 (every neighbour), got {fanout}")
    _validate_eval(cfg.eval)
    if not 0.0 <= cfg.train.lr_min_ratio <= 1.0:
        raise ConfigError(f"config key 'train.lr_min_ratio': must be in [0, 1], got {cfg.train.lr_min_ratio}")
    if cfg.model.item_knn < 0:
        raise ConfigError(f"config key 'model.item_knn': must be >= 0 (0 = off), got {cfg.model.item_knn}")
    if not cfg.model.fusion_dims:
        raise ConfigError("config key 'model.fusion_dims': needs at least one output dim")
    if cfg.train.fusion_cache_refresh < 0:
        raise ConfigError(f"config key 'train.fusion_cache_refresh': must be >= 0 (0 = off), got {cfg.train.fusion_cache_refresh}")
    if cfg.train.fusion_cache_refresh > 0 and (cfg.model.scorer != "gcn" or cfg.train.sampler != "neighbor"):
        raise ConfigError(
            "config key 'train.fusion_cache_refresh': the fusion cache needs model.scorer=gcn and train.sampler=neighbor "
            f"(got {cfg.model.scorer} / {cfg.train.sampler}); set it to 0"
        )
    if cfg.train.gcn_history and (cfg.train.fusion_cache_refresh <= 0 or cfg.model.gcn_layers < 2):
        raise ConfigError(
            "config key 'train.gcn_history': layer histories are refreshed with the fusion cache and need a GCN of "
            f"2+ layers (got train.fusion_cache_refresh={cfg.train.fusion_cache_refresh}, "
            f"model.gcn_layers={cfg.model.gcn_layers}); set train.fusion_cache_refresh=K or gcn_history=false"
        )
    if cfg.train.id_tables == "sharded":
        if cfg.model.id_init != "blocks":
            raise ConfigError("config key 'model.id_init': train.id_tables=sharded draws each rank's rows alone, which "
                              "needs model.id_init=blocks")
        if cfg.train.gcn_history:
            raise ConfigError("config key 'train.gcn_history': layer histories read the whole user table; they need "
                              "train.id_tables=dense or sparse")
        if cfg.model.item_knn > 0:
            raise ConfigError("config key 'model.item_knn': the item kNN graph reads neighbours' ID rows outside the "
                              "row ranges the sharded evaluation holds; it needs train.id_tables=dense or sparse")
    if cfg.train.gcn_history and cfg.model.gcn_type != "sage":
        raise ConfigError("config key 'train.gcn_history': layer histories are written for model.gcn_type=sage "
                          f"(got {cfg.model.gcn_type!r})")
    if cfg.model.scorer == "gcn" and len(cfg.train.fanouts) != cfg.model.gcn_layers:
        raise ConfigError(
            f"config key 'train.fanouts': {len(cfg.train.fanouts)} fan-outs for model.gcn_layers={cfg.model.gcn_layers}"
        )
    if not cfg.model.gcn_dropout or not all(0.0 <= p < 1.0 for p in cfg.model.gcn_dropout):
        raise ConfigError(f"config key 'model.gcn_dropout': needs rates in [0, 1), got {cfg.model.gcn_dropout}")
    if cfg.model.fusion == "none":
        if cfg.model.item_id_dim != cfg.model.user_id_dim:
            raise ConfigError(
                "config key 'model.item_id_dim': model.fusion=none (ID-only) needs model.item_id_dim = "
                f"model.user_id_dim for dot-product scoring, got {cfg.model.item_id_dim} and {cfg.model.user_id_dim}"
            )
        if cfg.train.fusion_cache_refresh > 0:
            raise ConfigError("config key 'train.fusion_cache_refresh': model.fusion=none has no fusion to cache; set it to 0")
    elif cfg.model.fusion_dims[-1] + cfg.model.item_id_dim != cfg.model.user_id_dim:
        raise ConfigError(
            "config key 'model.user_id_dim': must equal model.fusion_dims[-1] + model.item_id_dim "
            f"({cfg.model.fusion_dims[-1]} + {cfg.model.item_id_dim}) for dot-product scoring, got {cfg.model.user_id_dim}"
        )
    return cfg


def _validate_eval(ev: "EvalConfig") -> None:
    from metammf_dist.evaluation.metrics import METRIC_NAMES

    if not ev.ks:
        raise ConfigError("config key 'eval.ks': needs at least one cut-off, e.g. [10, 20]")
    for i, k in enumerate(ev.ks):
        if k <= 0:
            raise ConfigError(f"config key 'eval.ks[{i}]': cut-offs must be >= 1, got {k}")
    if len(set(ev.ks)) != len(ev.ks):
        raise ConfigError(f"config key 'eval.ks': repeats a cut-off ({ev.ks})")
    computed = [f"{name}@{k}" for k in ev.ks for name in METRIC_NAMES]
    terms = ev.metric.split("+")
    for term in terms:
        if term not in computed:
            raise ConfigError(f"config key 'eval.metric': {term!r} is not computed with eval.ks={ev.ks} "
                              f"(one of {', '.join(computed)}, or several joined by '+')")
    if len(set(terms)) != len(terms):
        raise ConfigError(f"config key 'eval.metric': {ev.metric!r} names a metric twice")


def require_data_path(cfg: Config) -> Config:
    """Commands that read the dataset (train) need ``data.path``; a one-line error naming the key otherwise."""
    if not cfg.data.path:
        raise ConfigError("config key 'data.path': not set (the dataset folder or URL that `metammf-dist prepare` "
                          "or `synth` wrote; e.g. data.path=data/tiktok)")
    return cfg


def parse_overrides(overrides: List[str]) -> dict:
    """``["train.lr=0.01", "model.fusion_dims=[64,32]"]`` -> nested dict (values parsed as YAML)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(raw: dict) -> Config:
    return validate(_build(Config, raw or {}, ""))


def read_yaml_mapping(path: str, what: str = "config file") -> dict:
    """A YAML file whose top level is a mapping; clear errors naming ``what`` and the path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path}: top level must be a mapping")
    return raw


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Config:
    raw: dict = {}
    if path:
        raw = read_yaml_mapping(path)
    raw = _merge(raw, parse_overrides(overrides or []))
    return config_from_dict(raw)


def save_config(cfg: Config, path: str) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
