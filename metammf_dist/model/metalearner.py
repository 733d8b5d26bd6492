"""The meta-learner of MetaMMF: an item's multimodal features -> its item-specific meta vector s_i.

Paper (Liu et al., TOIS 2023, Sec. "Meta-learner"): a small MLP reads the concatenated multimodal
features x_i of item i and emits a low-dimensional vector s_i that "describes" the item.  The fusion
layers (``fusion.py``) turn s_i into the item's own fusion weights.

    s_i = W_2 · ReLU(W_1 · x_i + b_1) + b_2,      W_1: h × d,  W_2: s × h

d = sum of the modality dims, h = d by default (``ModelConfig.meta_hidden = None``), s = ``meta_dim`` (5).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class MetaLearner(nn.Module):
    """``x [B, in_dim] -> s [B, meta_dim]`` via Linear -> ReLU -> Linear."""

    def __init__(self, in_dim: int, meta_dim: int, hidden: Optional[int] = None):
        super().__init__()
        hidden = in_dim if hidden is None else hidden
        if min(in_dim, meta_dim, hidden) <= 0:
            raise ValueError(f"MetaLearner dims must be positive, got in={in_dim} hidden={hidden} meta={meta_dim}")
        self.in_dim, self.hidden, self.meta_dim = in_dim, hidden, meta_dim
        self.hidden_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, meta_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(torch.relu(self.hidden_layer(x)))
