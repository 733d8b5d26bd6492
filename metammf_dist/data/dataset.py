"""The canonical dataset folder: what every importer and ``synth`` writes and everything downstream reads.

A dataset is a folder (a local path or any fsspec URL) holding:

* ``interactions.parquet`` - columns ``user`` int64, ``item`` int64, ``split`` int8 (0/1/2 = train/valid/test);
* ``features/`` - the item-feature store written by ``sharding.ShardWriter`` (row i = item i);
* ``dataset.json`` - ``num_users``, ``num_items``, interaction counts per split, ``modalities`` {name: dim},
  ``feature_dtype``, ``source``, ``split_seed`` and the format version.

Writing (``DatasetWriter`` / ``write_dataset``) is all-or-nothing: locally everything goes to a hidden temp
sibling that is renamed to OUT at the end; on object stores files go straight to OUT with ``dataset.json``
written last.  On any error the partial output is removed, so a folder with ``dataset.json`` is complete.

Reading: ``Dataset.open(path)`` validates the folder (missing files, counts vs Parquet, features vs
``dataset.json``) and gives per-split interaction arrays and the feature store.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metammf_dist.data.splits import SPLIT_CODES, SPLIT_NAMES, split_code
from metammf_dist.errors import DataError

FORMAT_NAME = "metammf-dataset"
FORMAT_VERSION = 1
META_FILE = "dataset.json"
INTERACTIONS_FILE = "interactions.parquet"
FEATURES_DIR = "features"
INTERACTIONS_SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("split", pa.int8())])
ROW_GROUP_ROWS = 1 << 20

FeatureInput = Union[Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]]]


def _resolve(path: str, storage_options: Optional[dict]):
    from sharding.fsio import describe, with_defaults

    path = os.fspath(path)
    try:
        fs, root = fsspec.core.url_to_fs(path, **with_defaults(path, storage_options))
    except Exception as exc:
        raise DataError(f"{path}: cannot open filesystem ({describe(exc)})") from None
    return fs, root.rstrip("/") or root


@contextlib.contextmanager
def _storage_errors(where: str, action: str):
    """Anything the file system or object store raises, as one DataError naming ``where`` and the cause."""
    from sharding import StoreError
    from sharding.fsio import describe

    try:
        yield
    except (DataError, StoreError):
        raise
    except Exception as exc:
        raise DataError(f"{where}: cannot {action} ({describe(exc)})") from None


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def format_source(source) -> str:
    """``{"format": "mmrec", "path": "/x"}`` -> ``"mmrec (/x)"``; strings pass through."""
    if isinstance(source, dict):
        head = source.get("format", "?")
        rest = source.get("path")
        return f"{head} ({rest})" if rest else str(head)
    return str(source)


# ============================================================================ writing
class DatasetWriter:
    """Streaming writer of a canonical dataset; use as a context manager, then ``commit(...)``.

    ``add_interactions`` and ``add_features`` may be called any number of times (chunks); features must
    arrive in item-id order and total ``num_items`` rows.  Leaving the ``with`` block without ``commit``
    (or with an exception) removes everything written.
    """

    def __init__(self, out, *, num_users: int, num_items: int, modalities: Mapping[str, int],
                 dtype: str = "float16", shard_size: int = 65536, storage_options: Optional[dict] = None,
                 overwrite: bool = False):
        from sharding import ShardWriter

        self.out = os.fspath(out)
        if int(num_users) < 1 or int(num_items) < 1:
            raise DataError(f"{self.out}: a dataset needs at least one user and one item "
                            f"(got num_users={num_users}, num_items={num_items})")
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.modalities = {str(k): int(v) for k, v in modalities.items()}
        if not self.modalities:
            raise DataError(f"{self.out}: a dataset needs at least one feature modality")
        self.dtype = dtype
        self.storage_options = dict(storage_options or {})
        self.fs, self.final_root = _resolve(self.out, storage_options)
        self.local = _is_local(self.fs)
        self.overwrite = overwrite
        with _storage_errors(self.out, "write the dataset there"):
            self._check_target(overwrite)
            if self.local:  # hidden temp sibling, renamed into place by commit()
                parent, name = os.path.split(os.path.abspath(self.final_root))
                os.makedirs(parent, exist_ok=True)
                self.root = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.makedirs(self.root)
            else:
                self.root = self.final_root
                if overwrite and self.fs.exists(self.root):  # dataset.json first: never a complete-looking mix
                    if self.fs.exists(_join(self.root, META_FILE)):
                        self.fs.rm_file(_join(self.root, META_FILE))
                    self.fs.rm(self.root, recursive=True)
        self.counts = {name: 0 for name in SPLIT_NAMES}
        self.feature_rows = 0
        self._done = False
        self._parquet = None
        self._parquet_file = None
        try:
            features_url = _join(self.root, FEATURES_DIR)
            if not self.local:  # keep the protocol (memory://, s3://) for the store's own fsspec lookup
                features_url = self.fs.unstrip_protocol(features_url)
            self._features = ShardWriter(features_url, self.modalities, dtype=dtype,
                                         shard_size=shard_size, storage_options=self.storage_options)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ target handling
    def _check_target(self, overwrite: bool) -> None:
        if self.local:
            for parent in Path(os.path.abspath(self.final_root)).parents:
                if parent.exists():
                    if not parent.is_dir():
                        raise DataError(f"{self.out}: {parent} is a file, not a folder")
                    break
        if not self.fs.exists(self.final_root):
            return
        empty = self.fs.isdir(self.final_root) and not self.fs.ls(self.final_root)
        if not empty and not overwrite:
            raise DataError(f"{self.out} already exists; pass --overwrite (overwrite=True) to replace it")

    def _replace_final(self) -> None:
        """Local: move the finished temp folder to OUT (old OUT, if any, is moved aside then deleted)."""
        old = None
        if os.path.lexists(self.final_root):
            old = f"{self.root}.old"
            os.rename(self.final_root, old)
        os.rename(self.root, self.final_root)
        if old is not None:  # what OUT was: a folder, or a file or link (--overwrite over a file)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.remove(old)

    # ------------------------------------------------------------------ appending
    def add_interactions(self, users, items, splits) -> None:
        """Append interaction rows (any order); ids and split codes are range-checked."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        splits = np.asarray(splits)
        if not (users.shape == items.shape == splits.shape and users.ndim == 1):
            raise DataError(f"{self.out}: users/items/splits must be 1-D arrays of equal length, got shapes "
                            f"{users.shape}, {items.shape}, {splits.shape}")
        if users.size == 0:
            return
        for name, ids, limit in (("user", users, self.num_users), ("item", items, self.num_items)):
            bad = (ids < 0) | (ids >= limit)
            if bad.any():
                raise DataError(f"{self.out}: {name} id {int(ids[np.argmax(bad)])} is outside "
                                f"[0, {limit}) (num_{name}s = {limit})")
        bad = ~np.isin(splits, (0, 1, 2))
        if bad.any():
            raise DataError(f"{self.out}: split code {splits[np.argmax(bad)]!r} is not 0/1/2 (train/valid/test)")
        splits = splits.astype(np.int8)
        for name, code in SPLIT_CODES.items():
            self.counts[name] += int(np.count_nonzero(splits == code))
        if self._parquet is None:
            self._parquet_file = self.fs.open(_join(self.root, INTERACTIONS_FILE), "wb")
            self._parquet = pq.ParquetWriter(self._parquet_file, INTERACTIONS_SCHEMA, compression="zstd")
        table = pa.Table.from_arrays([pa.array(users), pa.array(items), pa.array(splits)],
                                     schema=INTERACTIONS_SCHEMA)
        self._parquet.write_table(table, row_group_size=ROW_GROUP_ROWS)

    def add_features(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Append the next items' feature rows ``{modality: [rows, dim]}`` (item-id order)."""
        rows = {name: np.shape(a)[0] for name, a in chunk.items()}
        n = next(iter(rows.values()), 0)
        if self.feature_rows + n > self.num_items:
            raise DataError(f"{self.out}: more feature rows than num_items={self.num_items}")
        self._features.append(dict(chunk))
        self.feature_rows += n

    # ------------------------------------------------------------------ finishing
    def commit(self, *, source, split_seed: Optional[int] = None, extra: Optional[dict] = None) -> dict:
        """Finish features and interactions, write ``dataset.json`` last, move into place; returns the meta."""
        try:
            if self.feature_rows != self.num_items:
                raise DataError(f"{self.out}: got {self.feature_rows} feature rows for num_items={self.num_items}")
            if sum(self.counts.values()) == 0:
                raise DataError(f"{self.out}: no interactions were written")
            self._close_parquet()
            self._features.close()
            meta = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "num_users": self.num_users,
                "num_items": self.num_items,
                "interactions": dict(self.counts),
                "modalities": dict(self.modalities),
                "feature_dtype": self.dtype,
                "source": source,
                "split_seed": split_seed,
            }
            meta.update(extra or {})
            with _storage_errors(self.out, "write the dataset there"):
                with self.fs.open(_join(self.root, META_FILE), "w") as f:
                    f.write(json.dumps(meta, indent=1) + "\n")
                if self.local:
                    self._replace_final()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return meta

    def _close_parquet(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._parquet_file is not None:
            self._parquet_file.close()
            self._parquet_file = None

    def abort(self) -> None:
        """Remove everything written (temp folder locally; OUT's contents on an object store)."""
        if self._done:
            return
        self._done = True
        features = getattr(self, "_features", None)
        if features is not None:
            features.abort()
        try:
            self._close_parquet()
        except Exception:
            pass
        try:
            if self.local:
                shutil.rmtree(self.root, ignore_errors=True)
            elif self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        except Exception:  # best effort: dataset.json was never written, so nothing looks complete
            pass

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self._done:
            self.abort()
        return False


def _feature_chunks(features: FeatureInput, num_items: int, chunk_rows: int = 16384):
    """Whole arrays ``{modality: [num_items, dim]}`` -> chunks; an iterable of chunks passes through."""
    if isinstance(features, Mapping):
        for lo in range(0, num_items, chunk_rows):
            yield {name: a[lo:lo + chunk_rows] for name, a in features.items()}
    else:
        yield from features


def write_dataset(out, users, items, splits, num_users: int, num_items: int, features: FeatureInput,
                  modalities: Mapping[str, int], source, split_seed: Optional[int], dtype: str = "float16",
                  shard_size: int = 65536, *, storage_options: Optional[dict] = None, overwrite: bool = False,
                  extra: Optional[dict] = None) -> dict:
    """Write a complete canonical dataset in one call (features: whole arrays or an iterable of chunks)."""
    with DatasetWriter(out, num_users=num_users, num_items=num_items, modalities=modalities, dtype=dtype,
                       shard_size=shard_size, storage_options=storage_options, overwrite=overwrite) as w:
        w.add_interactions(users, items, splits)
        for chunk in _feature_chunks(features, num_items):
            w.add_features(chunk)
        return w.commit(source=source, split_seed=split_seed, extra=extra)


# ============================================================================ reading
class Dataset:
    """A validated canonical dataset; open with ``Dataset.open(path)``."""

    def __init__(self, path: str, fs, root: str, meta: dict, storage_options: Optional[dict]):
        self.path = path
        self._fs = fs
        self._root = root
        self._meta = meta
        self._storage_options = dict(storage_options or {})

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, storage_options: Optional[dict] = None) -> "Dataset":
        path = os.fspath(path)
        fs, root = _resolve(path, storage_options)
        with _storage_errors(path, "read the dataset"):
            return cls._open(path, fs, root, storage_options)

    @classmethod
    def _open(cls, path: str, fs, root: str, storage_options: Optional[dict]) -> "Dataset":
        from sharding import read_manifest

        meta_path = _join(root, META_FILE)
        meta_url = _join(path, META_FILE)
        if not fs.exists(meta_path):
            hint = "no such folder" if not fs.exists(root) else "not a canonical dataset, or its write did not finish"
            raise DataError(f"{meta_url} not found ({hint})")
        try:
            with fs.open(meta_path, "r") as f:
                meta = json.load(f)
        except ValueError as exc:
            raise DataError(f"{meta_url}: not valid JSON ({exc})") from None
        _check_meta(meta, meta_url)
        inter_path = _join(root, INTERACTIONS_FILE)
        inter_url = _join(path, INTERACTIONS_FILE)
        if not fs.exists(inter_path):
            raise DataError(f"{inter_url} not found (the dataset folder is incomplete)")
        try:
            with fs.open(inter_path, "rb") as f:
                pf = pq.ParquetFile(f)
                schema, rows = pf.schema_arrow, pf.metadata.num_rows
        except Exception as exc:
            raise DataError(f"{inter_url}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        for field in INTERACTIONS_SCHEMA:
            if field.name not in schema.names:
                raise DataError(f"{inter_url}: missing column '{field.name}'")
        expected = sum(meta["interactions"].values())
        if rows != expected:
            raise DataError(f"{inter_url} has {rows:,} rows but {META_FILE} counts {expected:,} interactions")
        manifest = read_manifest(_join(path, FEATURES_DIR), storage_options=storage_options)
        if manifest.num_items != meta["num_items"]:
            raise DataError(f"{_join(path, FEATURES_DIR)} holds {manifest.num_items:,} items but {META_FILE} "
                            f"says num_items={meta['num_items']:,}")
        if dict(manifest.modalities) != dict(meta["modalities"]):
            raise DataError(f"{_join(path, FEATURES_DIR)} has modalities {dict(manifest.modalities)} but "
                            f"{META_FILE} says {meta['modalities']}")
        return cls(path, fs, root, meta, storage_options)

    # ------------------------------------------------------------------ metadata
    @property
    def meta(self) -> dict:
        return dict(self._meta)

    @property
    def num_users(self) -> int:
        return int(self._meta["num_users"])

    @property
    def num_items(self) -> int:
        return int(self._meta["num_items"])

    @property
    def modalities(self) -> dict:
        return dict(self._meta["modalities"])

    @property
    def feat_dim(self) -> int:
        return int(sum(self._meta["modalities"].values()))

    def num_interactions(self, split: Optional[str] = None) -> int:
        counts = self._meta["interactions"]
        return int(sum(counts.values())) if split is None else int(counts[SPLIT_NAMES[split_code(split)]])

    def summary(self) -> dict:
        counts = {name: int(self._meta["interactions"][name]) for name in SPLIT_NAMES}
        total = sum(counts.values())
        return {
            "path": self.path,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "interactions": counts,
            "num_interactions": total,
            "density": total / (self.num_users * self.num_items),
            "modalities": self.modalities,
            "feat_dim": self.feat_dim,
            "feature_dtype": self._meta["feature_dtype"],
            "source": self._meta.get("source"),
            "split_seed": self._meta.get("split_seed"),
        }

    # ------------------------------------------------------------------ data
    def interactions(self, split: str, users: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` int64 arrays of one split, in file order.  Read from the Parquet file one batch of
        rows at a time and never cached: a process holds the pairs it asked for, not the whole table (at 100M
        interactions that table was 3.5 GiB on every rank).  ``users``: a boolean mask over the user ids; only
        the pairs of those users are kept (e.g. the users an evaluation ranks)."""
        code = split_code(split)
        if users is not None:
            users = np.asarray(users, dtype=bool)
            if users.shape != (self.num_users,):
                raise ValueError(f"users mask must have shape ({self.num_users},), got {users.shape}")
        total = None if users is not None else self.num_interactions(split)
        out_u = np.empty(total or 0, dtype=np.int64)
        out_i = np.empty(total or 0, dtype=np.int64)
        parts_u, parts_i, filled = [], [], 0
        for u, i in self._split_groups(code):
            if users is not None:
                mine = users[u]
                parts_u.append(u[mine].astype(np.int64, copy=False))
                parts_i.append(i[mine].astype(np.int64, copy=False))
                continue
            if filled + u.size > total:
                raise DataError(f"{_join(self.path, INTERACTIONS_FILE)}: more '{SPLIT_NAMES[code]}' rows than "
                                f"{META_FILE} counts ({total:,})")
            out_u[filled:filled + u.size], out_i[filled:filled + u.size] = u, i
            filled += u.size
        if users is not None:
            empty = np.zeros(0, dtype=np.int64)
            return (np.concatenate(parts_u) if parts_u else empty), (np.concatenate(parts_i) if parts_i else empty)
        if filled != total:
            raise DataError(f"{_join(self.path, INTERACTIONS_FILE)}: {filled:,} '{SPLIT_NAMES[code]}' rows but "
                            f"{META_FILE} counts {total:,}")
        return out_u, out_i

    def split_users(self, split: str) -> np.ndarray:
        """The users with a pair in ``split``, ascending (``np.unique`` of its user column), streamed: a mask over
        the user ids, never the split's pairs."""
        seen = np.zeros(self.num_users, dtype=bool)
        for u, _ in self._split_groups(split_code(split)):
            seen[u] = True
        return np.flatnonzero(seen)

    def _split_groups(self, code: int):
        """(users, items) of split ``code`` in each row group of the Parquet file, in file order.  One row group at
        a time: ``iter_batches`` reads ahead and kept ~600 MiB alive on a 100M-row file.  Arrow's memory pool
        keeps what the reads freed (66 MiB after the 2M pairs of ``bench shard``'s catalog) until told to give
        it back, which it is at the end."""
        try:
            with _storage_errors(self.path, "read the interactions"), \
                    self._fs.open(_join(self._root, INTERACTIONS_FILE), "rb") as f:
                pf = pq.ParquetFile(f)
                for group in range(pf.metadata.num_row_groups):
                    table = pf.read_row_group(group, columns=["user", "item", "split"], use_threads=False)
                    keep = table.column(2).to_numpy() == code
                    users, items = table.column(0).to_numpy()[keep], table.column(1).to_numpy()[keep]
                    del table
                    yield users, items
        finally:
            pa.default_memory_pool().release_unused()

    def feature_store(self, cache_mb: int = 512, verify: bool = True):
        """The item-feature store (``sharding.FeatureStore``) under ``features/``."""
        from sharding import FeatureStore

        return FeatureStore(_join(self.path, FEATURES_DIR), cache_bytes=int(cache_mb) << 20, verify=verify,
                            storage_options=self._storage_options or None)

    def __repr__(self) -> str:
        return f"Dataset({self.path!r}, users={self.num_users}, items={self.num_items}, dim={self.feat_dim})"


def _check_meta(meta, url: str) -> None:
    if not isinstance(meta, dict):
        raise DataError(f"{url}: expected a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise DataError(f"{url}: field 'format' is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"{url}: field 'version' is {version!r}; this code reads version <= {FORMAT_VERSION}")
    for key in ("num_users", "num_items"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{url}: field '{key}' must be a positive integer, got {value!r}")
    counts = meta.get("interactions")
    if not isinstance(counts, dict) or any(not isinstance(counts.get(n), int) for n in SPLIT_NAMES):
        raise DataError(f"{url}: field 'interactions' must give integer counts for {', '.join(SPLIT_NAMES)}")
    mods = meta.get("modalities")
    if not isinstance(mods, dict) or not mods or any(not isinstance(d, int) or d < 1 for d in mods.values()):
        raise DataError(f"{url}: field 'modalities' must map modality names to positive dims, got {mods!r}")
    if not isinstance(meta.get("feature_dtype"), str):
        raise DataError(f"{url}: field 'feature_dtype' is missing")
