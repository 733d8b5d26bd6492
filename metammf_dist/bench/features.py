"""``metammf-dist bench features``: sharded feature store vs an in-memory numpy array.

1. Write (or reuse) a synthetic float16 store of ``--items`` x ``--dim`` (two modalities, seeded normal data,
   written chunk by chunk) under ``--workdir``.
2. Warm gather: the same random batches of ``--batch`` ids gathered from the store (``gather_concat`` to
   float32) and from the whole catalog held as a numpy float16 array (``arr[ids].astype(float32)``).  The
   store's cache is sized to hold the whole store and warmed first, so both sides serve from RAM.
   ``gather_ratio_warm`` = store batches/s / numpy batches/s.
3. Cold peak RSS: a FRESH subprocess opens the store with ``--cache-mb`` and gathers ``--cold-batches``
   random batches taken from a permutation of all ids (each batch touches nearly every row group of the
   catalog; ``--cold-batches 0`` runs the whole permutation, i.e. every item once).  It reports its peak
   RSS (VmHWM), to compare with the cache size.

Prints a small table and ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from sharding import FeatureStore, ShardWriter, StoreError, read_manifest

WRITE_CHUNK = 65536


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size (items)")
    parser.add_argument("--dim", type=int, default=384, help="total feature width over all modalities")
    parser.add_argument("--batch", type=int, default=4096, help="ids per gather")
    parser.add_argument("--cache-mb", type=int, default=256, help="store cache for the cold-RSS run")
    parser.add_argument("--workdir", default="bench_out/features", help="where the synthetic store lives")
    parser.add_argument("--warm-batches", type=int, default=200, help="timed batches per side (warm)")
    parser.add_argument("--cold-batches", type=int, default=32,
                        help="batches in the cold-RSS run, drawn from a random permutation of all ids "
                             "(each touches nearly every row group); 0 = the whole permutation")
    parser.add_argument("--seed", type=int, default=0)


def modalities_for(dim: int) -> dict[str, int]:
    """Two modalities (2/3 visual, 1/3 text) when the width allows, like a real multimodal catalog."""
    if dim < 2:
        return {"visual": dim}
    visual = max(1, (2 * dim) // 3)
    return {"visual": visual, "text": dim - visual}


def ensure_store(workdir: str, items: int, dim: int, seed: int) -> tuple[str, float, bool]:
    """Return ``(url, write_seconds, reused)``; reuses a finished store with the same shape."""
    url = os.path.join(workdir, f"store-{items}x{dim}-s{seed}")
    mods = modalities_for(dim)
    try:
        m = read_manifest(url)
        if m.num_items == items and m.modalities == mods and m.dtype == "float16":
            return url, 0.0, True
    except StoreError:
        pass
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with ShardWriter(url, mods, dtype="float16", overwrite=True) as w:
        for lo in range(0, items, WRITE_CHUNK):
            block = rng.standard_normal((min(WRITE_CHUNK, items - lo), dim), dtype=np.float32)
            chunk, off = {}, 0
            for name, d in mods.items():
                chunk[name] = block[:, off:off + d]
                off += d
            w.append(chunk)
    return url, time.perf_counter() - t0, False


def store_bytes(url: str) -> int:
    return sum(s.bytes for s in read_manifest(url).shards)


def _rate(fn, batches: list[np.ndarray], repeats: int = 3) -> float:
    """Best-of-``repeats`` batches per second of ``fn`` over ``batches``."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for ids in batches:
            fn(ids)
        best = min(best, time.perf_counter() - t0)
    return len(batches) / best


def measure_warm(url: str, batch: int, n_batches: int, seed: int) -> dict:
    """Warm throughput: store (cache holds the whole store) vs numpy fancy indexing of the full array."""
    cache_bytes = int(store_bytes(url) * 1.25) + (64 << 20)
    store = FeatureStore(url, cache_bytes=cache_bytes)
    arr = np.empty((store.num_items, store.dim), dtype=np.float16)
    for lo, hi, block in store.iter_range(0, store.num_items, 65536, dtype=np.float16):
        arr[lo:hi] = block
    rng = np.random.default_rng(seed + 1)
    batches = [rng.integers(0, store.num_items, size=batch) for _ in range(n_batches)]
    for lo in range(0, store.num_items, batch):  # warm: every row group decoded into the cache
        store.gather_concat(np.arange(lo, min(lo + batch, store.num_items)))
    if not np.array_equal(store.gather_concat(batches[0]), arr[batches[0]].astype(np.float32)):
        raise RuntimeError(f"{url}: store gather differs from the numpy copy")
    loads_before = store.cache_info()["group_loads"]
    store_rate = _rate(lambda ids: store.gather_concat(ids), batches)
    numpy_rate = _rate(lambda ids: arr[ids].astype(np.float32), batches)
    if store.cache_info()["group_loads"] != loads_before:
        raise RuntimeError("warm measurement decoded row groups: cache too small")
    return {"store_batches_per_s": store_rate, "numpy_batches_per_s": numpy_rate,
            "gather_ratio_warm": store_rate / numpy_rate, "warm_cache_mb": cache_bytes >> 20}


