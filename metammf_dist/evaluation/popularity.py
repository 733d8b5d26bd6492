"""Popularity baseline: score every item by its number of train interactions, same for all users.

A model that does not beat this reference is not learning anything personal.  Scores are float64
counts, so ties are exact and broken by the lower item id (see ``ranking.topk_lowest_id``).

``evaluate_popularity`` ranks exactly but without scoring every item for every user: all users share one
ranking, the catalog in (popularity desc, id asc) order, so a user's top K are the first K items of that order
outside their exclusions, and those lie within its first ``K + (their exclusions)`` items.  Ranking that
prefix per user gives the full ranking's metrics (a test holds it to ``evaluate_scores`` with
``popularity_score_fn``) at a cost that does not grow with the catalog (10M items: seconds, not tens of minutes).

Reference on TikTok (test split, full ranking, train + valid items excluded):
Recall@10 .0467, NDCG@10 .0222, Recall@20 .0597, NDCG@20 .0255.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch

from .ranking import (CSR, _all_reduce_sum, _chunk_sums, _chunks_of_rank, _metrics, _resolve_group, as_id_tensor,
                      checked_ranking_inputs, metric_keys, topk_lowest_id)


def item_popularity(train_items, num_items: int) -> torch.Tensor:
    """Float64 ``[num_items]``: how often each item occurs in the train interactions."""
    items = as_id_tensor(train_items, "train_items")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= num_items):
        raise ValueError(f"train item ids must lie in [0, {num_items}), got [{int(items.min())}, {int(items.max())}]")
    return torch.bincount(items, minlength=num_items).to(torch.float64)


def popularity_score_fn(popularity: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``score_fn(user_ids) -> Tensor[n, num_items]``: the popularity row repeated (a fresh tensor)."""
    def score_fn(user_ids: torch.Tensor) -> torch.Tensor:
        return popularity.unsqueeze(0).repeat(user_ids.numel(), 1)
    return score_fn


def evaluate_popularity(
    train_items,
    num_items: int,
    exclude: CSR,
    truth: CSR,
    users,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    group=None,
) -> Dict[str, float]:
    """Full-ranking metrics of the popularity baseline, the same as ``ranking.evaluate_scores`` with
    ``popularity_score_fn`` gives (module docstring); distributed as it is."""
    ks, users = checked_ranking_inputs(num_items, exclude, truth, users, ks, user_chunk)
    pop = item_popularity(train_items, num_items)
    rank, world_size = _resolve_group(group)
    kmax = max(ks)
    totals = torch.zeros(len(metric_keys(ks)) + 1, dtype=torch.int64)
    if users.numel():
        order = torch.sort(-pop, stable=True).indices  # popularity desc, then id asc
        most_excluded = int(exclude.row_lengths()[users].max())
        cand = order[:min(kmax + most_excluded, num_items)]  # every user's top kmax lies in this prefix
        column = torch.full((num_items,), -1, dtype=torch.int64)
        column[cand] = torch.arange(cand.numel())
        cand_pop = pop[cand]
        for chunk in _chunks_of_rank(users, user_chunk, rank, world_size):
            scores = cand_pop.unsqueeze(0).repeat(chunk.numel(), 1)
            _, items, rows = exclude.gather(chunk)
            inside = column[items] >= 0
            scores[rows[inside], column[items[inside]]] = float("-inf")
            # columns are in (popularity desc, id asc) order: the lower column of a tie is the lower id
            values, at = topk_lowest_id(scores, min(kmax, cand.numel()))
            totals[:-1] += _chunk_sums(cand[at], values, truth, chunk, ks, kmax)
            totals[-1] += chunk.numel()
    if world_size > 1 or group is not None:
        totals = _all_reduce_sum(totals, group)
    return _metrics(totals, ks)
