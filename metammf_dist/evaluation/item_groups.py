"""Warm-item and cold-item metrics, from the same scores as the overall ranking (one pass, one matmul per chunk).

An item is **cold** when it has no train interaction (held out with ``--cold-items``, or simply never seen in
train); every other item is **warm**.  Besides the overall metrics, three rankings, each over the users that have
a truth item of the group (truth items outside the group are dropped for it; the excluded items are the same):

* ``warm_<metric>``: the user's warm truth items, ranked among the warm items only;
* ``cold_<metric>``: the user's cold truth items, ranked among the cold items only (the usual cold-start
  protocol: can the features tell new items apart?);
* ``cold_all_<metric>``: the user's cold truth items, ranked among all items (do new items surface next to
  the warm ones?) - the overall top-K list, scored against the cold truth.

Each group also gives ``<group>_num_users``; a group with no user is left out.  Per chunk of users the scores
are computed once: the overall top-K (also ``cold_all``'s), then the cold columns are copied out and ranked,
then the cold columns are set to -inf in place and the warm items ranked.  Ties, fixed-point sums and
rank-sharding are those of ``ranking.py``, so the overall metrics equal ``evaluate_full_ranking``'s exactly.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from .metrics import check_ks, hit_matrix, metric_keys, per_user_metrics
from .ranking import (FIXED_POINT_SCALE, CSR, _all_reduce_sum, _chunks_of_rank, _resolve_group, as_id_tensor,
                      eval_users, fill_excluded, topk_lowest_id)

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
    rows = torch.repeat_interleave(torch.arange(truth.num_rows), truth.row_lengths())
    lengths = torch.bincount(rows[flags], minlength=truth.num_rows)
    indptr = torch.zeros(truth.num_rows + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=indptr[1:])
    return CSR(indptr=indptr, indices=truth.indices[flags])


def _sums(items: torch.Tensor, values: torch.Tensor, truth: CSR, chunk: torch.Tensor, ks, kmax: int) -> torch.Tensor:
    """Fixed-point metric sums over the chunk's users that have a truth item in ``truth``, then their count."""
    truth_indptr, truth_items, _ = truth.gather(chunk)
    counts = truth_indptr[1:] - truth_indptr[:-1]
    hits = hit_matrix(items, truth_indptr, truth_items, valid=values > float("-inf"))
    if hits.shape[1] < kmax:  # fewer candidates than the largest cut-off: the missing ranks are misses
        hits = torch.cat([hits, hits.new_zeros(hits.shape[0], kmax - hits.shape[1])], dim=1)
    per_user = per_user_metrics(hits, counts, ks)  # users without truth score 0 everywhere
    fixed = torch.stack([torch.round(per_user[key] * FIXED_POINT_SCALE) for key in metric_keys(ks)])
    return torch.cat([fixed.to(torch.int64).sum(1).cpu(), (counts > 0).sum().reshape(1).cpu()])


def evaluate_item_groups(user_vecs, item_vecs: torch.Tensor, exclude: CSR, truth: CSR, users, cold: torch.Tensor,
                         ks: Sequence[int] = (10, 20), user_chunk: int = 1024, group=None) -> Dict[str, float]:
    """Overall metrics (as ``evaluate_full_ranking``) plus ``warm_*``, ``cold_*``, ``cold_all_*`` (module docstring).
    ``user_vecs``: ``[num_users, D]``; ``cold``: ``cold_item_mask``."""
    ks = check_ks(ks)
    num_items, kmax = item_vecs.shape[0], max(ks)
    cold = torch.as_tensor(cold, dtype=torch.bool).reshape(-1)
    if cold.numel() != num_items:
        raise ValueError(f"cold: {cold.numel()} flags for {num_items} items")
    cold_idx = cold.nonzero().squeeze(1)
    truths = {"all": truth, "warm": restrict_truth(truth, ~cold), "cold": restrict_truth(truth, cold)}
    rank, world_size = _resolve_group(group)
    keys = metric_keys(ks)
    totals = {name: torch.zeros(len(keys) + 1, dtype=torch.int64) for name in ("all", *GROUPS)}
    item_t = item_vecs.t()
    cold_dev = cold.to(item_vecs.device)
    cold_idx_dev = cold_idx.to(item_vecs.device)
    for chunk in _chunks_of_rank(eval_users(truth, users), user_chunk, rank, world_size):
        scores = user_vecs[chunk.to(user_vecs.device)].to(device=item_vecs.device, dtype=item_vecs.dtype) @ item_t
        fill_excluded(scores, exclude, chunk)
        values, items = topk_lowest_id(scores, min(kmax, num_items))
        totals["all"] += _sums(items, values, truths["all"], chunk, ks, kmax)
        totals["cold_all"] += _sums(items, values, truths["cold"], chunk, ks, kmax)
        if cold_idx.numel():
            cold_scores = scores[:, cold_idx_dev]
            values, local = topk_lowest_id(cold_scores, min(kmax, cold_idx.numel()))
            totals["cold"] += _sums(cold_idx_dev[local], values, truths["cold"], chunk, ks, kmax)
            del cold_scores
        if cold_idx.numel() < num_items:
            scores.masked_fill_(cold_dev, float("-inf"))
            values, items = topk_lowest_id(scores, min(kmax, num_items))
            totals["warm"] += _sums(items, values, truths["warm"], chunk, ks, kmax)
        del scores, values, items
    stacked = torch.stack(list(totals.values()))
    if world_size > 1 or group is not None:
        stacked = _all_reduce_sum(stacked, group)
    out: Dict[str, float] = {}
    for (name, _), row in zip(totals.items(), stacked.tolist()):
        if row[-1] == 0:
            if name == "all":
                raise ValueError("no user to evaluate: none of the given users has a truth item")
            continue
        prefix = "" if name == "all" else f"{name}_"
        out.update({f"{prefix}{key}": s / FIXED_POINT_SCALE / row[-1] for key, s in zip(keys, row[:-1])})
        out[f"{prefix}num_users"] = row[-1]
    return out
