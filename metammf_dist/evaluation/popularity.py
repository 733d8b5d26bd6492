"""Popularity baseline: score every item by its number of train interactions, same for all users.

A model that does not beat this reference is not learning anything personal.  Scores are float64
counts, so ties are exact and broken by the lower item id (see ``ranking.topk_lowest_id``).

Reference on TikTok (test split, full ranking, train + valid items excluded):
Recall@10 .0467, NDCG@10 .0222, Recall@20 .0597, NDCG@20 .0255.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch

from .ranking import CSR, as_id_tensor, evaluate_scores


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
    """Full-ranking metrics of the popularity baseline (see ``ranking.evaluate_scores``)."""
    score_fn = popularity_score_fn(item_popularity(train_items, num_items))
    return evaluate_scores(score_fn, num_items, exclude, truth, users, ks, user_chunk, group)
