"""Byte-bounded LRU cache of decoded row groups, kept in one preallocated slab.

Every row group of the store has a global id ``gid`` and at most ``group_rows`` rows.  The cache owns a
slab of ``capacity`` slots, each ``group_rows x dim`` values of the store dtype (all modalities side by
side), so ``capacity * slot_bytes <= cache_bytes``.  Because every cached row lives in the same array,
a gather is one vectorized fancy index ``slab[slot * group_rows + row_in_group]`` however many groups
it touches.  Recency is a per-slot "last used" tick: eviction takes the slots with the oldest ticks
that were not used in the current tick (the groups the current request needs are never evicted).

Not thread-safe on its own: the reader calls it under its lock.
"""
from __future__ import annotations

import numpy as np


class SlabCache:
    def __init__(self, gid_space: int, num_groups: int, group_rows: int, dim: int, dtype: np.dtype,
                 cache_bytes: int):
        self.group_rows = group_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.slot_bytes = group_rows * dim * self.dtype.itemsize
        # Never more slots than the store has groups; always at least one (a request must fit somewhere).
        self.capacity = max(1, min(num_groups, int(cache_bytes) // self.slot_bytes))
        self.capacity_bytes = self.capacity * self.slot_bytes
        self.slot_of_group = np.full(gid_space, -1, dtype=np.int64)
        self.group_of_slot = np.full(self.capacity, -1, dtype=np.int64)
        self.last_used = np.full(self.capacity, -1, dtype=np.int64)
        self.tick = 0
        self.loads = 0  # row groups decoded into the cache so far
        self._slab: np.ndarray | None = None  # allocated on first use

    @property
    def slab(self) -> np.ndarray:
        if self._slab is None:
            self._slab = np.empty((self.capacity * self.group_rows, self.dim), dtype=self.dtype)
        return self._slab

    def next_tick(self) -> None:
        self.tick += 1

    def touch(self, slots: np.ndarray) -> None:
        self.last_used[slots] = self.tick

    def reserve(self, count: int) -> np.ndarray:
        """Free ``count`` slots (empty ones first, then least recently used; never ones used this tick)."""
        candidates = np.flatnonzero(self.last_used < self.tick)
        if count > len(candidates):
            raise RuntimeError(f"cache: {count} slots needed, {len(candidates)} evictable")  # caller bug
        if count < len(candidates):
            pick = np.argpartition(self.last_used[candidates], count - 1)[:count]
            candidates = candidates[pick]
        old = self.group_of_slot[candidates]
        self.slot_of_group[old[old >= 0]] = -1
        self.group_of_slot[candidates] = -1
        self.last_used[candidates] = self.tick  # reserved for this request
        return candidates

    def slot_rows(self, slot: int) -> np.ndarray:
        """The slab rows of ``slot`` (a view to decode a row group into)."""
        return self.slab[slot * self.group_rows:(slot + 1) * self.group_rows]

    def assign(self, slot: int, gid: int) -> None:
        """Publish a slot once its row group is fully decoded."""
        self.group_of_slot[slot] = gid
        self.slot_of_group[gid] = slot
        self.loads += 1

    def release(self, slot: int) -> None:
        """Return a reserved slot that could not be filled."""
        self.last_used[slot] = -1

    def cached_groups(self) -> np.ndarray:
        return np.sort(self.group_of_slot[self.group_of_slot >= 0])

    @property
    def nbytes(self) -> int:
        """Bytes holding cached row groups (at most ``capacity_bytes``)."""
        return int((self.group_of_slot >= 0).sum()) * self.slot_bytes
