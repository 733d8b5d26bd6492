"""Errors raised by the sharded feature store.

Every message names the file or URL at fault (and the modality / item id where one is involved), so a
user can fix the input without reading a traceback.
"""
from __future__ import annotations


class StoreError(Exception):
    """Base class: anything wrong with a feature store, its URL, or the data written to it."""


class ManifestError(StoreError):
    """``manifest.json`` is missing, unreadable, or does not describe a valid store."""


class ShardIntegrityError(StoreError):
    """A shard file does not match the manifest: sha256 mismatch, truncation, or schema/row-count drift."""
