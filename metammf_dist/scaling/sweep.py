"""A scaling sweep, as written in ``configs/sweeps/*.yaml``: catalog sizes x series -> points.

    name: ci                        # the report's title and default output folder name
    base_config: configs/scale/base.yaml
    out: bench_out/scale/ci         # CSV, markdown, plots, runs (default bench_out/scale/<name>)
    data_dir: bench_out/scale/data  # synthetic catalogs, generated once and reused across sweeps
    catalog:                        # one synthetic catalog per entry of items
      items: [2000, 8000]
      users_per_item: 1.0           # users = items x this
      interactions_per_item: 10     # interactions = items x this
      modalities: {image: 16, text: 16}
      seed: 1
    steps: 6                        # training steps per point (one partial epoch)
    log_every: 2                    # examples/s windows; the first one (warm-up, cache fill) is dropped
    threads: 1                      # torch threads per rank
    overrides: [model.fusion_dims=[32,16], ...]   # every point
    series:                         # each runs at every catalog size
      - {name: meta-cache, fusion_cache: epoch, overrides: [model.fusion=meta]}
      - {name: meta-2ranks-zero3, world_size: 2, zero_stage: 3, overrides: [...]}

Series keys: ``name``, ``world_size`` (default 1), ``zero_stage`` (0-3, default 0), ``offload`` (bool),
``fusion_cache`` (``off``, ``epoch`` = refresh once per epoch's worth of steps, or a step count K),
``overrides`` (config ``key=value`` strings), ``max_items`` (skip larger catalogs, e.g. for the full-graph
mode).  Unknown keys are errors that name the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from metammf_dist.config import ConfigError, read_yaml_mapping

TOP_KEYS = {"name", "base_config", "out", "data_dir", "catalog", "steps", "log_every", "threads", "overrides",
            "series"}
CATALOG_KEYS = {"items", "users_per_item", "interactions_per_item", "modalities", "seed"}
SERIES_KEYS = {"name", "world_size", "zero_stage", "offload", "fusion_cache", "overrides", "max_items"}


@dataclass(frozen=True)
class Series:
    name: str
    world_size: int = 1
    zero_stage: int = 0
    offload: bool = False
    fusion_cache: Union[str, int] = "off"
    overrides: tuple = ()
    max_items: int = 0


@dataclass(frozen=True)
class Catalog:
    items: int
    users: int
    interactions: int
    modalities: tuple  # ((name, dim), ...)
    seed: int

    @property
    def feat_dim(self) -> int:
        return sum(d for _, d in self.modalities)

    def folder_name(self) -> str:
        mods = "-".join(f"{n}{d}" for n, d in self.modalities)
        return f"synth-i{self.items}-u{self.users}-e{self.interactions}-{mods}-s{self.seed}"


@dataclass
class Sweep:
    name: str
    base_config: str
    out: str
    data_dir: str
    catalogs: List[Catalog]
    series: List[Series]
    steps: int = 6
    log_every: int = 2
    threads: int = 1
    overrides: List[str] = field(default_factory=list)
    source: Optional[str] = None

    def points(self):
        """(catalog, series) pairs in run order: smallest catalog first, series in file order."""
        for cat in self.catalogs:
            for s in self.series:
                if s.max_items and cat.items > s.max_items:
                    continue
                yield cat, s


def _check_keys(raw: dict, allowed: set, where: str) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")


def _int(value, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def load_sweep(path: str) -> Sweep:
    p = Path(path)
    raw = read_yaml_mapping(path, "sweep file")
    _check_keys(raw, TOP_KEYS, f"sweep file {path}")
    name = str(raw.get("name") or p.stem)
    cat = raw.get("catalog") or {}
    _check_keys(cat, CATALOG_KEYS, f"sweep file {path}: catalog")
    items = cat.get("items") or []
    if not isinstance(items, list) or not items:
        raise ConfigError(f"sweep file {path}: catalog.items must be a non-empty list of item counts")
    upi, ipi = float(cat.get("users_per_item", 1.0)), float(cat.get("interactions_per_item", 10))
    modalities = cat.get("modalities") or {"image": 128, "text": 256}
    if not isinstance(modalities, dict) or not all(isinstance(v, int) and v > 0 for v in modalities.values()):
        raise ConfigError(f"sweep file {path}: catalog.modalities must map names to positive dims, got {modalities!r}")
    catalogs = []
    for i, n in enumerate(items):
        n = _int(n, f"sweep file {path}: catalog.items[{i}]", 1)
        catalogs.append(Catalog(n, max(1, int(round(n * upi))), max(1, int(round(n * ipi))),
                                tuple(modalities.items()), _int(cat.get("seed", 1), "catalog.seed")))
    series_raw = raw.get("series") or []
    if not isinstance(series_raw, list) or not series_raw:
        raise ConfigError(f"sweep file {path}: series must be a non-empty list")
    series = []
    for i, s in enumerate(series_raw):
        where = f"sweep file {path}: series[{i}]"
        _check_keys(s, SERIES_KEYS, where)
        if not s.get("name"):
            raise ConfigError(f"{where}: needs a name")
        cache = s.get("fusion_cache", "off")
        if cache not in ("off", "epoch") and not (isinstance(cache, int) and not isinstance(cache, bool) and cache > 0):
            raise ConfigError(f"{where}: fusion_cache must be off, epoch or a positive step count, got {cache!r}")
        stage = _int(s.get("zero_stage", 0), f"{where}: zero_stage")
        if stage > 3:
            raise ConfigError(f"{where}: zero_stage must be 0-3, got {stage}")
        ov = s.get("overrides") or []
        if not isinstance(ov, list) or not all(isinstance(o, str) and "=" in o for o in ov):
            raise ConfigError(f"{where}: overrides must be a list of key=value strings")
        series.append(Series(str(s["name"]), _int(s.get("world_size", 1), f"{where}: world_size", 1), stage,
                             bool(s.get("offload", False)), cache, tuple(ov), _int(s.get("max_items", 0), where)))
    names = [s.name for s in series]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep file {path}: series names must be unique, got {names}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"sweep file {path}: overrides must be a list of key=value strings")
    base = str(raw.get("base_config") or "configs/scale/base.yaml")
    return Sweep(name=name, base_config=base, out=str(raw.get("out") or f"bench_out/scale/{name}"),
                 data_dir=str(raw.get("data_dir") or "bench_out/scale/data"), catalogs=catalogs, series=series,
                 steps=_int(raw.get("steps", 6), "steps", 1), log_every=_int(raw.get("log_every", 2), "log_every", 1),
                 threads=_int(raw.get("threads", 1), "threads", 1), overrides=list(overrides), source=str(p))
