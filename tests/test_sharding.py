"""Sharded feature store: round trips, layout, cache behaviour, integrity errors, pickling, benchmark.

Local-disk and memory:// stores (the S3 path is in test_sharding_s3.py).  Everything runs in seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import pickle
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sharding import (FeatureStore, ManifestError, ShardIntegrityError, ShardWriter, StoreError, read_manifest,
                      write_store)


def _features(n=1000, dims=(("visual", 12), ("text", 5)), seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(n, d)).astype(np.float32) for name, d in dims}


def _concat(features, ids, dtype=np.float32):
    return np.concatenate([a[ids] for a in features.values()], axis=1).astype(dtype)


@pytest.fixture
def store_dir(tmp_path):
    """A float32 store of 1000 items: shards of 300 (last one 100), row groups of 64."""
    feats = _features()
    url = str(tmp_path / "store")
    write_store(url, feats, dtype="float32", shard_size=300, row_group_size=64, chunk_rows=77)
    return url, feats


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_random_ids_with_duplicates(tmp_path, dtype):
    feats = _features(n=777)
    url = str(tmp_path / "s")
    m = write_store(url, feats, dtype=dtype, shard_size=256, row_group_size=32)
    assert m.dtype == dtype and m.num_items == 777 and list(m.modalities) == ["visual", "text"]
    store = FeatureStore(url)
    ids = np.random.default_rng(1).integers(0, 777, size=2000)  # many duplicates, any order
    ids[:3] = [776, 0, 776]
    got = store.gather(ids)
    for name, a in feats.items():
        expect = a[ids] if dtype == "float32" else a[ids].astype(np.float16).astype(np.float32)
        assert got[name].dtype == np.float32 and np.array_equal(got[name], expect)
    concat = store.gather_concat(ids)
    assert concat.shape == (2000, 17) and store.dim == 17
    assert np.array_equal(concat, np.concatenate([got["visual"], got["text"]], axis=1))
    raw = store.gather_concat(ids, dtype=np.float16 if dtype == "float16" else np.float32)
    assert np.array_equal(raw, _concat(feats, ids, np.dtype(dtype)))


def test_gather_keeps_id_shape_and_accepts_lists(store_dir):
    url, feats = store_dir
    store = FeatureStore(url)
    ids = np.array([[5, 999], [300, 299]])
    assert store.gather_concat(ids).shape == (2, 2, 17)
    assert np.array_equal(store.gather_concat(ids)[1, 0], _concat(feats, [300])[0])
    assert np.array_equal(store.gather_concat([3, 1]), _concat(feats, [3, 1]))
    assert store.gather_concat([]).shape == (0, 17)
    assert store.gather(np.array([], dtype=np.int64))["text"].shape == (0, 5)


def test_multiple_shards_and_ragged_last_shard(store_dir):
    url, _ = store_dir
    m = read_manifest(url)
    assert [(s.file, s.start, s.stop) for s in m.shards] == [
        ("shard-00000.parquet", 0, 300), ("shard-00001.parquet", 300, 600),
        ("shard-00002.parquet", 600, 900), ("shard-00003.parquet", 900, 1000)]
    assert m.shards[3]["stop"] == 1000  # dict-style access works too
    assert sorted(os.listdir(url)) == ["manifest.json"] + [s.file for s in m.shards]
    sizes = [pq.ParquetFile(os.path.join(url, "shard-00000.parquet")).metadata.row_group(i).num_rows
             for i in range(5)]
    assert sizes == [64, 64, 64, 64, 44]
    last = pq.ParquetFile(os.path.join(url, "shard-00003.parquet"))
    assert [last.metadata.row_group(i).num_rows for i in range(last.num_row_groups)] == [64, 36]
    for s in m.shards:
        assert os.path.getsize(os.path.join(url, s.file)) == s.bytes
    schema = last.schema_arrow
    assert schema.field("item").type == pa.int64()
    assert m.encoding == "binary"  # one 12 x float32 little-endian vector per row
    assert schema.field("visual").type == pa.binary(48) and schema.field("text").type == pa.binary(20)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_list_encoding_and_old_manifests_read_the_same(tmp_path, dtype):
    """``encoding="list"`` (FixedSizeList columns; manifests from before the field) gathers the same values as
    the default binary encoding; a manifest whose encoding does not match the files is a named error."""
    feats = _features(n=300)
    ids = np.random.default_rng(1).integers(0, 300, 200)
    gathered = {}
    for encoding in ("binary", "list"):
        url = str(tmp_path / encoding)
        write_store(url, feats, dtype=dtype, shard_size=128, row_group_size=32, encoding=encoding)
        gathered[encoding] = FeatureStore(url, cache_bytes=4096).gather_concat(ids)
        t = pq.ParquetFile(os.path.join(url, "shard-00000.parquet")).schema_arrow.field("visual").type
        assert (pa.types.is_fixed_size_binary(t) if encoding == "binary" else t.list_size == 12)
    assert np.array_equal(gathered["binary"], gathered["list"])
    assert np.array_equal(gathered["list"], _concat(feats, ids, np.dtype(dtype)).astype(np.float32))
    # an old manifest (no "encoding" field) over list files reads as before
    manifest = os.path.join(tmp_path, "list", "manifest.json")
    doc = json.loads(open(manifest).read())
    del doc["encoding"]
    open(manifest, "w").write(json.dumps(doc))
    assert np.array_equal(FeatureStore(str(tmp_path / "list")).gather_concat(ids), gathered["list"])
    # claiming binary over list files: the shard and modality are named
    doc["encoding"] = "binary"
    open(manifest, "w").write(json.dumps(doc))
    with pytest.raises(ShardIntegrityError, match=r"shard-00000.parquet.*modality 'visual'.*fixed_size_binary"):
        FeatureStore(str(tmp_path / "list"), verify=False).gather_concat(ids)
    doc["encoding"] = "zip"
    open(manifest, "w").write(json.dumps(doc))
    with pytest.raises(ManifestError, match="field 'encoding'"):
        FeatureStore(str(tmp_path / "list"))


def test_unaligned_shard_and_group_sizes(tmp_path):
    feats = _features(n=501)
    url = str(tmp_path / "s")
    write_store(url, feats, dtype="float32", shard_size=100, row_group_size=30, chunk_rows=7)
    store = FeatureStore(url)
    ids = np.arange(501)[::-1]
    assert np.array_equal(store.gather_concat(ids), _concat(feats, ids))


def test_memory_url_round_trip():
    feats = _features(n=300, seed=3)
    url = "memory://sharding-test/store"
    write_store(url, feats, dtype="float32", shard_size=128, row_group_size=16, overwrite=True)
    store = FeatureStore(url)
    ids = np.array([299, 0, 128, 127, 5, 5])
    assert np.array_equal(store.gather_concat(ids), _concat(feats, ids))
    store.verify_all()


# ---------------------------------------------------------------------------------------------- cache
def test_reads_only_the_row_groups_it_needs(store_dir):
    url, feats = store_dir
    store = FeatureStore(url, direct_reads=False)  # row-group reads through the cache
    ids = np.array([3, 70, 5, 650])  # shard 0 groups 0 and 1; shard 2 group 0
    assert np.array_equal(store.gather_concat(ids), _concat(feats, ids))
    info = store.cache_info()
    assert info["groups"] == [(0, 0), (0, 1), (2, 0)] and info["group_loads"] == 3
    store.gather_concat([60, 2, 610])  # all resident: no new reads
    assert store.cache_info()["group_loads"] == 3


def test_lru_respects_byte_bound_and_evicts_least_recent(store_dir):
    url, feats = store_dir
    group_bytes = 64 * 17 * 4
    store = FeatureStore(url, cache_bytes=3 * group_bytes + 100, direct_reads=False)
    assert store.cache_info()["capacity_bytes"] == 3 * group_bytes
    for item in (0, 64, 128):  # groups (0,0) (0,1) (0,2)
        store.gather_concat([item])
    store.gather_concat([1])  # (0,0) is now most recent; (0,1) least
    store.gather_concat([192])  # load (0,3): evicts (0,1)
    info = store.cache_info()
    assert info["groups"] == [(0, 0), (0, 2), (0, 3)]
    assert info["bytes"] == 3 * group_bytes <= store.cache_bytes
    # A request touching more groups than fit is served in passes, still exact and still bounded.
    ids = np.random.default_rng(5).integers(0, 1000, size=3000)
    assert np.array_equal(store.gather_concat(ids), _concat(feats, ids))
    assert np.array_equal(store.gather(ids)["text"], feats["text"][ids])
    assert store.cache_info()["bytes"] <= store.cache_bytes


def test_iter_range_streams_without_filling_cache(store_dir):
    url, feats = store_dir
    store = FeatureStore(url, direct_reads=False)
    store.gather_concat([70])  # one cached group is reused, the rest is streamed
    parts = list(store.iter_range(10, 995, 128))
    assert [(lo, hi) for lo, hi, _ in parts][:2] == [(10, 138), (138, 266)] and parts[-1][1] == 995
    assert np.array_equal(np.concatenate([p for _, _, p in parts]), _concat(feats, np.arange(10, 995)))
    assert store.cache_info()["groups"] == [(0, 1)]
    assert list(store.iter_range(5, 5, 10)) == []
    with pytest.raises(StoreError, match="iter_range"):
        next(store.iter_range(0, 1001, 10))


def test_concurrent_threads_get_correct_rows(store_dir):
    url, feats = store_dir
    store = FeatureStore(url, cache_bytes=4 * 64 * 17 * 4)  # tiny cache: constant eviction
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            ids = rng.integers(0, 1000, size=50)
            if not np.array_equal(store.gather_concat(ids), _concat(feats, ids)):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------------------------- writer rules
def test_manifest_written_last_and_absent_after_exception(tmp_path):
    url = str(tmp_path / "s")
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(url, {"v": 4}, shard_size=10, row_group_size=4) as w:
            w.append({"v": np.ones((25, 4))})
            # two full shards are already on disk, but nothing looks complete yet
            assert "shard-00001.parquet" in os.listdir(url) and "manifest.json" not in os.listdir(url)
            raise RuntimeError("boom")
    assert not os.path.exists(os.path.join(url, "manifest.json"))
    assert os.listdir(url) == []  # partial shards removed
    with pytest.raises(ManifestError, match="manifest"):
        FeatureStore(url)


def test_streaming_writer_buffers_at_most_a_row_group(tmp_path):
    url = str(tmp_path / "s")
    with ShardWriter(url, {"v": 2}, dtype="float32", shard_size=50, row_group_size=8) as w:
        for lo in range(0, 103, 13):
            n = min(13, 103 - lo)
            w.append({"v": np.arange(lo, lo + n, dtype=np.float32)[:, None].repeat(2, axis=1)})
            assert w._pending is None or len(w._pending["v"]) < 8
    m = w.close()
    assert m.num_items == 103 and [s.stop for s in m.shards] == [50, 100, 103]
    assert np.array_equal(FeatureStore(url).gather_concat([102, 0, 51])[:, 0], [102, 0, 51])


@pytest.mark.parametrize("bad, what", [(np.nan, "not finite"), (np.inf, "not finite"), (1e9, "overflows float16")])
def test_non_finite_values_rejected_naming_modality_and_item(tmp_path, bad, what):
    with pytest.raises(StoreError, match=rf"modality 'text', item 37: value .* {what}"):
        with ShardWriter(str(tmp_path / "s"), {"visual": 3, "text": 2}) as w:
            w.append({"visual": np.zeros((30, 3)), "text": np.zeros((30, 2))})
            text = np.zeros((10, 2))
            text[7, 1] = bad
            w.append({"visual": np.zeros((10, 3)), "text": text})
    assert not os.path.exists(tmp_path / "s" / "manifest.json")


def test_bad_chunks_rejected(tmp_path):
    url = str(tmp_path / "s")
    w = ShardWriter(url, {"visual": 3, "text": 2})
    with pytest.raises(StoreError, match=r"'text' has 4 rows but 'visual' has 5"):
        w.append({"visual": np.zeros((5, 3)), "text": np.zeros((4, 2))})
    with pytest.raises(StoreError, match=r"missing \['text'\], unexpected \['audio'\]"):
        w.append({"visual": np.zeros((5, 3)), "audio": np.zeros((5, 2))})
    with pytest.raises(StoreError, match=r"modality 'visual'.*shape \(5, 4\); expected \(rows, 3\)"):
        w.append({"visual": np.zeros((5, 4)), "text": np.zeros((5, 2))})
    w.abort()
    with pytest.raises(StoreError, match="different item counts"):
        write_store(url, {"a": np.zeros((5, 3)), "b": np.zeros((6, 3))})
    with pytest.raises(StoreError, match="no rows"):
        with ShardWriter(url, {"a": 1}):
            pass
    with pytest.raises(StoreError, match="dtype 'int8'"):
        ShardWriter(url, {"a": 1}, dtype="int8")
    with pytest.raises(StoreError, match="'item' is reserved"):
        ShardWriter(url, {"item": 1})


def test_existing_store_needs_overwrite(store_dir):
    url, _ = store_dir
    with pytest.raises(StoreError, match="already exists.*overwrite=True"):
        ShardWriter(url, {"v": 2})
    write_store(url, {"v": np.ones((10, 2))}, overwrite=True, shard_size=8)
    assert sorted(os.listdir(url)) == ["manifest.json", "shard-00000.parquet", "shard-00001.parquet"]
    assert FeatureStore(url).num_items == 10


def test_bad_ids_rejected_naming_the_id(store_dir):
    url, _ = store_dir
    store = FeatureStore(url)
    with pytest.raises(StoreError, match=r"item id 1000 out of range \[0, 1000\)"):
        store.gather([1, 1000])
    with pytest.raises(StoreError, match="item id -3 out of range"):
        store.gather_concat(np.array([-3, 4]))
    with pytest.raises(StoreError, match="must be integers"):
        store.gather([1.5])


# ---------------------------------------------------------------------------------------------- integrity
def _shard_path(url, i=1):
    return os.path.join(url, f"shard-{i:05d}.parquet")


def test_truncated_shard(store_dir):
    url, _ = store_dir
    path = _shard_path(url)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    store = FeatureStore(url, verify=False)
    store.gather([0])  # other shards still work
    with pytest.raises(ShardIntegrityError, match=r"shard-00001\.parquet: .*truncated"):
        store.gather([350])


def test_altered_byte(store_dir):
    url, _ = store_dir
    path = _shard_path(url)
    with open(path, "r+b") as f:
        f.seek(2000)
        byte = f.read(1)
        f.seek(2000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ShardIntegrityError, match=r"shard-00001\.parquet: sha256 .* does not match"):
        FeatureStore(url).gather([350])
    with pytest.raises(ShardIntegrityError, match=r"shard-00001\.parquet"):
        FeatureStore(url, verify=False).verify_all()


def test_schema_drift_detected_even_with_matching_hash(store_dir):
    url, _ = store_dir
    path = _shard_path(url)
    drifted = str(path) + ".new"
    write_store(drifted, {"visual": np.zeros((300, 11)), "text": np.zeros((300, 5))}, dtype="float32",
                shard_size=300, row_group_size=64)
    os.replace(os.path.join(drifted, "shard-00000.parquet"), path)
    doc = json.loads(open(os.path.join(url, "manifest.json")).read())  # re-seal so only the schema differs
    new = read_manifest(drifted).shards[0]
    doc["shards"][1].update(bytes=new.bytes, sha256=new.sha256)
    open(os.path.join(url, "manifest.json"), "w").write(json.dumps(doc))
    # 11 float32 values per row where the manifest says 12: fixed_size_binary[44] vs [48]
    with pytest.raises(ShardIntegrityError, match=r"shard-00001\.parquet: modality 'visual' has type "
                                                  r"fixed_size_binary\[44\].*fixed_size_binary\[48\]"):
        FeatureStore(url).gather([301])


def test_missing_shard_and_missing_or_bad_manifest(store_dir, tmp_path):
    url, _ = store_dir
    os.remove(_shard_path(url, 3))
    with pytest.raises(ShardIntegrityError, match=r"shard-00003\.parquet: shard file is missing"):
        FeatureStore(url).gather([950])
    with pytest.raises(ManifestError, match=r"nothing-here/manifest\.json: manifest not found"):
        FeatureStore(str(tmp_path / "nothing-here"))
    with open(os.path.join(url, "manifest.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ManifestError, match=r"store/manifest\.json: not valid JSON"):
        read_manifest(url)
    with open(os.path.join(url, "manifest.json"), "w") as f:
        f.write(json.dumps({"format": "metammf-feature-store", "version": 1, "num_items": 10}))
    with pytest.raises(ManifestError, match="modalities"):
        FeatureStore(url)


def test_verify_all(store_dir):
    url, _ = store_dir
    store = FeatureStore(url)
    store.verify_all()
    with open(_shard_path(url, 2), "r+b") as f:
        f.seek(-50, os.SEEK_END)
        f.write(b"\0" * 10)
    with pytest.raises(ShardIntegrityError, match=r"shard-00002\.parquet"):
        store.verify_all()


# ---------------------------------------------------------------------------------------------- processes
def test_pickle_drops_handles_and_cache(store_dir):
    url, feats = store_dir
    store = FeatureStore(url)
    store.gather_concat(np.arange(0, 1000, 50))
    blob = pickle.dumps(store)
    assert len(blob) < 20_000  # manifest and settings only
    clone = pickle.loads(blob)
    assert clone.cache_info()["groups"] == [] and clone.cache_info()["group_loads"] == 0
    ids = np.array([999, 1, 333])
    assert np.array_equal(clone.gather_concat(ids), _concat(feats, ids))


def _child_gather(store, ids, queue):
    queue.put(store.gather_concat(ids))


def test_forked_child_reopens_its_own_handles(store_dir):
    url, feats = store_dir
    store = FeatureStore(url)
    store.gather_concat([1, 400])  # parent has open handles and a warm cache
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_gather, args=(store, np.array([2, 401, 999]), queue))
    proc.start()
    got = queue.get(timeout=30)
    proc.join(timeout=30)
    assert proc.exitcode == 0 and np.array_equal(got, _concat(feats, [2, 401, 999]))


# ---------------------------------------------------------------------------------------------- benchmark
def test_features_benchmark_tiny(tmp_path):
    from metammf_dist.bench import features

    parser = argparse.ArgumentParser()
    features.add_arguments(parser)
    args = parser.parse_args(["--items", "5000", "--dim", "16", "--batch", "256", "--cache-mb", "1",
                              "--warm-batches", "5", "--cold-batches", "4", "--workdir", str(tmp_path)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert features.run(args) == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    for key in ("gather_ratio_warm", "store_batches_per_s", "numpy_batches_per_s", "peak_rss_mb", "cache_mb",
                "items", "dim"):
        assert key in result
    assert result["items"] == 5000 and result["dim"] == 16 and result["cache_mb"] == 1
    assert result["gather_ratio_warm"] > 0 and result["peak_rss_mb"] > 0
    assert result["cold_groups_touched"] == result["cold_groups_total"] == 5
    with contextlib.redirect_stdout(io.StringIO()):  # second run reuses the store
        features.run(args)
    assert len(os.listdir(tmp_path)) == 1


@pytest.mark.parametrize("direct", [False, True])
def test_swapped_shards_caught_by_item_column_in_parallel_reads(store_dir, direct):
    url, feats = store_dir
    a, b = _shard_path(url, 0), _shard_path(url, 1)  # full shards: same byte size
    assert os.path.getsize(a) == os.path.getsize(b)
    os.replace(a, a + ".tmp"), os.replace(b, a), os.replace(a + ".tmp", b)
    store = FeatureStore(url, verify=False, io_threads=3, direct_reads=direct)
    assert store.cache_info()["direct"] == direct
    with pytest.raises(ShardIntegrityError, match=r"shard-0000[01]\.parquet: row group \d does not hold items"):
        store.gather_concat(np.arange(0, 600, 7))  # 10 missing groups -> read by 2-3 threads
    ok = np.arange(600, 1000, 3)  # the failed request left the cache consistent
    assert np.array_equal(store.gather_concat(ok), _concat(feats, ok))
    info = store.cache_info()
    assert info["direct"] == direct
    if not direct:
        assert all(s >= 2 for s, _ in info["groups"]) and info["bytes"] == len(info["groups"]) * 64 * 17 * 4


def test_direct_row_reads_equal_row_group_reads_and_fall_back(tmp_path):
    """Direct (pread) gathers equal decoded ones for every row, dtype and odd shapes; stores whose chunks are
    not one plain page (here: compressed) fall back to row-group reads, and say why."""
    for dtype in ("float16", "float32"):
        feats = _features(n=777, dims=(("visual", 12), ("audio", 3), ("text", 5)))
        url = str(tmp_path / dtype)
        write_store(url, feats, dtype=dtype, shard_size=250, row_group_size=40, chunk_rows=33)
        ids = np.concatenate([np.arange(777), np.random.default_rng(2).integers(0, 777, (500,))])
        direct, decoded = FeatureStore(url, direct_reads=True), FeatureStore(url, direct_reads=False)
        assert not FeatureStore(url).cache_info()["direct"]  # auto: the default cache holds this store
        assert FeatureStore(url, cache_bytes=4096).cache_info()["direct"]  # ... this one does not
        assert np.array_equal(direct.gather_concat(ids), decoded.gather_concat(ids))
        assert np.array_equal(direct.gather_concat(ids[:1260].reshape(-1, 7)),
                              decoded.gather_concat(ids[:1260]).reshape(-1, 7, 20))
        d_parts, r_parts = direct.gather(ids[:50], dtype=np.float64), decoded.gather(ids[:50], dtype=np.float64)
        assert all(np.array_equal(d_parts[k], r_parts[k]) for k in feats)
        assert direct.cache_info()["direct"] and direct.cache_info()["groups"] == []  # no slab used
        assert np.array_equal(direct.gather_concat(ids), _concat(feats, ids, np.dtype(dtype)).astype(np.float32))
    url = str(tmp_path / "zstd")
    write_store(url, feats, dtype="float16", shard_size=250, row_group_size=40, compression="zstd")
    store = FeatureStore(url, direct_reads=True)
    assert np.array_equal(store.gather_concat(ids), _concat(feats, ids, np.float16).astype(np.float32))
    info = store.cache_info()
    assert not info["direct"] and "ZSTD" in info["direct_why"] and "shard-00000.parquet" in info["direct_why"]
