"""Full-ranking evaluation: top-K metrics over all items, sharded across torch.distributed ranks.

* ``metrics``    -- Precision/Recall/HitRate/NDCG@K from a ranked top-K matrix (vectorized, float64).
* ``ranking``    -- CSR helper, deterministic top-K (ties -> lower item id), ``evaluate_full_ranking``.
* ``popularity`` -- the popularity baseline scorer used as a reference point.
* ``item_groups`` -- warm-item and cold-item metrics (items with / without a train interaction).
"""
from .item_groups import cold_item_mask, evaluate_item_groups, restrict_truth
from .metrics import METRIC_NAMES, hit_matrix, metric_keys, metric_sums, per_user_metrics
from .popularity import evaluate_popularity, item_popularity, popularity_score_fn
from .ranking import (
    CSR,
    build_csr,
    eval_users,
    evaluate_full_ranking,
    evaluate_scores,
    local_ranking_sums,
    merge_csr,
    topk_lowest_id,
)

__all__ = [
    "CSR",
    "METRIC_NAMES",
    "build_csr",
    "cold_item_mask",
    "eval_users",
    "evaluate_full_ranking",
    "evaluate_item_groups",
    "evaluate_popularity",
    "evaluate_scores",
    "hit_matrix",
    "item_popularity",
    "local_ranking_sums",
    "merge_csr",
    "metric_keys",
    "metric_sums",
    "per_user_metrics",
    "popularity_score_fn",
    "restrict_truth",
    "topk_lowest_id",
]
