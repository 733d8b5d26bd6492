"""Item–item k-nearest-neighbour graph from the multimodal features (``model.item_knn``), streamed.

Similarity of items i and j: the mean over modalities of the cosine similarity of their centred feature
vectors (each modality centred by its mean over all items: raw TikTok image features all share a mean
offset of 2.7 that would make every pair look alike).  Each item keeps its ``k`` most similar items, itself
included (its own similarity is 1), as LATTICE / FREEDOM build their frozen item–item graphs.

Cost: all pairs, ``num_items² × feat_dim`` multiply-adds, in blocks of ``chunk × chunk`` (memory bounded by
the blocks and the ``[chunk, k]`` running top-k; the feature table is never held whole).  About a second
for TikTok's 6,710 items on this 2-core CPU; hours at a million items, where it is meant to be built once
on a GPU or with an approximate index and is not the default.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from metammf_dist.data.feature_stats import feature_moments


def _normalized(block: np.ndarray, mean: np.ndarray, spans, eps: float = 1e-12) -> torch.Tensor:
    """Centre each modality's columns and scale them to unit norm, divided by sqrt(#modalities), so that a
    dot product of two rows is the mean of the per-modality cosines."""
    x = torch.from_numpy(block.astype(np.float32, copy=False) - mean)
    scale = 1.0 / np.sqrt(len(spans))
    for lo, hi in spans:
        part = x[:, lo:hi]
        part.mul_(scale / part.norm(dim=1, keepdim=True).clamp_min(eps))
    return x


def feature_knn(store, modalities: Mapping[str, int], k: int, chunk: int = 4096) -> torch.Tensor:
    """``[num_items, k]`` int64: each item's ``k`` most similar items, most similar first (itself first)."""
    n = store.num_items
    if not 0 < k <= n:
        raise ValueError(f"model.item_knn: k must be in 1..{n} (the number of items), got {k}")
    dims = list(modalities.values())
    if sum(dims) != store.dim:
        raise ValueError(f"feature_knn: modalities {dict(modalities)} sum to {sum(dims)}, store dim is {store.dim}")
    spans, lo = [], 0
    for d in dims:
        spans.append((lo, lo + d))
        lo += d
    mean, _ = feature_moments(store)
    index = torch.empty(n, k, dtype=torch.int64)
    for q_lo, q_hi, q_block in store.iter_range(0, n, chunk):
        queries = _normalized(q_block, mean, spans)
        best_sim = torch.full((q_hi - q_lo, k), -float("inf"))
        best_idx = torch.zeros(q_hi - q_lo, k, dtype=torch.int64)
        for k_lo, k_hi, k_block in store.iter_range(0, n, chunk):
            sims = queries @ _normalized(k_block, mean, spans).T
            if k_lo < q_hi and q_lo < k_hi:  # the block holding the queries themselves: self ranks first
                rows = torch.arange(max(q_lo, k_lo), min(q_hi, k_hi))
                sims[rows - q_lo, rows - k_lo] = float("inf")
            ids = torch.arange(k_lo, k_hi).expand(q_hi - q_lo, -1)
            best_sim, pick = torch.cat([best_sim, sims], 1).topk(k, dim=1, sorted=True)
            best_idx = torch.cat([best_idx, ids], 1).gather(1, pick)
        index[q_lo:q_hi] = best_idx
    return index
