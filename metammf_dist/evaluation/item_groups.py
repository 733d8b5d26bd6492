"""Warm-item and cold-item metrics: the same full ranking, restricted by item group.

An item is **cold** when it has no train interaction (held out with ``--cold-items``, or simply never seen in
train); every other item is **warm**.  Three rankings besides the overall one, each over the users that have a
truth item of the group (truth items outside the group are dropped for that ranking; the excluded items are
the same as overall):

* ``warm_<metric>``: the user's warm truth items, ranked among the warm items only;
* ``cold_<metric>``: the user's cold truth items, ranked among the cold items only (the usual cold-start
  protocol: can the features tell new items apart?);
* ``cold_all_<metric>``: the user's cold truth items, ranked among all items (do new items surface next to
  the warm ones?).

Each group also gives ``<group>_num_users``.  A group with no truth item is left out of the result.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from .ranking import CSR, as_id_tensor, eval_users, evaluate_full_ranking

GROUPS = ("warm", "cold", "cold_all")


def cold_item_mask(train_items, num_items: int) -> torch.Tensor:
    """bool ``[num_items]``: True for the items with no train interaction."""
    items = as_id_tensor(train_items, "train_items")
    cold = torch.ones(num_items, dtype=torch.bool)
    cold[items] = False
    return cold


def restrict_truth(truth: CSR, keep: torch.Tensor) -> CSR:
    """``truth`` with only the items whose ``keep`` flag is on (rows keep their order; some may become empty)."""
    flags = keep[truth.indices]
    lengths = torch.zeros(truth.num_rows, dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(truth.num_rows), truth.row_lengths())
    lengths.index_add_(0, rows[flags], torch.ones(int(flags.sum()), dtype=torch.int64))
    indptr = torch.zeros(truth.num_rows + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=indptr[1:])
    return CSR(indptr=indptr, indices=truth.indices[flags])


def evaluate_item_groups(user_vecs, item_vecs: torch.Tensor, exclude: CSR, truth: CSR, users, cold: torch.Tensor,
                         ks: Sequence[int] = (10, 20), user_chunk: int = 1024, group=None) -> Dict[str, float]:
    """``warm_*``, ``cold_*`` and ``cold_all_*`` metrics (module docstring); ``cold``: ``cold_item_mask``."""
    cold = torch.as_tensor(cold, dtype=torch.bool)
    warm = ~cold
    out: Dict[str, float] = {}
    for name, keep, candidates in (("warm", warm, warm), ("cold", cold, cold), ("cold_all", cold, None)):
        sub = restrict_truth(truth, keep)
        if eval_users(sub, users).numel() == 0:
            continue
        metrics = evaluate_full_ranking(user_vecs, item_vecs, exclude, sub, users, ks, user_chunk, group, candidates)
        out.update({f"{name}_{key}": float(value) for key, value in metrics.items()})
    return out
