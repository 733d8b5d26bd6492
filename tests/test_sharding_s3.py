"""Sharded feature store on S3: a real moto S3 server on 127.0.0.1 (HTTP, in a thread), accessed via s3fs.

moto and s3fs are hard requirements here: if either is missing the import fails and so does the test.
"""
from __future__ import annotations

import pickle
import socket
import time

import boto3
import numpy as np
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from sharding import FeatureStore, ManifestError, ShardIntegrityError, ShardWriter, StoreError, read_manifest

BUCKET = "metammf-sharding-test"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
FAST_FAIL = {"config_kwargs": {"connect_timeout": 2, "read_timeout": 5,
                                             "retries": {"max_attempts": 1, "mode": "standard"}}}


def _options(endpoint: str) -> dict:
    return {"key": "testing", "secret": "testing", "skip_instance_cache": True,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}, **FAST_FAIL}


@pytest.fixture(scope="module")
def s3():
    """Start moto on a free local port, create the bucket; yield ``(storage_options, s3fs filesystem)``."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CREDS.items():
            mp.setenv(k, v)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            options = _options(endpoint)
            yield options, s3fs.S3FileSystem(**options)
        finally:
            server.stop()


def _features(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"visual": rng.normal(size=(n, 8)).astype(np.float32), "text": rng.normal(size=(n, 3)).astype(np.float32)}


def test_write_stream_and_gather_on_s3(s3):
    options, fs = s3
    url = f"s3://{BUCKET}/x"
    feats = _features(700)
    with ShardWriter(url, {"visual": 8, "text": 3}, dtype="float32", shard_size=256, row_group_size=32,
                     storage_options=options) as w:
        for lo in range(0, 700, 100):
            w.append({k: a[lo:lo + 100] for k, a in feats.items()})
            if lo == 300:  # one shard uploaded, no manifest yet
                names = [p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/x", refresh=True)]
                assert "shard-00000.parquet" in names and "manifest.json" not in names
    m = read_manifest(url, storage_options=options)
    assert m.num_items == 700 and [s.stop for s in m.shards] == [256, 512, 700]
    store = FeatureStore(url, storage_options=options)
    ids = np.random.default_rng(1).integers(0, 700, size=400)
    got = store.gather(ids)
    assert np.array_equal(got["visual"], feats["visual"][ids]) and np.array_equal(got["text"], feats["text"][ids])
    assert store.cache_info()["group_loads"] <= 22  # only row groups, never whole shards
    store.verify_all()
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.gather_concat([699, 0]),
                          np.concatenate([feats["visual"][[699, 0]], feats["text"][[699, 0]]], axis=1))
    blocks = [b for _, _, b in store.iter_range(0, 700, 300)]
    assert np.array_equal(np.concatenate(blocks)[:, :8], feats["visual"])


def test_s3_integrity_and_missing_manifest(s3):
    options, fs = s3
    url = f"s3://{BUCKET}/corrupt"
    with ShardWriter(url, {"v": 4}, shard_size=50, row_group_size=10, storage_options=options) as w:
        w.append({"v": np.ones((120, 4))})
    key = f"{BUCKET}/corrupt/shard-00001.parquet"
    data = bytearray(fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    store = FeatureStore(url, storage_options=options)
    assert store.gather_concat([3]).shape == (1, 4)
    with pytest.raises(ShardIntegrityError, match=r"s3://metammf-sharding-test/corrupt/shard-00001\.parquet"):
        store.gather_concat([60])
    with pytest.raises(ManifestError, match=r"s3://metammf-sharding-test/absent/manifest\.json"):
        FeatureStore(f"s3://{BUCKET}/absent", storage_options=options)
    with pytest.raises(StoreError, match="already exists"):
        ShardWriter(url, {"v": 4}, storage_options=options)


def test_unreachable_endpoint_fails_fast_naming_url():
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = _options(f"http://127.0.0.1:{port}")
    url = f"s3://{BUCKET}/x"
    t0 = time.monotonic()
    with pytest.raises(StoreError, match=r"s3://metammf-sharding-test/x: cannot .*Connect"):
        FeatureStore(url, storage_options=options)
    with pytest.raises(StoreError, match=r"s3://metammf-sharding-test/x: cannot"):
        ShardWriter(url, {"v": 2}, storage_options=options)
    assert time.monotonic() - t0 < 15
