"""Per-dimension mean and standard deviation of the item features, streamed from the shard store.

Used to standardize the model's input (``model.feature_norm: standardize``): raw multimodal features
differ in offset and scale by orders of magnitude between modalities (TikTok: image mean 2.7 / std 1.2,
audio mean 0.04 / std 0.42), which makes the fusion's first layer start far from a good regime.
Computed in float64 over all items, one chunk at a time (never the whole table in memory).
"""
from __future__ import annotations

import numpy as np


def feature_moments(store, chunk: int = 65536, eps: float = 1e-6):
    """-> (mean [dim] float32, std [dim] float32) over all items of ``store``."""
    total = np.zeros(store.dim, dtype=np.float64)
    total_sq = np.zeros(store.dim, dtype=np.float64)
    n = 0
    for _, _, feats in store.iter_range(0, store.num_items, chunk):
        x = feats.astype(np.float64, copy=False)
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("feature store has no items")
    mean = total / n
    var = np.maximum(total_sq / n - np.square(mean), 0.0)
    return mean.astype(np.float32), np.sqrt(var + eps).astype(np.float32)