def measure_cold_rss(url: str, cache_mb: int, batch: int, n_batches: int, seed: int) -> dict:
    """Run ``cold_child`` in a fresh interpreter so only its own allocations count toward peak RSS."""
    code = ("import json, sys; from metammf_dist.bench.features import cold_child; "
            "print(json.dumps(cold_child(sys.argv[1], *map(int, sys.argv[2:]))))")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", code, url, str(cache_mb), str(batch), str(n_batches), str(seed)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"cold-RSS subprocess failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_rss_mb() -> float:
    """Peak RSS of this process image.  Linux: VmHWM, because getrusage's maxrss survives exec() and would
    still count the parent's memory in a freshly spawned child."""
    from metammf_dist.procmem import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def cold_child(url: str, cache_mb: int, batch: int, n_batches: int, seed: int) -> dict:
    """In a fresh process: gather random batches spread over the whole catalog; report peak RSS."""
    base = _max_rss_mb()
    store = FeatureStore(url, cache_bytes=cache_mb << 20)
    m = store.manifest
    perm = np.random.default_rng(seed + 2).permutation(store.num_items)
    if n_batches > 0:
        perm = perm[:n_batches * batch]
    touched = np.zeros((m.num_shards, -(-m.shard_size // m.row_group_size)), dtype=bool)
    t0 = time.perf_counter()
    n = 0
    for lo in range(0, len(perm), batch):
        ids = perm[lo:lo + batch]
        store.gather_concat(ids)
        touched[ids // m.shard_size, (ids % m.shard_size) // m.row_group_size] = True
        n += 1
    elapsed = time.perf_counter() - t0
    info = store.cache_info()
    total_groups = sum(-(-s.num_rows // m.row_group_size) for s in m.shards)
    return {"peak_rss_mb": round(_max_rss_mb(), 1), "base_rss_mb": round(base, 1), "cold_batches": n,
            "cold_items": int(len(perm)), "cold_batches_per_s": n / elapsed,
            "cache_held_mb": info["bytes"] / 2**20, "group_loads": info["group_loads"],
            "groups_touched": int(touched.sum()), "groups_total": total_groups}


def run(args) -> int:
    url, write_s, reused = ensure_store(args.workdir, args.items, args.dim, args.seed)
    size_mb = store_bytes(url) / 2**20
    warm = measure_warm(url, args.batch, args.warm_batches, args.seed)
    cold = measure_cold_rss(url, args.cache_mb, args.batch, args.cold_batches, args.seed)
    rows = [
        ("store", f"{url} ({size_mb:.0f} MB, {'reused' if reused else f'written in {write_s:.1f} s'})"),
        ("warm store gather", f"{warm['store_batches_per_s']:.1f} batches/s (cache {warm['warm_cache_mb']} MB "
                              "holds the whole store)"),
        ("warm numpy arr[ids]", f"{warm['numpy_batches_per_s']:.1f} batches/s (full catalog in RAM, float16)"),
        ("gather_ratio_warm", f"{warm['gather_ratio_warm']:.2f} (target >= 0.3)"),
        ("cold gather", f"{cold['cold_batches']} random batches ({cold['cold_items']} ids), touching "
                        f"{cold['groups_touched']}/{cold['groups_total']} row groups; "
                        f"{cold['cold_batches_per_s']:.2f} batches/s, {cold['group_loads']} row-group reads"),
        ("cold peak RSS", f"{cold['peak_rss_mb']:.0f} MB with cache {args.cache_mb} MB (interpreter+imports "
                          f"{cold['base_rss_mb']:.0f} MB; target <= cache + 300 MB)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"features bench: {args.items} items x {args.dim} dims, batch {args.batch}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    result = {
        "gather_ratio_warm": round(warm["gather_ratio_warm"], 4),
        "store_batches_per_s": round(warm["store_batches_per_s"], 2),
        "numpy_batches_per_s": round(warm["numpy_batches_per_s"], 2),
        "warm_mode": "cache_holds_whole_store",
        "warm_cache_mb": warm["warm_cache_mb"],
        "peak_rss_mb": cold["peak_rss_mb"],
        "base_rss_mb": cold["base_rss_mb"],
        "cache_mb": args.cache_mb,
        "cold_batches": cold["cold_batches"],
        "cold_batches_per_s": round(cold["cold_batches_per_s"], 3),
        "cold_groups_touched": cold["groups_touched"],
        "cold_groups_total": cold["groups_total"],
        "items": args.items,
        "dim": args.dim,
        "batch": args.batch,
        "store_mb": round(size_mb, 1),
        "write_s": round(write_s, 2),
    }
    print(json.dumps(result))
    return 0
