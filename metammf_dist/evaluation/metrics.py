"""Top-K ranking metrics, vectorized over a batch of users.

Input is the ranked top-K item matrix of a batch of users (row = user, column = rank, best first)
and each user's ground-truth items.  Two steps, both without a per-user Python loop:

1. ``hit_matrix``: a boolean ``[n, K]`` matrix, True where the item ranked ``r`` is a truth item.
2. ``per_user_metrics`` / ``metric_sums``: from the hit matrix and the truth counts,
   in float64, for every cut-off ``K`` in ``ks``:

   * ``precision@K`` = hits / K
   * ``recall@K``    = hits / |truth|
   * ``hit@K``       = 1 if hits > 0 else 0
   * ``ndcg@K``      = sum over hits at 0-based rank r of 1/log2(r+2),
                       divided by sum over r < min(|truth|, K) of 1/log2(r+2)

Users with no truth item score 0 on every metric (recall/NDCG would be undefined); callers are
expected to leave them out (``evaluate_full_ranking`` does).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

METRIC_NAMES = ("precision", "recall", "hit", "ndcg")


def metric_keys(ks: Sequence[int]) -> list:
    """Result keys in a fixed order: every metric for the first K, then for the next K, ..."""
    return [f"{name}@{k}" for k in ks for name in METRIC_NAMES]


def selection_value(metrics: Dict[str, float], spec: str) -> float:
    """The early-stopping value of ``eval.metric``: one key (``recall@20``) or the sum of several joined by
    ``+`` (``recall@20+ndcg@20``)."""
    return sum(float(metrics[term]) for term in spec.split("+"))


def check_ks(ks: Sequence[int]) -> tuple:
    """Validate the cut-offs: a non-empty sequence of distinct positive ints."""
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k <= 0 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must not repeat a cut-off, got {ks!r}")
    return ks


def hit_matrix(
    topk_items: torch.Tensor,
    truth_indptr: torch.Tensor,
    truth_indices: torch.Tensor,
    valid: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Boolean ``[n, K]``: is ``topk_items[u, r]`` one of user ``u``'s truth items?

    The truth is a CSR over the same ``n`` rows: row ``u``'s items are
    ``truth_indices[truth_indptr[u]:truth_indptr[u+1]]`` (any order, duplicates harmless).
    ``valid`` (optional, bool ``[n, K]``) masks out ranked slots that are not real candidates,
    e.g. excluded items that only fill the list because K exceeds the number of candidates.
    Implementation: each (row, item) pair becomes one int64 key; ranked keys are looked up in the
    sorted truth keys with ``searchsorted``, O(nK log T) with no dense ``[n, num_items]`` mask.
    """
    n, k = topk_items.shape
    device = topk_items.device
    truth_indptr = truth_indptr.to(device)
    truth_indices = truth_indices.to(device)
    if truth_indptr.numel() != n + 1:
        raise ValueError(f"truth_indptr has {truth_indptr.numel()} entries, expected {n + 1}")
    if truth_indices.numel() == 0 or n == 0 or k == 0:
        hits = torch.zeros((n, k), dtype=torch.bool, device=device)
        return hits
    lengths = truth_indptr[1:] - truth_indptr[:-1]
    truth_rows = torch.repeat_interleave(torch.arange(n, device=device), lengths)
    stride = int(max(int(truth_indices.max()), int(topk_items.max()))) + 1
    truth_keys = torch.sort(truth_rows * stride + truth_indices).values
    ranked_keys = torch.arange(n, device=device).unsqueeze(1) * stride + topk_items
    pos = torch.searchsorted(truth_keys, ranked_keys).clamp_(max=truth_keys.numel() - 1)
    hits = truth_keys[pos] == ranked_keys
    if valid is not None:
        hits &= valid.to(device)
    return hits


def _discounts(k: int, device) -> torch.Tensor:
    """1/log2(r+2) for r = 0..k-1, float64."""
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float64) + 2.0)


def per_user_metrics(hits: torch.Tensor, num_truth: torch.Tensor, ks: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Per-user float64 metric values ``{"precision@K": Tensor[n], ...}`` for every K in ``ks``.

    ``hits`` is bool ``[n, Kmax]`` with ``Kmax >= max(ks)`` (columns past the candidate count may
    simply be False); ``num_truth`` is the int ``[n]`` count of each user's truth items.
    """
    ks = check_ks(ks)
    n, kmax = hits.shape
    if kmax < max(ks):
        raise ValueError(f"hit matrix has {kmax} ranks, fewer than the largest cut-off {max(ks)}")
    device = hits.device
    h = hits.to(torch.float64)
    num_truth = num_truth.to(device=device, dtype=torch.int64)
    truth_f = num_truth.clamp(min=1).to(torch.float64)
    disc = _discounts(kmax, device)
    ideal_cum = torch.cumsum(disc, 0)  # ideal_cum[j] = sum_{r<=j} disc[r]
    hits_cum = torch.cumsum(h, 1)  # hits within the first j+1 ranks
    dcg_cum = torch.cumsum(h * disc, 1)
    has_truth = num_truth > 0
    out = {}
    for k in ks:
        nh = hits_cum[:, k - 1]
        ideal = ideal_cum[(num_truth.clamp(min=1, max=k) - 1)]
        out[f"precision@{k}"] = nh / k
        out[f"recall@{k}"] = torch.where(has_truth, nh / truth_f, torch.zeros_like(nh))
        out[f"hit@{k}"] = (nh > 0).to(torch.float64)
        out[f"ndcg@{k}"] = torch.where(has_truth, dcg_cum[:, k - 1] / ideal, torch.zeros_like(nh))
    return {key: out[key] for key in metric_keys(ks)}


def metric_sums(hits: torch.Tensor, num_truth: torch.Tensor, ks: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Float64 sums over users of ``per_user_metrics`` (0-dim tensors), in ``metric_keys`` order."""
    return {key: v.sum() for key, v in per_user_metrics(hits, num_truth, ks).items()}
