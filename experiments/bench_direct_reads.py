"""Random seed-item gathers from a feature store: direct row reads vs row-group decoding, side by side.

    .venv/bin/python experiments/bench_direct_reads.py STORE_URL [LIST_STORE_URL] [--rows 5863] [--cache-mb 256]

Times ``--repeats`` gathers of ``--rows`` distinct random item ids (what a training step's seed items are at
1M items) after ``--warmup`` untimed ones, in one process, for: the store with direct reads, the same store
decoding row groups through a ``--cache-mb`` cache, and optionally a second store written with
``encoding=list`` (FixedSizeList columns) decoded the same way.  Also checks that both paths return the same
values.  E.g. STORE_URL = bench_out/scale/data/synth-i1000000-u1000000-e10000000-image128-text256-s1/features
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sharding import FeatureStore


def timed(store: FeatureStore, rows: int, items: int, warmup: int, repeats: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        store.gather_concat(np.unique(rng.integers(0, items, rows)))
    started = time.perf_counter()
    for _ in range(repeats):
        store.gather_concat(np.unique(rng.integers(0, items, rows)))
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("list_store", nargs="?")
    parser.add_argument("--rows", type=int, default=5863)
    parser.add_argument("--cache-mb", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    cache = args.cache_mb << 20
    variants = {"direct": FeatureStore(args.store, cache_bytes=cache, verify=False, direct_reads=True),
                "row_groups": FeatureStore(args.store, cache_bytes=cache, verify=False, direct_reads=False)}
    if args.list_store:
        variants["list_row_groups"] = FeatureStore(args.list_store, cache_bytes=cache, verify=False)
    items = len(variants["direct"])
    check = np.arange(0, items, max(1, items // 5000))
    assert np.array_equal(variants["direct"].gather_concat(check), variants["row_groups"].gather_concat(check))
    out = {name: round(timed(store, args.rows, items, args.warmup, args.repeats, seed=0) * 1e3, 1)
           for name, store in variants.items()}
    print(json.dumps({"rows": args.rows, "items": items, "cache_mb": args.cache_mb, "ms_per_gather": out,
                      "row_groups_over_direct": round(out["row_groups"] / out["direct"], 1)}))


if __name__ == "__main__":
    main()
