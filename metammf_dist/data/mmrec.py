"""Importer for the MMRec layout (``metammf-dist prepare mmrec SRC OUT``).

SRC is a local folder holding

* exactly one ``<name>.inter``: tab-separated with a header; required columns ``userID itemID x_label``
  (x_label 0/1/2 = train/valid/test), other columns are ignored;
* one or more ``<modality>_feat.npy``: a 2-D numeric array per modality (``image``, ``audio``, ``text``,
  ...), row i = item i.  Modalities are stored in alphabetical order of their names.

``cold_items`` (``--cold-items FRAC``) holds a seeded fraction of the items out of train entirely
(``splits.hold_out_items``); the draw is recorded in ``dataset.json`` (``source.cold_items``, ``cold_frac``,
``split_seed``).

Ids are used as given: ``num_users = max userID + 1`` and ``num_items`` = the feature row count.  Every
check runs before anything is written, except the NaN/Inf scan, which runs while the features stream (in
chunks from memory-mapped files) into the store; a failure there removes the partial output.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from metammf_dist.data.dataset import DatasetWriter
from metammf_dist.data.splits import SPLIT_CODES, hold_out_items
from metammf_dist.errors import DataError

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
FEATURE_SUFFIX = "_feat.npy"
CHUNK_ROWS = 8192
DEFAULT_COLD_SEED = 2023
COLD_STREAM = 1  # the cold-item draw's RNG stream: default_rng([split_seed, COLD_STREAM])


def import_mmrec(src, out, *, dtype: str = "auto", shard_size: int = 65536, overwrite: bool = False,
                 storage_options: Optional[dict] = None, chunk_rows: int = CHUNK_ROWS, cold_items: float = 0.0,
                 split_seed: int = DEFAULT_COLD_SEED) -> dict:
    """Convert an MMRec folder to the canonical form at ``out``; returns the written ``dataset.json``.
    ``cold_items`` > 0: that fraction of the items (drawn with ``split_seed``) lose their train interactions to
    valid/test (``splits.hold_out_items``), each to valid with the source's valid / (valid + test) share."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (expected an MMRec dataset folder)")
    inter_path = _find_inter_file(src)
    users, items, labels = read_inter(inter_path)
    features = open_features(src)
    num_items = next(iter(features.values())).shape[0]
    _check_items(items, num_items, inter_path, features)
    num_users = int(users.max()) + 1
    store_dtype = choose_dtype(dtype, features)

    modalities = {name: int(arr.shape[1]) for name, arr in features.items()}
    source = {"format": "mmrec", "path": str(src.resolve()), "inter_file": inter_path.name,
              "feature_files": {name: f"{name}{FEATURE_SUFFIX}" for name in features}}
    seed = None
    if cold_items > 0:
        held = np.isin(labels, (SPLIT_CODES["valid"], SPLIT_CODES["test"]))
        if not held.any():
            raise DataError(f"{inter_path}: --cold-items needs valid or test interactions (cold items live there)")
        share = float((labels == SPLIT_CODES["valid"]).sum()) / float(held.sum())
        labels, cold = hold_out_items(items, labels, num_items, cold_items, share,
                                      np.random.default_rng([int(split_seed), COLD_STREAM]))
        source.update(cold_items=int(cold.sum()), cold_frac=float(cold_items), cold_valid_share=round(share, 6))
        seed = int(split_seed)
    with DatasetWriter(out, num_users=num_users, num_items=num_items, modalities=modalities, dtype=store_dtype,
                       shard_size=shard_size, storage_options=storage_options, overwrite=overwrite) as writer:
        writer.add_interactions(users, items, labels)
        for chunk in stream_features(features, src, store_dtype, chunk_rows):
            writer.add_features(chunk)
        return writer.commit(source=source, split_seed=seed)


# ---------------------------------------------------------------------------- interactions
def _find_inter_file(src: Path) -> Path:
    found = sorted(p for p in src.glob("*.inter") if p.is_file())
    if not found:
        raise DataError(f"{src}: no <name>.inter interaction file found")
    if len(found) > 1:
        raise DataError(f"{src}: several .inter files ({', '.join(p.name for p in found)}); keep exactly one")
    return found[0]


