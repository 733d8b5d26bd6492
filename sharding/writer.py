"""Streaming writer for the sharded item-feature store.

``ShardWriter`` takes rows in item-id order, a chunk at a time, and writes ``shard-NNNNN.parquet`` files of
``shard_size`` items each (the last one shorter).  Each shard has an int64 ``item`` column plus one column
per modality — ``encoding="binary"`` (default): FIXED_LEN_BYTE_ARRAY of ``dim x dtype`` little-endian bytes
per row; ``"list"``: ``FixedSizeList<float16|float32>[dim]`` (see ``manifest``) — in row groups of
``row_group_size`` rows so the reader can fetch single groups.  At most one row group per modality is
buffered between ``append`` calls, so catalogs larger than RAM stream straight to storage.  Shards are hashed (sha256) while they stream out.

``manifest.json`` is written LAST by ``close()`` (local: temp name then rename; object store: one PUT).  If
the ``with`` block raises, the partial shards are removed and no manifest exists, so nothing looks complete.
"""
from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import fsio
from .errors import StoreError
from .manifest import DTYPES, ENCODINGS, ITEM_COLUMN, MANIFEST_NAME, SCHEMA_VERSION, Manifest, ShardInfo, shard_file_name

_ARROW_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


class _OpenShard:
    """The shard currently being written: Parquet writer over a hashing sink."""

    def __init__(self, fs, index: int, root: str, start: int, local: bool):
        self.index = index
        self.start = start
        self.rows = 0
        self.final_path = fsio.join(root, shard_file_name(index))
        # Local files go to a temp name and are renamed when complete; object stores get the final key.
        self.path = f"{self.final_path}.tmp-{uuid.uuid4().hex[:8]}" if local else self.final_path
        self.sink = fsio.HashingWriter(fs.open(self.path, "wb"))
        self.writer = None  # created on the first row group (needs the schema)


