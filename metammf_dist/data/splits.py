"""Train/valid/test split codes and the per-user random split shared by the importers and ``synth``.

Codes (the ``split`` column of ``interactions.parquet``): 0 = train, 1 = valid, 2 = test.

Per-user split rule (``per_user_split``), used when a source has no split of its own:

* a user with ``n >= 3`` interactions gets ``n_test = max(1, round(test_frac * n))`` test and
  ``n_valid = max(1, round(valid_frac * n))`` valid interactions (a fraction of 0 gives 0), reduced if
  needed so that at least one interaction stays in train; the rest are train;
* a user with fewer than 3 interactions keeps them all in train (nothing could be learned from a user
  whose only interaction is held out);
* which interactions go where is decided by a random permutation within the user, drawn from the given
  ``numpy.random.Generator`` - so the same seed gives the same split.

``round`` is round-half-up (2.5 -> 3), not Python's banker's rounding.

Cold items (``hold_out_items``, ``--cold-items FRAC`` of ``prepare`` and ``synth``): ``round(FRAC * num_items)``
items drawn at random (seeded) lose every train interaction: each moves to valid with probability
``valid_share``, else to test.  Such an item (like any item without a train interaction) can only be ranked
from its features.
"""
from __future__ import annotations

import numpy as np

from metammf_dist.errors import DataError

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
SPLIT_NAMES = tuple(SPLIT_CODES)
MIN_HELD_OUT_USER = 3  # users with fewer interactions keep everything in train


def split_code(name: str) -> int:
    """``"valid"`` -> 1; DataError naming the bad split otherwise."""
    try:
        return SPLIT_CODES[name]
    except KeyError:
        raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}") from None


def check_fractions(valid_frac: float, test_frac: float) -> None:
    for name, value in (("valid_frac", valid_frac), ("test_frac", test_frac)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {value}")
    if valid_frac + test_frac >= 1.0:
        raise DataError(f"valid_frac + test_frac must be < 1 (train needs the rest), got {valid_frac + test_frac}")


def held_out_counts(counts: np.ndarray, valid_frac: float, test_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Per user: (n_valid, n_test) under the rule in the module docstring."""
    counts = np.asarray(counts, dtype=np.int64)
    eligible = counts >= MIN_HELD_OUT_USER

    def quota(frac: float) -> np.ndarray:
        if frac <= 0:
            return np.zeros_like(counts)
        q = np.floor(frac * counts + 0.5).astype(np.int64)
        return np.where(eligible, np.maximum(q, 1), 0)

    n_test = quota(test_frac)
    n_valid = quota(valid_frac)
    # keep at least one train interaction: shrink valid first, then test
    over = np.maximum(n_valid + n_test - (counts - 1), 0)
    cut = np.minimum(over, np.maximum(n_valid - 1, 0) if valid_frac > 0 else 0)
    n_valid = n_valid - cut
    over = over - cut
    n_test = np.maximum(n_test - over, 0)
    return n_valid, n_test


def per_user_split(counts: np.ndarray, valid_frac: float, test_frac: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Split codes for interactions grouped by user: the first ``counts[0]`` rows belong to user 0 of the
    group, the next ``counts[1]`` to the next user, ...  Returns an int8 array of ``counts.sum()`` codes."""
    check_fractions(valid_frac, test_frac)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int8)
    n_valid, n_test = held_out_counts(counts, valid_frac, test_frac)
    segment = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # rank of each row inside its user's random permutation
    order = np.lexsort((rng.random(total), segment))
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total) - starts[segment[order]]
    codes = np.zeros(total, dtype=np.int8)
    codes[rank < (n_test + n_valid)[segment]] = SPLIT_CODES["valid"]
    codes[rank < n_test[segment]] = SPLIT_CODES["test"]
    return codes


def hold_out_items(items: np.ndarray, splits: np.ndarray, num_items: int, frac: float, valid_share: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(new split codes, cold flags ``[num_items]``): ``round(frac * num_items)`` random items are cold and their
    train interactions move to valid (probability ``valid_share``) or test; ``splits`` is not modified."""
    if not 0.0 <= frac < 1.0:
        raise DataError(f"--cold-items must be in [0, 1), got {frac}")
    if not 0.0 <= valid_share <= 1.0:
        raise DataError(f"cold items: valid share must be in [0, 1], got {valid_share}")
    cold = np.zeros(num_items, dtype=bool)
    n_cold = int(np.floor(frac * num_items + 0.5))
    if n_cold:
        cold[rng.choice(num_items, size=n_cold, replace=False)] = True
    splits = np.array(splits, dtype=np.int8, copy=True)
    move = cold[np.asarray(items, dtype=np.int64)] & (splits == SPLIT_CODES["train"])
    to_valid = rng.random(int(move.sum())) < valid_share
    splits[move] = np.where(to_valid, SPLIT_CODES["valid"], SPLIT_CODES["test"]).astype(np.int8)
    return splits, cold
