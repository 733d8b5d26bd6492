"""The training objective as one module, so DeepSpeed wraps a single ``forward(batch) -> loss``.

BPR (Rendle et al.): for each positive (u, i) and each of its sampled negatives j,
``loss = -mean log sigma(y_ui - y_uj)`` with ``y = <user vector, item vector>``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BPRObjective(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch) -> torch.Tensor:
        sampled = getattr(batch, "grad_items_pos", None)
        out = self.model.forward_blocks(batch.blocks, batch.input_users, batch.input_items, batch.item_feats,
                                        getattr(batch, "cached_fusion", None),
                                        getattr(batch, "neighbor_history", None),
                                        None if sampled is None else (sampled, float(batch.grad_items_weight)))
        users, items = out["user"], out["item"]
        pos = self.model.score(users[batch.pos_u], items[batch.pos_i])  # [P]
        neg = self.model.score(users[batch.neg_u], items[batch.neg_i])  # [P * num_negatives]
        pos = pos.repeat_interleave(neg.numel() // max(pos.numel(), 1))
        loss = bpr_loss(pos, neg)
        offset = self.model.fusion_offset_term() if hasattr(self.model, "fusion_offset_term") else None
        return loss if offset is None else loss + offset  # value unchanged; adds the deferred fusion gradient


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``-mean log sigma(pos - neg)`` computed stably as ``softplus(neg - pos)``."""
    return F.softplus(neg - pos).mean()