def read_inter(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and check ``userID itemID x_label``; returns int64 users, int64 items, int8 split codes."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise DataError(f"{path}: missing required column '{col}' (header has: {', '.join(header) or 'nothing'})")
    try:  # fast path: clean integer columns
        frame = _read_columns(path, np.int64)
        cols = {col: frame[col].to_numpy() for col in REQUIRED_COLUMNS}
    except (ValueError, TypeError):  # something is not an integer: re-read as text to name the line
        frame = _read_columns(path, str)
        cols = {col: _int_column(frame[col], col, path) for col in REQUIRED_COLUMNS}
    if len(cols["userID"]) == 0:
        raise DataError(f"{path}: no interactions (header only)")
    users, items, labels = cols["userID"], cols["itemID"], cols["x_label"]
    for col, values in (("userID", users), ("itemID", items)):
        if (values < 0).any():
            row = int(np.argmax(values < 0))
            raise DataError(f"{path}, line {row + 2}: {col} {values[row]} is negative")
    bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{path}, line {row + 2}: x_label {labels[row]} is not 0/1/2 (train/valid/test)")
    _check_duplicates(users, items, path)
    return users, items, labels.astype(np.int8)


def _read_columns(path: Path, dtype) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", usecols=list(REQUIRED_COLUMNS), dtype=dtype, engine="c",
                           keep_default_na=dtype is not str)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse as tab-separated text ({str(exc).strip()})") from None


def _int_column(values: pd.Series, col: str, path: Path) -> np.ndarray:
    parsed = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = parsed.isna() | (parsed != np.floor(parsed))
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise DataError(f"{path}, line {row + 2}: {col} {values.iloc[row]!r} is not an integer")
    return parsed.to_numpy().astype(np.int64)


def _check_duplicates(users: np.ndarray, items: np.ndarray, path: Path) -> None:
    key = users * (int(items.max()) + 1) + items
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    if same.any():
        row = int(order[1:][np.argmax(same)])
        raise DataError(f"{path}, line {row + 2}: duplicate interaction (userID {users[row]}, itemID {items[row]})")


# ---------------------------------------------------------------------------- features
def open_features(src: Path) -> dict:
    """Memory-map every ``<modality>_feat.npy``; checks 2-D numeric arrays with equal row counts."""
    files = sorted(p for p in src.glob(f"*{FEATURE_SUFFIX}") if p.is_file())
    if not files:
        raise DataError(f"{src}: no feature files (<modality>{FEATURE_SUFFIX}, e.g. image{FEATURE_SUFFIX})")
    features = {}
    first = None
    for path in files:
        name = path.name[: -len(FEATURE_SUFFIX)]
        if not name:
            raise DataError(f"{path}: feature file needs a modality prefix (e.g. image{FEATURE_SUFFIX})")
        arr = load_feature_array(path)
        first = check_same_rows(first, path, arr)
        features[name] = arr
    return features


def check_same_rows(first, path: Path, arr: np.ndarray):
    """``first`` = (path, rows) of the first modality seen (None before any); errors on a row-count mismatch."""
    if first is None:
        return (path, arr.shape[0])
    if arr.shape[0] != first[1]:
        raise DataError(f"{path} has {arr.shape[0]:,} rows but {first[0]} has {first[1]:,}; every modality "
                        "needs one row per item")
    return first


def load_feature_array(path: Path) -> np.ndarray:
    """``np.load`` with ``mmap_mode="r"`` (never unpickles); checks a 2-D numeric array."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [items, dim], got shape {getattr(arr, 'shape', None)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{path}: expected numeric features, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: empty feature array (shape {arr.shape})")
    return arr


def choose_dtype(dtype: str, features: dict) -> str:
    """``auto``: float16 if every source is float16, else float32 (no precision lost beyond float32)."""
    if dtype == "auto":
        return "float16" if all(a.dtype == np.float16 for a in features.values()) else "float32"
    if dtype not in ("float16", "float32"):
        raise DataError(f"feature dtype {dtype!r} not supported; use auto, float16 or float32")
    return dtype


def stream_features(features: dict, src: Path, dtype: str, chunk_rows: int, *,
                    files: Optional[dict] = None):
    """Yield ``{modality: rows}`` chunks in item order, raising DataError (file + row) on NaN/Inf or on
    values that overflow ``dtype``."""
    num_items = next(iter(features.values())).shape[0]
    files = files or {name: f"{name}{FEATURE_SUFFIX}" for name in features}
    for lo in range(0, num_items, chunk_rows):
        chunk = {}
        for name, arr in features.items():
            block = np.asarray(arr[lo:lo + chunk_rows])
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, by row
                converted = block.astype(dtype)
            finite = np.isfinite(converted).all(axis=1)
            if not finite.all():
                row = int(np.argmax(~finite))
                why = ("has a NaN/Inf value" if not np.isfinite(block[row]).all()
                       else f"overflows {dtype}; use --dtype float32")
                raise DataError(f"{os.path.join(src, files[name])}: row {lo + row} (item {lo + row}) {why}")
            chunk[name] = converted
        yield chunk


def _check_items(items: np.ndarray, num_items: int, inter_path: Path, features: dict) -> None:
    beyond = items >= num_items
    if beyond.any():
        row = int(np.argmax(beyond))
        name = next(iter(features))
        raise DataError(f"{inter_path}, line {row + 2}: itemID {items[row]} is beyond the {num_items:,} feature "
                        f"rows of {name}{FEATURE_SUFFIX} (row = itemID)")