class ShardWriter:
    """Write a feature store at ``url``; use as a context manager or call ``close()``.

    ``modalities`` maps name -> dim, in the order the columns (and ``gather_concat``) will use.
    """

    def __init__(self, url: str, modalities: dict[str, int], *, dtype: str = "float16", shard_size: int = 65536,
                 row_group_size: int = 1024, storage_options: dict | None = None, overwrite: bool = False,
                 compression: str = "none", encoding: str = "binary"):
        self.url = url
        self._check_args(modalities, dtype, shard_size, row_group_size)
        if encoding not in ENCODINGS:
            raise StoreError(f"{url}: encoding {encoding!r} is not one of {ENCODINGS}")
        self.encoding = encoding
        self.modalities = {str(k): int(v) for k, v in modalities.items()}
        self.dtype = dtype
        self.shard_size = int(shard_size)
        self.row_group_size = int(row_group_size)
        self._np_dtype = np.dtype(dtype)
        self._compression = compression
        # Required (non-nullable) fields: NaN/None are rejected anyway, and Parquet decodes required nested
        # columns ~1.6x faster than nullable ones (no definition levels).
        self._np_le = np.dtype(dtype).newbyteorder("<")
        self._widest = max(self.modalities.values()) * self._np_le.itemsize
        if encoding == "binary":
            self._column_types = {name: pa.binary(dim * self._np_le.itemsize) for name, dim in self.modalities.items()}
        else:
            self._column_types = {name: pa.list_(pa.field("element", _ARROW_TYPES[dtype], nullable=False), dim)
                                for name, dim in self.modalities.items()}
        self._schema = pa.schema([pa.field(ITEM_COLUMN, pa.int64(), nullable=False)] + [
            pa.field(name, t, nullable=False) for name, t in self._column_types.items()])
        self._fs, self._root = fsio.resolve(url, storage_options)
        self._local = fsio.is_local(self._fs)
        self._accepted = 0  # rows accepted by append (next item id)
        self._pending: dict[str, np.ndarray] | None = None  # < one row group of accepted, unwritten rows
        self._shards: list[ShardInfo] = []
        self._current: _OpenShard | None = None
        self._manifest: Manifest | None = None
        self._aborted = False
        with fsio.store_errors(url, "prepare the store for writing"):
            self._prepare_target(overwrite)

    # ------------------------------------------------------------------ setup
    def _check_args(self, modalities, dtype, shard_size, row_group_size) -> None:
        if not isinstance(modalities, dict) or not modalities:
            raise StoreError(f"{self.url}: modalities must be a non-empty dict name -> dim, got {modalities!r}")
        for name, dim in modalities.items():
            if not isinstance(name, str) or not name or name == ITEM_COLUMN:
                raise StoreError(f"{self.url}: invalid modality name {name!r} ('{ITEM_COLUMN}' is reserved)")
            if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
                raise StoreError(f"{self.url}: modality {name!r} has invalid dim {dim!r} (need an integer >= 1)")
        if dtype not in DTYPES:
            raise StoreError(f"{self.url}: dtype {dtype!r} not supported; use one of {DTYPES}")
        for field, value in (("shard_size", shard_size), ("row_group_size", row_group_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise StoreError(f"{self.url}: {field} must be an integer >= 1, got {value!r}")

    def _prepare_target(self, overwrite: bool) -> None:
        manifest_path = fsio.join(self._root, MANIFEST_NAME)
        if self._fs.exists(manifest_path):
            if not overwrite:
                raise StoreError(f"{fsio.url_of(self.url, MANIFEST_NAME)}: a store already exists here; "
                                 "pass overwrite=True to replace it")
            self._fs.rm_file(manifest_path)  # first, so a crash mid-rewrite never looks complete
            for old in self._fs.glob(fsio.join(self._root, "shard-*.parquet")):
                self._fs.rm_file(old)
        if self._local:
            self._fs.makedirs(self._root, exist_ok=True)

    # ------------------------------------------------------------------ appending
    def append(self, chunk: dict[str, np.ndarray]) -> None:
        """Append the next rows (item ids continue from the previous chunk); every modality, same row count."""
        if self._manifest is not None or self._aborted:
            raise StoreError(f"{self.url}: append() after the writer was closed")
        arrays = self._validate(chunk)
        n = next(iter(arrays.values())).shape[0]
        if n == 0:
            return
        self._accepted += n
        if self._pending is not None:
            arrays = {k: np.concatenate([self._pending[k], a]) for k, a in arrays.items()}
            self._pending = None
        with fsio.store_errors(self.url, "write shard data"):
            total = next(iter(arrays.values())).shape[0]
            pos = 0
            while total - pos >= self._rows_for_next_group():
                take = self._rows_for_next_group()
                self._write_group({k: a[pos:pos + take] for k, a in arrays.items()})
                pos += take
        if pos < total:  # keep the partial row group (copy: don't pin the caller's whole chunk)
            self._pending = {k: a[pos:].copy() for k, a in arrays.items()}

    def _validate(self, chunk) -> dict[str, np.ndarray]:
        """Check modality set, shapes, row counts and finiteness; return contiguous arrays in store dtype."""
        if not isinstance(chunk, dict):
            raise StoreError(f"{self.url}: append() expects a dict modality -> array, got {type(chunk).__name__}")
        missing = [m for m in self.modalities if m not in chunk]
        extra = [m for m in chunk if m not in self.modalities]
        if missing or extra:
            raise StoreError(f"{self.url}: chunk starting at item {self._accepted} has wrong modalities "
                             f"(missing {missing}, unexpected {extra}); expected {list(self.modalities)}")
        out: dict[str, np.ndarray] = {}
        rows = None
        for name, dim in self.modalities.items():
            src = np.asarray(chunk[name])
            if src.ndim != 2 or src.shape[1] != dim:
                raise StoreError(f"{self.url}: modality {name!r} (chunk starting at item {self._accepted}) has "
                                 f"shape {src.shape}; expected (rows, {dim})")
            if not (np.issubdtype(src.dtype, np.floating) or np.issubdtype(src.dtype, np.integer)):
                raise StoreError(f"{self.url}: modality {name!r} has non-numeric dtype {src.dtype}")
            if rows is None:
                rows, first = src.shape[0], name
            elif src.shape[0] != rows:
                raise StoreError(f"{self.url}: modality {name!r} has {src.shape[0]} rows but {first!r} has {rows} "
                                 f"(chunk starting at item {self._accepted}); all modalities need the same rows")
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_finite
                conv = np.ascontiguousarray(src, dtype=self._np_dtype)
            self._check_finite(name, src, conv)
            out[name] = conv
        return out

    def _check_finite(self, name: str, src: np.ndarray, conv: np.ndarray) -> None:
        bad_rows = ~np.isfinite(conv).all(axis=1)
        if not bad_rows.any():
            return
        row = int(np.argmax(bad_rows))
        col = int(np.argmax(~np.isfinite(conv[row])))
        value = src[row, col]
        why = "is not finite" if not np.isfinite(value) else f"overflows {self.dtype}"
        raise StoreError(f"{self.url}: modality {name!r}, item {self._accepted + row}: value {value} {why} "
                         f"(column {col})")

    def _rows_for_next_group(self) -> int:
        in_shard = self._current.rows if self._current is not None else 0
        return min(self.row_group_size, self.shard_size - in_shard)

    def _write_group(self, arrays: dict[str, np.ndarray]) -> None:
        """Write one row group (never crossing a shard boundary); finish the shard when it is full."""
        if self._current is None:
            start = self._shards[-1].stop if self._shards else 0
            self._current = _OpenShard(self._fs, len(self._shards), self._root, start, self._local)
            # one data page per column chunk (a page never fills before the row group ends): with the binary
            # encoding a row's bytes then sit at a computable offset (rows.py: direct row reads)
            page_bytes = self.row_group_size * (int(self._widest) + 8) + (1 << 16)
            self._current.writer = pq.ParquetWriter(
                self._current.sink, self._schema, compression=self._compression, use_dictionary=False,
                write_statistics=False, data_page_size=page_bytes, write_batch_size=self.row_group_size)
        cur = self._current
        n = next(iter(arrays.values())).shape[0]
        columns = [pa.array(np.arange(cur.start + cur.rows, cur.start + cur.rows + n, dtype=np.int64))]
        for name, column_type in self._column_types.items():
            if self.encoding == "binary":
                raw = np.ascontiguousarray(arrays[name], dtype=self._np_le)
                columns.append(pa.FixedSizeBinaryArray.from_buffers(column_type, n, [None, pa.py_buffer(raw)]))
            else:
                columns.append(pa.FixedSizeListArray.from_arrays(pa.array(arrays[name].reshape(-1)), type=column_type))
        cur.writer.write_table(pa.Table.from_arrays(columns, schema=self._schema))
        cur.rows += n
        if cur.rows == self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        cur = self._current
        cur.writer.close()
        cur.sink.close()
        if cur.path != cur.final_path:
            self._fs.mv(cur.path, cur.final_path)
        self._shards.append(ShardInfo(file=shard_file_name(cur.index), start=cur.start, stop=cur.start + cur.rows,
                                      bytes=cur.sink.nbytes, sha256=cur.sink.hexdigest()))
        self._current = None

    # ------------------------------------------------------------------ finishing
    def close(self) -> Manifest:
        """Flush the last rows, finish the last shard, then write ``manifest.json``; returns the Manifest."""
        if self._manifest is not None:
            return self._manifest
        if self._aborted:
            raise StoreError(f"{self.url}: close() after the write was aborted")
        if self._accepted == 0:
            self.abort()
            raise StoreError(f"{self.url}: no rows were appended; a store needs at least one item")
        try:
            with fsio.store_errors(self.url, "finish writing the store"):
                if self._pending is not None:
                    self._write_group(self._pending)
                    self._pending = None
                if self._current is not None:
                    self._finish_shard()
                manifest = Manifest(version=SCHEMA_VERSION, num_items=self._accepted, modalities=dict(self.modalities),
                                    dtype=self.dtype, shard_size=self.shard_size,
                                    row_group_size=self.row_group_size, shards=list(self._shards),
                                    encoding=self.encoding)
                manifest.check_layout(fsio.url_of(self.url, MANIFEST_NAME))
                fsio.write_bytes(self._fs, fsio.join(self._root, MANIFEST_NAME), manifest.to_json().encode())
        except BaseException:
            self.abort()
            raise
        self._manifest = manifest
        return manifest

    def abort(self) -> None:
        """Drop the write: close handles and delete every shard written so far (no manifest is written)."""
        if self._manifest is not None or self._aborted:
            return
        self._aborted = True
        self._pending = None
        cur, self._current = self._current, None
        if cur is not None:
            for closer in (cur.writer.close if cur.writer is not None else None, cur.sink.close):
                try:
                    if closer is not None:
                        closer()
                except Exception:
                    pass
            fsio.remove_quietly(self._fs, cur.path)
        for info in self._shards:
            fsio.remove_quietly(self._fs, fsio.join(self._root, info.file))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
        return False


def write_store(url: str, features: dict[str, np.ndarray], *, chunk_rows: int = 16384, **writer_kwargs) -> Manifest:
    """Write whole in-memory (or memory-mapped) arrays ``name -> [num_items, dim]`` as a store, chunk by chunk."""
    if not isinstance(features, dict) or not features:
        raise StoreError(f"{url}: features must be a non-empty dict modality -> [num_items, dim] array")
    arrays = {name: np.asarray(a) for name, a in features.items()}
    for name, a in arrays.items():
        if a.ndim != 2:
            raise StoreError(f"{url}: modality {name!r} has shape {a.shape}; expected (num_items, dim)")
    rows = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(rows.values())) != 1:
        raise StoreError(f"{url}: modalities have different item counts {rows}; all need the same rows")
    modalities = {name: a.shape[1] for name, a in arrays.items()}
    num_items = next(iter(rows.values()))
    with ShardWriter(url, modalities, **writer_kwargs) as writer:
        for lo in range(0, num_items, chunk_rows):
            writer.append({name: a[lo:lo + chunk_rows] for name, a in arrays.items()})
    return writer.close()
