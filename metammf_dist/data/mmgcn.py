"""Importer for the MetaMMF / MMGCN layout (``metammf-dist prepare mmgcn SRC OUT --allow-pickle``).

SRC is a local folder holding

* exactly one ``user_item_dict*.npy``: a PICKLED dict ``{user: [items]}``.  Unpickling can run arbitrary
  code, so it is loaded only with an explicit ``allow_pickle=True`` (``--allow-pickle``); without it the
  import is refused before any file is read or written;
* any non-empty subset of ``v_feat*.npy`` / ``a_feat*.npy`` / ``t_feat*.npy`` (modalities ``visual``,
  ``acoustic``, ``textual``, stored in that order), 2-D numeric arrays with one row per item.

Ids: users are the dict keys, ``num_users = max key + 1``; ``num_items`` = the feature row count.
MMGCN numbers items after users (item node id = num_users + item row).  Rule used here:

* if every item id is < the feature row count, ids are feature rows as given (the MetaMMF sample: item ids
  0..1139 with 1,141 rows and 100 users - not offset);
* otherwise, if every item id is >= num_users and ``id - num_users`` fits the feature rows, the ids are
  MMGCN-offset and ``num_users`` is subtracted (recorded as ``item_id_offset`` in ``dataset.json``);
* otherwise the largest id is reported as out of range, naming the dict file.

Repeated items of one user are kept once (first occurrence).  There is no split in this layout, so each
user's items are split at random with ``--split-seed`` (default 2023) by ``splits.per_user_split``: 10%
valid / 10% test (at least one of each) for users with >= 3 items, everything in train otherwise.
``--cold-items FRAC`` then holds that fraction of the items out of train entirely (``splits.hold_out_items``,
drawn with the same seed on a stream of its own).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from metammf_dist.data.dataset import DatasetWriter
from metammf_dist.data.mmrec import COLD_STREAM, check_same_rows, choose_dtype, load_feature_array, stream_features
from metammf_dist.data.splits import hold_out_items, per_user_split
from metammf_dist.errors import DataError

DICT_PATTERN = "user_item_dict*.npy"
MODALITY_PREFIXES = (("visual", "v_feat"), ("acoustic", "a_feat"), ("textual", "t_feat"))
DEFAULT_SPLIT_SEED = 2023
VALID_FRAC = 0.1
TEST_FRAC = 0.1
CHUNK_ROWS = 8192


def pickle_refusal(src) -> str:
    return (f"refusing to load the pickled user_item_dict in {src}: unpickling can run arbitrary code. "
            "Pass --allow-pickle only if you trust where this file came from")


def import_mmgcn(src, out, *, allow_pickle: bool = False, split_seed: int = DEFAULT_SPLIT_SEED,
                 dtype: str = "auto", shard_size: int = 65536, overwrite: bool = False,
                 storage_options: Optional[dict] = None, chunk_rows: int = CHUNK_ROWS, cold_items: float = 0.0) -> dict:
    """Convert a MetaMMF/MMGCN folder to the canonical form at ``out``; returns the written ``dataset.json``.
    ``cold_items`` > 0: that fraction of the items (drawn with ``split_seed``, a stream of its own, so the per-user
    split is the same as without) lose their train interactions to valid/test, half to each."""
    if not allow_pickle:
        raise DataError(pickle_refusal(src))
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (expected a MetaMMF/MMGCN dataset folder)")
    dict_path = _find_one(src, DICT_PATTERN, required=True)
    features, files = open_features(src)
    num_items = next(iter(features.values())).shape[0]
    user_items = load_user_item_dict(dict_path)
    num_users = max(user_items) + 1
    users, items, counts = flatten(user_items)
    items, offset = resolve_item_ids(items, num_users, num_items, dict_path, files)
    splits = per_user_split(counts, VALID_FRAC, TEST_FRAC, np.random.default_rng(split_seed))
    store_dtype = choose_dtype(dtype, features)

    modalities = {name: int(arr.shape[1]) for name, arr in features.items()}
    source = {"format": "mmgcn", "path": str(src.resolve()), "dict_file": dict_path.name, "feature_files": files,
              "item_id_offset": offset, "split_rule": f"per-user {VALID_FRAC:g} valid / {TEST_FRAC:g} test"}
    if cold_items > 0:
        share = VALID_FRAC / (VALID_FRAC + TEST_FRAC)
        splits, cold = hold_out_items(items, splits, num_items, cold_items, share,
                                      np.random.default_rng([int(split_seed), COLD_STREAM]))
        source.update(cold_items=int(cold.sum()), cold_frac=float(cold_items), cold_valid_share=share)
    with DatasetWriter(out, num_users=num_users, num_items=num_items, modalities=modalities, dtype=store_dtype,
                       shard_size=shard_size, storage_options=storage_options, overwrite=overwrite) as writer:
        writer.add_interactions(users, items, splits)
        for chunk in stream_features(features, src, store_dtype, chunk_rows, files=files):
            writer.add_features(chunk)
        return writer.commit(source=source, split_seed=int(split_seed))


def _find_one(src: Path, pattern: str, *, required: bool) -> Optional[Path]:
    found = sorted(p for p in src.glob(pattern) if p.is_file())
    if len(found) > 1:
        raise DataError(f"{src}: several files match {pattern} ({', '.join(p.name for p in found)}); keep one")
    if not found:
        if required:
            raise DataError(f"{src}: no {pattern} file found")
        return None
    return found[0]


def open_features(src: Path) -> tuple[dict, dict]:
    """Memory-map the present modalities; returns ``({modality: array}, {modality: file name})``."""
    features, files = {}, {}
    first = None
    for name, prefix in MODALITY_PREFIXES:
        path = _find_one(src, f"{prefix}*.npy", required=False)
        if path is None:
            continue
        arr = load_feature_array(path)
        first = check_same_rows(first, path, arr)
        features[name], files[name] = arr, path.name
    if not features:
        raise DataError(f"{src}: no feature files (v_feat*.npy, a_feat*.npy or t_feat*.npy)")
    return features, files


def load_user_item_dict(path: Path) -> dict:
    """Unpickle the dict (caller has the user's consent) and check its keys/values are integer ids."""
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: expected a non-empty pickled dict {{user: [items]}}, got {type(obj).__name__}")
    out = {}
    for user, items in obj.items():
        if not isinstance(user, (int, np.integer)) or isinstance(user, bool) or user < 0:
            raise DataError(f"{path}: user key {user!r} is not a non-negative integer id")
        try:
            arr = np.asarray(list(items))
        except TypeError:
            raise DataError(f"{path}: items of user {user} are not a list of ids ({type(items).__name__})") from None
        if arr.size and (arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{path}: items of user {user} are not integer ids (dtype {arr.dtype})")
        if arr.size and arr.min() < 0:
            raise DataError(f"{path}: user {user} has negative item id {int(arr.min())}")
        out[int(user)] = arr.astype(np.int64)
    return out


def flatten(user_items: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users in ascending order, each user's items deduplicated keeping first occurrence; returns
    ``(users, items, per-user counts)`` with rows grouped by user."""
    users, items, counts = [], [], []
    for user in sorted(user_items):
        arr = user_items[user]
        _, first = np.unique(arr, return_index=True)
        arr = arr[np.sort(first)]
        users.append(np.full(arr.size, user, dtype=np.int64))
        items.append(arr)
        counts.append(arr.size)
    return np.concatenate(users), np.concatenate(items), np.asarray(counts, dtype=np.int64)


def resolve_item_ids(items: np.ndarray, num_users: int, num_items: int, dict_path: Path,
                     files: dict) -> tuple[np.ndarray, int]:
    """Apply the offset rule from the module docstring; returns ``(item rows, offset used)``."""
    if items.size == 0:
        raise DataError(f"{dict_path}: the dict holds no interactions")
    lo, hi = int(items.min()), int(items.max())
    if hi < num_items:
        return items, 0
    if lo >= num_users and hi - num_users < num_items:
        return items - num_users, num_users
    first_file = next(iter(files.values()))
    raise DataError(f"{dict_path}: item id {hi} is beyond the {num_items:,} feature rows of {first_file} "
                    f"(also with the MMGCN offset of num_users={num_users})")
