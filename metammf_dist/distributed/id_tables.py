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
2. updates the touched rows only (``train.id_optimizer``), with ``weight_decay`` as L2 on them (``g <- g + wd w``):

   * ``adam`` (default): lazy Adam (as TF's LazyAdam / torch's ``SparseAdam``): ``m <- b1 m + (1-b1) g``,
     ``v <- b2 v + (1-b2) g^2``, ``w <- w - lr m_hat / (sqrt(v_hat) + eps)`` with the bias corrections of the
     global step count.  Rows a step does not touch keep their moments (dense Adam would keep moving them with
     old momentum): that is the approximation, standard for large ID tables.  State: 2 x the tables.
   * ``rowwise_adagrad``: one accumulator per row, ``G <- G + mean(g^2)``, ``w <- w - lr g / (sqrt(G) + eps)``
     — FBGEMM's exact row-wise Adagrad, the fused optimizer TorchRec applies to row-sharded tables on CPU
     (``train.id_tables=sharded``, ``sharded_ids.py``), so both placements train identically.  State: one
     float per row.

Every rank applies the same summed update, so the tables stay identical (replicated) across ranks; memory
per rank is the tables plus the optimizer state, no dense gradient.  Saved with each checkpoint
(``id_tables.pt``) and merged back by ``restore``/``evaluate``/``export``.
"""
from __future__ import annotations

from typing import Dict

import torch

from metammf_dist.distributed.collectives import all_gather_rows

FILE_NAME = "id_tables.pt"
NAMES = ("user_emb", "item_emb")
OPTIMIZERS = ("adam", "rowwise_adagrad")
EPS = 1e-8


def detach_tables(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Take ``model.user_emb`` / ``model.item_emb`` out of the module tree DeepSpeed wraps; they stay reachable
    as attributes, so the forward code is unchanged.  Returns them by name."""
    tables = {}
    for name in NAMES:
        emb = model._modules.pop(name)  # out of the module tree DeepSpeed sees ...
        object.__setattr__(model, name, emb)  # ... still model.<name> for the forward code
        tables[name] = emb
    return tables


class SparseIdTables:
    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = EPS, distributed: bool = False, world_size: int = 1, optimizer: str = "adam"):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"train.id_optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self.distributed, self.world_size, self.optimizer = bool(distributed), int(world_size), optimizer
        self.tables: Dict[str, torch.nn.Embedding] = detach_tables(model)
        for emb in self.tables.values():
            emb.sparse = True
        self.state: Dict[str, Dict[str, torch.Tensor]] = {}  # optimizer state name -> table name -> tensor
        for name, emb in self.tables.items():
            if optimizer == "adam":
                self.state.setdefault("exp_avg", {})[name] = torch.zeros_like(emb.weight, requires_grad=False)
                self.state.setdefault("exp_avg_sq", {})[name] = torch.zeros_like(emb.weight, requires_grad=False)
            else:
                self.state.setdefault("momentum1", {})[name] = torch.zeros(emb.num_embeddings, dtype=emb.weight.dtype)
        self.step_count = 0

    def to(self, device: torch.device) -> "SparseIdTables":
        for name, emb in self.tables.items():
            emb.to(device)
            for tensors in self.state.values():
                tensors[name] = tensors[name].to(device)
        return self

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next ``step`` (``train.lr_schedule``)."""
        self.lr = float(lr)

    @torch.no_grad()
    def step(self) -> int:
        """Apply the (all-ranks) row gradients; returns the number of rows updated."""
        self.step_count += 1
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1 ** self.step_count, 1.0 - b2 ** self.step_count  # (adam)
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
            w = weight.data
            if self.weight_decay:
                values = values.add(w.index_select(0, rows), alpha=self.weight_decay)
            if self.optimizer == "adam":
                self._adam(name, w, rows, values, b1, b2, bc1, bc2)
            else:
                rowwise_adagrad(w, self.state["momentum1"][name], rows, values, self.lr, self.eps)
            updated += int(rows.numel())
        return updated

    def _adam(self, name, w, rows, values, b1, b2, bc1, bc2) -> None:
        exp_avg, exp_avg_sq = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
        m = exp_avg.index_select(0, rows).mul_(b1).add_(values, alpha=1.0 - b1)
        exp_avg.index_copy_(0, rows, m)
        v = exp_avg_sq.index_select(0, rows).mul_(b2).addcmul_(values, values, value=1.0 - b2)
        exp_avg_sq.index_copy_(0, rows, v)
        denom = v.sqrt_().div_(bc2 ** 0.5).add_(self.eps)  # v is stored already: reuse its buffer
        w.index_add_(0, rows, m.div_(denom), alpha=-self.lr / bc1)  # rows are unique: a plain row update

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"weights": {n: e.weight.detach().cpu() for n, e in self.tables.items()}, "optimizer": self.optimizer,
                **{key: {n: v.cpu() for n, v in tensors.items()} for key, tensors in self.state.items()},
                "step_count": self.step_count}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizer", "adam")
        if saved != self.optimizer:
            raise ValueError(f"the ID tables were saved with train.id_optimizer={saved}, this run has {self.optimizer}")
        for name, emb in self.tables.items():
            emb.weight.copy_(state["weights"][name])
            for key, tensors in self.state.items():
                tensors[name].copy_(state[key][name])
        self.step_count = int(state["step_count"])


def rowwise_adagrad(weight: torch.Tensor, momentum: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                    lr: float, eps: float = EPS) -> None:
    """FBGEMM's exact row-wise Adagrad on the unique ``rows`` with gradient rows ``grad`` (in place):
    ``G_r += mean(g_r^2)``; ``w_r -= lr g_r / (sqrt(G_r) + eps)``."""
    g = momentum.index_select(0, rows).add_((grad * grad).mean(1))
    momentum.index_copy_(0, rows, g)
    weight.index_add_(0, rows, grad / (g.sqrt_().add_(eps)).unsqueeze(1), alpha=-lr)


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
