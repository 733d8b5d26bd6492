"""Sharded item-feature store: Parquet shards + a JSON manifest on any fsspec URL (local, memory://, s3://).

Write with ``ShardWriter`` (streaming) or ``write_store`` (whole arrays); read with ``FeatureStore``
(row-group random access, byte-bounded LRU cache, sha256 verification).  No torch dependency.
"""
from .errors import ManifestError, ShardIntegrityError, StoreError
from .manifest import Manifest, ShardInfo
from .reader import FeatureStore, read_manifest
from .writer import ShardWriter, write_store

__all__ = ["ShardWriter", "FeatureStore", "write_store", "read_manifest", "StoreError", "ManifestError",
           "ShardIntegrityError", "Manifest", "ShardInfo"]
