"""Random-access reader for the sharded item-feature store.

``FeatureStore(url)`` reads ``manifest.json`` and then, per request, only the row groups that hold the
requested ids (``pyarrow.parquet.ParquetFile.read_row_group`` over an fsspec handle, or over a native
``pyarrow.OSFile`` for local paths).  Each row group is decoded once into the byte-bounded LRU slab cache
(``cache.SlabCache``) and gathers index that slab with numpy, no per-id Python loop.  Cache misses are
read by ``io_threads`` threads in parallel, each with its own shard handles (pyarrow releases the GIL
while reading; this also hides object-store latency).  With ``verify=True`` a shard's sha256 is streamed
and checked on first open; size, Parquet schema, dims and row counts are always checked against the
manifest.

Local stores with the ``binary`` encoding skip all of that for gathers: ``rows.py`` locates each requested
row's bytes in its shard file from the footer metadata, and a gather ``preadv``s just those bytes (no
decoding, no slab; ``direct_reads``).  Stores where that layout does not hold (other encodings, compressed
or multi-page chunks, object stores) use row-group reads; ``cache_info()["direct"]`` says which.

One lock serializes requests within a process.  The store pickles without handles or cache (DataLoader
workers each reopen their own) and notices a fork, so a forked child never reuses the parent's handles.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import fsio
from .cache import SlabCache
from .rows import chunk_values_start, pread_rows
from .errors import ManifestError, ShardIntegrityError, StoreError
from .manifest import ITEM_COLUMN, MANIFEST_NAME, Manifest

_ARROW_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


def read_manifest(url: str, storage_options: dict | None = None) -> Manifest:
    """Read and validate ``url``/manifest.json.  ManifestError if absent/invalid, StoreError if unreachable."""
    fs, root = fsio.resolve(url, storage_options)
    return _load_manifest(fs, root, url)


def _load_manifest(fs, root: str, url: str) -> Manifest:
    where = fsio.url_of(url, MANIFEST_NAME)
    with fsio.store_errors(url, "read the store manifest"):
        try:
            text = fs.cat_file(fsio.join(root, MANIFEST_NAME))
        except FileNotFoundError:
            hint = ("the store location does not exist" if fsio.is_local(fs) and not fs.exists(root)
                    else "not a feature store, or its write did not finish")
            raise ManifestError(f"{where}: manifest not found ({hint})") from None
    return Manifest.from_json(text, where)


class FeatureStore:
    """Read-only view of a store.  ``gather*`` accept any integer ids (any order, duplicates, any shape)."""

    def __init__(self, url: str, *, cache_bytes: int = 512 << 20, verify: bool = True,
                 storage_options: dict | None = None, io_threads: int | None = None,
                 direct_reads: bool | None = None):
        """``direct_reads``: gather single rows with ``pread`` where the layout allows it (local files,
        ``binary`` encoding) — None (default): when the cache cannot hold the whole store (a cache that
        does is faster once warm); True: always; False: never (decode whole row groups through the cache)."""
        self.url = url
        self.direct_reads = direct_reads
        self.cache_bytes = int(cache_bytes)
        self.verify = bool(verify)
        self.io_threads = max(1, int(io_threads if io_threads is not None else min(4, os.cpu_count() or 1)))
        self.storage_options = storage_options
        fs, root = fsio.resolve(url, storage_options)
        self.manifest = _load_manifest(fs, root, url)
        self._verified: set[int] = set()  # shards whose sha256 matched (kept across pickling)
        self._setup_layout()
        self._reset_runtime(fs, root)

    # ------------------------------------------------------------------ layout and runtime state
    def _setup_layout(self) -> None:
        m = self.manifest
        self.num_items = m.num_items
        self.modalities = dict(m.modalities)
        self.dim = m.dim
        self.dtype = m.dtype
        self._offsets = {}
        off = 0
        for name, d in self.modalities.items():
            self._offsets[name] = (off, d)
            off += d
        self._rgs = m.row_group_size
        self._groups_per_shard = -(-m.shard_size // m.row_group_size)
        self._aligned = m.shard_size % m.row_group_size == 0  # then gid = id // row_group_size
        self._gid_space = m.num_shards * self._groups_per_shard
        self._num_groups = sum(-(-s.num_rows // self._rgs) for s in m.shards)
        self._binary = m.encoding == "binary"
        self._le_dtype = np.dtype(self.dtype).newbyteorder("<")  # binary columns: little-endian values
        self._widths = np.array([d * self._le_dtype.itemsize for d in self.modalities.values()], dtype=np.int64)

    def _reset_runtime(self, fs=None, root=None) -> None:
        """(Re)create everything that must not cross a pickle or a fork: fs, handles, cache, lock."""
        if fs is None:
            fs, root = fsio.resolve(self.url, self.storage_options)
        self._fs, self._root = fs, root
        self._checked: set[int] = set()  # shards whose size/hash/schema passed in this process
        self._tls = threading.local()  # per thread: {shard index: ParquetFile}
        self._handles: list = []  # every file handle opened, for close()
        self._pool: ThreadPoolExecutor | None = None  # parallel row-group reads, created on first need
        self._cache = SlabCache(self._gid_space, self._num_groups, self._rgs, self.dim, np.dtype(self.dtype),
                                self.cache_bytes)
        self._scratch: tuple[int, np.ndarray] | None = None  # iter_range's last decoded group
        # direct row reads: per (global group, modality) the file offset of the group's row 0 (-1: not mapped)
        wanted = self.direct_reads if self.direct_reads is not None else self._cache.capacity < self._num_groups
        self._direct_ok = bool(wanted and self._binary and fsio.is_local(fs))
        self._direct_why = "" if self._direct_ok else (
            ("off" if self.direct_reads is False else "the cache holds the whole store") if not wanted
            else f"encoding {self.manifest.encoding!r}" if fsio.is_local(fs) else "not a local store")
        self._row_start = np.full((self._gid_space, len(self.modalities)), -1, dtype=np.int64)
        self._mapped: set[int] = set()  # shards whose row offsets are known
        self._fds: dict[int, int] = {}  # shard -> OS file descriptor (pread is thread-safe)
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: never share the parent's handles or lock
            self._reset_runtime()

    def __getstate__(self) -> dict:
        keep = ("url", "cache_bytes", "verify", "io_threads", "storage_options", "manifest", "_verified",
                "direct_reads")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._verified = set(self._verified)
        self._setup_layout()
        self._reset_runtime()

    def __len__(self) -> int:
        return self.num_items

    def __repr__(self) -> str:
        return (f"FeatureStore({self.url!r}, items={self.num_items}, modalities={self.modalities}, "
                f"dtype={self.dtype})")

    def close(self) -> None:
        """Close shard handles and drop the cache (the store can still be used; it reopens lazily)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            for fh in self._handles:
                try:
                    fh.close()
                except Exception:
                    pass
            for fd in self._fds.values():
                os.close(fd)
            self._reset_runtime(self._fs, self._root)

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ public reads
    def gather(self, item_ids, dtype=np.float32) -> dict[str, np.ndarray]:
        """``{modality: [*ids.shape, dim]}`` for the given ids."""
        ids, shape = self._check_ids(item_ids)
        dtype = np.dtype(dtype or self.dtype)
        self._check_process()
        direct = self._direct_gather(ids)
        if direct is not None:
            return {name: direct[:, off:off + d].astype(dtype).reshape(shape + (d,))
                    for name, (off, d) in self._offsets.items()}
        outs = {name: np.empty((len(ids), d), dtype=dtype) for name, d in self.modalities.items()}
        with self._lock:
            slab = self._cache.slab
            for pos, rows in self._plan(ids):
                for name, (off, d) in self._offsets.items():
                    outs[name][pos] = slab[rows, off:off + d]
        return {name: a.reshape(shape + (a.shape[1],)) for name, a in outs.items()}

    def gather_concat(self, item_ids, dtype=np.float32) -> np.ndarray:
        """``[*ids.shape, dim]``: modalities concatenated in manifest order."""
        ids, shape = self._check_ids(item_ids)
        dtype = np.dtype(dtype or self.dtype)
        out = None
        self._check_process()
        direct = self._direct_gather(ids)
        if direct is not None:
            return direct.astype(dtype, copy=False).reshape(shape + (self.dim,))
        with self._lock:
            slab = self._cache.slab
            for pos, rows in self._plan(ids):
                if isinstance(pos, slice):  # whole request in one pass: a single fancy index + cast
                    out = slab[rows].astype(dtype, copy=False)
                else:
                    if out is None:
                        out = np.empty((len(ids), self.dim), dtype=dtype)
                    out[pos] = slab[rows]
        if out is None:
            out = np.empty((0, self.dim), dtype=dtype)
        return out.reshape(shape + (self.dim,))

    def iter_range(self, start: int, stop: int, chunk: int, dtype=np.float32):
        """Yield ``(lo, hi, [hi - lo, dim] array)`` covering ids ``[start, stop)`` in order.

        Streams row group by row group without filling the LRU cache (a full scan would evict the hot set);
        groups that are already cached are copied from it.
        """
        if not (0 <= start <= stop <= self.num_items) or int(chunk) < 1:
            raise StoreError(f"{self.url}: iter_range({start}, {stop}, chunk={chunk}) outside [0, {self.num_items}] "
                             "or chunk < 1")
        dtype = np.dtype(dtype or self.dtype)
        for lo in range(start, stop, int(chunk)):
            hi = min(lo + int(chunk), stop)
            out = np.empty((hi - lo, self.dim), dtype=dtype)
            self._check_process()
            with self._lock:
                item = lo
                while item < hi:
                    gid, first = self._group_of(item)
                    rows = self._group_view(gid)
                    take = min(hi - item, first + len(rows) - item)
                    out[item - lo:item - lo + take] = rows[item - first:item - first + take]
                    item += take
            yield lo, hi, out

    def verify_all(self) -> None:
        """Re-hash every shard and check it against the manifest; ShardIntegrityError names the first bad one."""
        self._check_process()
        with self._lock:
            for s in range(self.manifest.num_shards):
                self._verified.discard(s)
                self._check_shard_file(s, hash_it=True)
                fh, pf = self._open_file(s)
                try:
                    self._check_schema(pf, s)
                finally:
                    fh.close()

    def cache_info(self) -> dict:
        """Cache state: bytes held / capacity, cached ``(shard, row_group)`` pairs, row groups decoded so far;
        ``direct``: whether gathers read single rows (and ``direct_why`` if not)."""
        with self._lock:
            gids = self._cache.cached_groups()
            return {
                "direct": self._direct_ok,
                "direct_why": self._direct_why,
                "bytes": self._cache.nbytes,
                "capacity_bytes": self._cache.capacity_bytes,
                "capacity_groups": self._cache.capacity,
                "groups": [(int(g) // self._groups_per_shard, int(g) % self._groups_per_shard) for g in gids],
                "group_loads": self._cache.loads,
            }

    # ------------------------------------------------------------------ direct row reads
    def _direct_gather(self, ids: np.ndarray) -> np.ndarray | None:
        """``[len(ids), dim]`` in the store dtype read row by row, or None when direct reads do not apply."""
        if not self._direct_ok or len(ids) == 0:
            return None
        gid, row = self._locate(ids)
        shards = gid // self._groups_per_shard
        with self._lock:
            for shard in np.unique(shards).tolist():
                if shard not in self._mapped and not self._map_shard(shard):
                    return None  # layout does not allow it: row-group reads from now on
            fds = [self._fds.get(s, -1) for s in range(self.manifest.num_shards)]
        offsets = self._row_start[gid] + row[:, None] * self._widths[None, :]
        out = np.empty((len(ids), self.dim), dtype=self._le_dtype)
        with fsio.store_errors(self.url, "read feature rows"):
            pread_rows(shards, offsets, self._widths, out, fds)
        return out

    def _map_shard(self, shard: int) -> bool:
        """Find row 0's file offset of every (row group, modality) of ``shard``; False (and direct reads
        off for this store) if a chunk is not one plain uncompressed page."""
        pf = self._parquet(shard)  # size / hash / schema checks on first open
        info = self.manifest.shards[shard]
        # the item column must hold the manifest's ids (catches a swapped or misplaced shard, as the decode
        # path does per row group): 8 bytes per item, read once per shard
        with fsio.store_errors(self._where(shard), "read the item column"):
            items = pf.read(columns=[ITEM_COLUMN], use_threads=False).column(0).to_numpy()
        bad = np.flatnonzero(items != np.arange(info.start, info.stop, dtype=np.int64))
        if len(items) != info.num_rows or len(bad):
            g = int(bad[0]) // self._rgs if len(bad) else 0
            first = info.start + g * self._rgs
            raise ShardIntegrityError(f"{self._where(shard)}: row group {g} does not hold items "
                                      f"[{first}, {min(first + self._rgs, info.stop)}) as the manifest says")
        path = fsio.join(self._root, info.file)
        fd = os.open(path, os.O_RDONLY)
        md = pf.metadata
        first_gid = shard * self._groups_per_shard
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            for m, (name, width) in enumerate(zip(self.modalities, self._widths.tolist())):
                start, why = chunk_values_start(fd, group.column(m + 1), group.num_rows, width)
                if start is None:
                    os.close(fd)
                    self._direct_ok = False
                    self._direct_why = f"{self._where(shard)}: row group {g}, modality {name!r}: {why}"
                    return False
                self._row_start[first_gid + g, m] = start
        self._fds[shard] = fd
        self._mapped.add(shard)
        return True

    # ------------------------------------------------------------------ id -> (group, row) planning
    def _check_ids(self, item_ids) -> tuple[np.ndarray, tuple]:
        ids = np.asarray(item_ids)
        if ids.size == 0:
            return np.zeros(0, dtype=np.int64), ids.shape
        if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
            raise StoreError(f"{self.url}: item ids must be integers, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.num_items:
            flat = ids.reshape(-1)
            bad = flat[(flat < 0) | (flat >= self.num_items)][0]
            raise StoreError(f"{self.url}: item id {bad} out of range [0, {self.num_items})")
        return ids.reshape(-1).astype(np.int64, copy=False), ids.shape

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized: global row-group id and row within the group for each id."""
        if self._aligned:
            gid = ids // self._rgs
            return gid, ids - gid * self._rgs
        shard = ids // self.manifest.shard_size
        local = ids - shard * self.manifest.shard_size
        g = local // self._rgs
        return shard * self._groups_per_shard + g, local - g * self._rgs

    def _group_of(self, item: int) -> tuple[int, int]:
        """Global group id of one item and the first item id of that group."""
        shard, local = divmod(item, self.manifest.shard_size)
        g = local // self._rgs
        return shard * self._groups_per_shard + g, shard * self.manifest.shard_size + g * self._rgs

    def _plan(self, ids: np.ndarray):
        """Yield ``(positions, slab_rows)`` passes; all groups of a pass are resident when it is yielded.

        Usually one pass (``positions`` is ``slice(None)``).  If a request touches more distinct row groups
        than the cache holds, it is served in passes of at most ``capacity`` groups each.
        """
        if len(ids) == 0:
            return
        cache = self._cache
        gid, row = self._locate(ids)
        cache.next_tick()
        slots = cache.slot_of_group[gid]
        if slots.min() >= 0:  # fast path: everything cached
            cache.touch(slots)
            yield slice(None), slots * self._rgs + row
            return
        groups, inverse = np.unique(gid, return_inverse=True)
        if len(groups) <= cache.capacity:
            self._load(groups)
            yield slice(None), cache.slot_of_group[gid] * self._rgs + row
            return
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(groups)))])
        for k in range(0, len(groups), cache.capacity):
            k_end = min(k + cache.capacity, len(groups))
            cache.next_tick()
            self._load(groups[k:k_end])
            pos = order[bounds[k]:bounds[k_end]]
            yield pos, cache.slot_of_group[gid[pos]] * self._rgs + row[pos]

    def _load(self, groups: np.ndarray) -> None:
        """Make ``groups`` (sorted, distinct, <= capacity) resident: touch hits, decode misses."""
        cache = self._cache
        slots = cache.slot_of_group[groups]
        cache.touch(slots[slots >= 0])
        missing = groups[slots < 0]
        if len(missing) == 0:
            return
        for shard in np.unique(missing // self._groups_per_shard).tolist():
            self._parquet(shard)  # size/sha256/schema checks happen here, in the calling thread
        cache.slab  # allocate before worker threads write into it
        free = cache.reserve(len(missing))
        jobs = list(zip(missing.tolist(), free.tolist()))
        n_parts = min(self.io_threads, len(jobs) // 4)
        if n_parts <= 1:
            results = [self._decode_jobs(jobs)]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="feature-store-io")
            bounds = np.linspace(0, len(jobs), n_parts + 1).astype(int)  # contiguous runs: sequential reads
            futures = [self._pool.submit(self._decode_jobs, jobs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            results = [f.result() for f in futures]
        error = None
        filled = set()
        for done, err in results:
            for gid, slot in done:
                cache.assign(slot, gid)
                filled.add(slot)
            error = error or err
        if error is not None:
            for slot in free.tolist():
                if slot not in filled:
                    cache.release(slot)
            raise error

    def _decode_jobs(self, jobs: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], BaseException | None]:
        """Decode ``(gid, slot)`` jobs in order; return the ones done and the error that stopped it, if any."""
        done = []
        for gid, slot in jobs:
            try:
                self._decode(gid, self._cache.slot_rows(slot))
            except BaseException as e:
                return done, e
            done.append((gid, slot))
        return done, None

    def _group_view(self, gid: int) -> np.ndarray:
        """Rows of one group for iter_range: from the cache if resident, else decoded into a scratch buffer."""
        slot = int(self._cache.slot_of_group[gid])
        shard, g = divmod(gid, self._groups_per_shard)
        n = min(self._rgs, self.manifest.shards[shard].num_rows - g * self._rgs)
        if slot >= 0:
            return self._cache.slot_rows(slot)[:n]
        if self._scratch is None or self._scratch[0] != gid:
            buf = self._scratch[1] if self._scratch is not None else np.empty((self._rgs, self.dim), self.dtype)
            self._scratch = None
            self._decode(gid, buf)
            self._scratch = (gid, buf)
        return self._scratch[1][:n]

    # ------------------------------------------------------------------ shard files
    def _where(self, shard: int) -> str:
        return fsio.url_of(self.url, self.manifest.shards[shard].file)

    def _decode(self, gid: int, dest: np.ndarray) -> None:
        """Read row group ``gid`` once and write its values (store dtype, modalities side by side) into dest."""
        shard, g = divmod(gid, self._groups_per_shard)
        info = self.manifest.shards[shard]
        first = info.start + g * self._rgs
        n = min(self._rgs, info.stop - first)
        pf = self._parquet(shard)
        where = self._where(shard)
        with fsio.store_errors(where, f"read row group {g}"):
            try:
                table = pf.read_row_group(g, columns=[ITEM_COLUMN, *self.modalities], use_threads=False)
            except (OSError, pa.ArrowException) as e:
                raise ShardIntegrityError(f"{where}: row group {g} is unreadable ({type(e).__name__}: {e})") from None
            items = table.column(ITEM_COLUMN)
            if table.num_rows != n or items[0].as_py() != first or items[n - 1].as_py() != first + n - 1:
                raise ShardIntegrityError(f"{where}: row group {g} does not hold items [{first}, {first + n}) "
                                          "as the manifest says")
            for name, (off, d) in self._offsets.items():
                row = 0
                for chunk in table.column(name).chunks:
                    if chunk.null_count:
                        raise ShardIntegrityError(f"{where}: modality {name!r} has nulls in row group {g}")
                    if self._binary:  # one fixed-width little-endian vector per row: a view of the data buffer
                        values = np.frombuffer(chunk.buffers()[1], dtype=self._le_dtype, count=len(chunk) * d,
                                               offset=chunk.offset * d * self._le_dtype.itemsize)
                    else:
                        values = chunk.flatten().to_numpy(zero_copy_only=False)
                    dest[row:row + len(chunk), off:off + d] = values.reshape(-1, d)
                    row += len(chunk)

    def _parquet(self, shard: int) -> pq.ParquetFile:
        """This thread's handle on a shard.  The first open in this process checks size, sha256 (if
        ``verify`` and not verified before) and the Parquet schema/row counts against the manifest."""
        files = getattr(self._tls, "files", None)
        if files is None:
            files = self._tls.files = {}
        pf = files.get(shard)
        if pf is not None:
            return pf
        first = shard not in self._checked
        if first:
            self._check_shard_file(shard, hash_it=self.verify and shard not in self._verified)
        fh, pf = self._open_file(shard)
        if first:
            try:
                self._check_schema(pf, shard)
            except BaseException:
                fh.close()
                raise
            self._checked.add(shard)
        self._handles.append(fh)
        files[shard] = pf
        return pf

    def _open_file(self, shard: int):
        """A new ``(fsspec handle, ParquetFile)`` on a shard; ShardIntegrityError if it isn't Parquet."""
        where = self._where(shard)
        path = fsio.join(self._root, self.manifest.shards[shard].file)
        with fsio.store_errors(where, "open shard"):
            if fsio.is_local(self._fs):
                # Native pread-based file: no Python in the read path, so io_threads really run in parallel.
                fh = pa.OSFile(path, "rb")
            else:  # object stores: no read-ahead; pyarrow asks for exactly the (coalesced) ranges it needs
                fh = self._fs.open(path, "rb", cache_type="none")
            try:
                return fh, pq.ParquetFile(fh, pre_buffer=True)
            except (OSError, pa.ArrowException) as e:
                fh.close()
                raise ShardIntegrityError(f"{where}: not a readable Parquet file ({type(e).__name__}: {e})") from None

    def _check_shard_file(self, shard: int, *, hash_it: bool) -> None:
        info = self.manifest.shards[shard]
        where = self._where(shard)
        path = fsio.join(self._root, info.file)
        with fsio.store_errors(where, "open shard"):
            try:
                size = self._fs.size(path)
            except FileNotFoundError:
                raise ShardIntegrityError(f"{where}: shard file is missing") from None
            if size != info.bytes:
                raise ShardIntegrityError(f"{where}: {size} bytes but the manifest says {info.bytes} "
                                          "(truncated or replaced)")
            if hash_it:
                digest, _ = fsio.sha256_of(self._fs, path)
                if digest != info.sha256:
                    raise ShardIntegrityError(f"{where}: sha256 {digest[:16]}... does not match the manifest's "
                                              f"{info.sha256[:16]}... (file altered or corrupt)")
                self._verified.add(shard)

    def _check_schema(self, pf: pq.ParquetFile, shard: int) -> None:
        """Columns, FixedSizeList dims/dtype, row count and row-group sizes must match the manifest."""
        info = self.manifest.shards[shard]
        where = self._where(shard)
        schema = pf.schema_arrow
        want = [ITEM_COLUMN, *self.modalities]
        if schema.names != want:
            raise ShardIntegrityError(f"{where}: columns {schema.names} differ from the manifest's {want}")
        if schema.field(ITEM_COLUMN).type != pa.int64():
            raise ShardIntegrityError(f"{where}: column 'item' is {schema.field(ITEM_COLUMN).type}, expected int64")
        value_type = _ARROW_TYPES[self.dtype]
        for (name, d), width in zip(self.modalities.items(), self._widths.tolist()):
            t = schema.field(name).type
            if self._binary:
                if not pa.types.is_fixed_size_binary(t) or t.byte_width != width:
                    raise ShardIntegrityError(f"{where}: modality {name!r} has type {t}; the manifest says "
                                              f"fixed_size_binary[{width}] ({d} x {self.dtype}, encoding 'binary')")
            elif not pa.types.is_fixed_size_list(t) or t.list_size != d or t.value_type != value_type:
                raise ShardIntegrityError(f"{where}: modality {name!r} has type {t}; the manifest says "
                                          f"fixed_size_list<{value_type}>[{d}]")
        md = pf.metadata
        if md.num_rows != info.num_rows:
            raise ShardIntegrityError(f"{where}: {md.num_rows} rows but the manifest says {info.num_rows}")
        want_groups = -(-info.num_rows // self._rgs)
        sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        expect = [min(self._rgs, info.num_rows - i * self._rgs) for i in range(want_groups)]
        if sizes != expect:
            raise ShardIntegrityError(f"{where}: row groups of {sizes[:4]}... rows; the manifest says groups of "
                                      f"{self._rgs}")
