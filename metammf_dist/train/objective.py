"""The training objective as one module, so DeepSpeed wraps a single ``forward(batch, **rows) -> (loss, fresh)``.

BPR (Rendle et al.): for each positive (u, i) and each of its sampled negatives j,
``loss = -mean log sigma(y_ui - y_uj)`` with ``y = <user vector, item vector>``.

``rows``: what a big-catalog strategy adds to the step (``cached_fusion``, ``neighbor_history``; see
``MetaMMFRecommender.forward_blocks``).  ``fresh``: the seeds' exact rows the model returned for the
strategy to write back (``None`` without a strategy).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class BPRObjective(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, cached_fusion: Optional[torch.Tensor] = None,
                neighbor_history: Optional[list] = None) -> Tuple[torch.Tensor, Optional[dict]]:
        out = self.model.forward_blocks(batch.blocks, batch.input_users, batch.input_items, batch.item_feats,
                                        cached_fusion, neighbor_history)
        users, items = out["user"].float(), out["item"].float()  # scores and the loss in fp32, also under bf16
        pos = self.model.score(users[batch.pos_u], items[batch.pos_i])  # [P]
        neg = self.model.score(users[batch.neg_u], items[batch.neg_i])  # [P * num_negatives]
        pos = pos.repeat_interleave(neg.numel() // max(pos.numel(), 1))
        return bpr_loss(pos, neg), out.get("fresh")


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``-mean log sigma(pos - neg)`` computed stably as ``softplus(neg - pos)``."""
    return F.softplus(neg - pos).mean()
