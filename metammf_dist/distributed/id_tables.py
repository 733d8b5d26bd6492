"""ID tables outside DeepSpeed, updated row by row (``train.id_tables: sparse``).

With dense ID tables inside ZeRO, every step pays for the WHOLE user and item tables: a dense gradient,
its all-reduce (or reduce-scatter) and an Adam update of every row, although a step touches a few
hundred thousand rows at most.  At 1M users + 1M items (96M ID floats) that is ~2 s per step on this
2-core machine against ~0.1 s for the rest of a cached step, and it grows with the catalog.

``SparseIdTables`` takes the two ``nn.Embedding`` modules out of the module tree that DeepSpeed wraps
(they stay reachable as ``model.user_emb`` / ``model.item_emb``, so forward code is unchanged), switches
them to sparse gradients, and after each backward:

1. gathers every rank's (row ids, gradient rows) and sums duplicates (``all_gather`` of padded tensors:
   gloo and NCCL alike), divided by the world size like DeepSpeed's data-parallel average;
2. applies lazy Adam to the touched rows only (as TF's LazyAdam / torch's ``SparseAdam``, plus
   ``weight_decay`` as L2 on the touched rows, as torch's coupled Adam weight decay): for touched rows
   ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``, ``w <- w - lr m_hat / (sqrt(v_hat) + eps)`` with the
   bias corrections of the global step count.  Rows a step does not touch keep their moments (dense Adam
   would keep moving them with old momentum): that is the approximation, standard for large ID tables.

Every rank applies the same summed update, so the tables stay identical (replicated) across ranks; memory
per rank is 3 x the tables (weights, m, v) and no dense gradient.  Saved with each checkpoint
(``id_tables.pt``) and merged back by ``restore``/``evaluate``/``export``.
"""
from __future__ import annotations

from typing import Dict

import torch

from metammf_dist.distributed.collectives import all_gather_rows

FILE_NAME = "id_tables.pt"
NAMES = ("user_emb", "item_emb")


class SparseIdTables:
    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = 1e-8, distributed: bool = False, world_size: int = 1):
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self.distributed, self.world_size = bool(distributed), int(world_size)
        self.tables: Dict[str, torch.nn.Embedding] = {}
        for name in NAMES:
            emb = model._modules.pop(name)  # out of the module tree DeepSpeed sees ...
            object.__setattr__(model, name, emb)  # ... still model.<name> for the forward code
            emb.sparse = True
            self.tables[name] = emb
        self.exp_avg = {n: torch.zeros_like(e.weight, requires_grad=False) for n, e in self.tables.items()}
        self.exp_avg_sq = {n: torch.zeros_like(e.weight, requires_grad=False) for n, e in self.tables.items()}
        self.step_count = 0

    def to(self, device: torch.device) -> "SparseIdTables":
        for name, emb in self.tables.items():
            emb.to(device)
            self.exp_avg[name] = self.exp_avg[name].to(device)
            self.exp_avg_sq[name] = self.exp_avg_sq[name].to(device)
        return self

    @torch.no_grad()
    def step(self) -> int:
        """Apply the (all-ranks) row gradients; returns the number of rows updated."""
        self.step_count += 1
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1 ** self.step_count, 1.0 - b2 ** self.step_count
        updated = 0
        for name, emb in self.tables.items():
            weight, grad = emb.weight, emb.weight.grad
            emb.weight.grad = None
            rows, values = _rows_of(grad, weight)  # unique rows (a coalesced sparse gradient)
            if self.distributed and self.world_size > 1:
                rows, values = all_gather_rows(rows, values, self.world_size)
                rows, values = _coalesce(rows, values)
                values = values / self.world_size
            if rows.numel() == 0:
                continue
            w, exp_avg, exp_avg_sq = weight.data, self.exp_avg[name], self.exp_avg_sq[name]
            if self.weight_decay:
                values = values.add(w.index_select(0, rows), alpha=self.weight_decay)
            m = exp_avg.index_select(0, rows).mul_(b1).add_(values, alpha=1.0 - b1)
            exp_avg.index_copy_(0, rows, m)
            v = exp_avg_sq.index_select(0, rows).mul_(b2).addcmul_(values, values, value=1.0 - b2)
            exp_avg_sq.index_copy_(0, rows, v)
            denom = v.sqrt_().div_(bc2 ** 0.5).add_(self.eps)  # v is stored already: reuse its buffer
            w.index_add_(0, rows, m.div_(denom), alpha=-self.lr / bc1)  # rows are unique: a plain row update
            updated += int(rows.numel())
        return updated

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"weights": {n: e.weight.detach().cpu() for n, e in self.tables.items()},
                "exp_avg": {n: v.cpu() for n, v in self.exp_avg.items()},
                "exp_avg_sq": {n: v.cpu() for n, v in self.exp_avg_sq.items()}, "step_count": self.step_count}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for name, emb in self.tables.items():
            emb.weight.copy_(state["weights"][name])
            self.exp_avg[name].copy_(state["exp_avg"][name])
            self.exp_avg_sq[name].copy_(state["exp_avg_sq"][name])
        self.step_count = int(state["step_count"])


def weights_of(state: dict) -> Dict[str, torch.Tensor]:
    """``{"user_emb.weight": ..., "item_emb.weight": ...}`` from a saved ``SparseIdTables.state_dict()``."""
    return {f"{name}.weight": tensor for name, tensor in state["weights"].items()}


def _rows_of(grad, weight):
    if grad is None:
        return (torch.empty(0, dtype=torch.long, device=weight.device),
                torch.empty(0, weight.shape[1], dtype=weight.dtype, device=weight.device))
    if grad.is_sparse:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    rows = torch.nonzero(grad.abs().sum(1), as_tuple=False).flatten()  # a dense gradient (e.g. cold-start mean)
    return rows, grad.index_select(0, rows)


def _coalesce(rows: torch.Tensor, values: torch.Tensor):
    """Unique rows with their duplicates' values summed."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    if unique.numel() == rows.numel():
        return rows, values
    summed = torch.zeros(unique.numel(), values.shape[1], dtype=values.dtype, device=values.device)
    summed.index_add_(0, inverse, values)
    return unique, summed
