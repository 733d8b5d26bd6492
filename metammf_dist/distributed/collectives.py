"""Row collectives: every rank's (row ids, value rows), gathered in rank order, and a deterministic choice among
duplicates.  Shared by the sparse ID tables and the big-catalog strategies' pushes; gloo and NCCL alike."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as tdist


def all_gather_rows(rows: torch.Tensor, values: torch.Tensor, world_size: int):
    """Every rank's (row ids, value rows), concatenated in rank order (padded all_gather: gloo and NCCL)."""
    count = torch.tensor([rows.numel()], dtype=torch.long, device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    tdist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    most = max(counts)
    pad_rows = torch.zeros(most, dtype=rows.dtype, device=rows.device)
    pad_rows[: rows.numel()] = rows
    pad_vals = torch.zeros(most, values.shape[1], dtype=values.dtype, device=values.device)
    pad_vals[: values.shape[0]] = values
    all_rows = [torch.empty_like(pad_rows) for _ in range(world_size)]
    all_vals = [torch.empty_like(pad_vals) for _ in range(world_size)]
    tdist.all_gather(all_rows, pad_rows)
    tdist.all_gather(all_vals, pad_vals)
    return (torch.cat([r[:c] for r, c in zip(all_rows, counts)]),
            torch.cat([v[:c] for v, c in zip(all_vals, counts)]))


def last_per_id(ids: torch.Tensor, values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unique ids, each with the values of its LAST occurrence (a later rank's push wins, deterministically)."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    if unique.numel() == ids.numel():
        return ids, values
    position = torch.arange(ids.numel(), device=ids.device)
    last = torch.full((unique.numel(),), -1, dtype=torch.long, device=ids.device)
    last = last.scatter_reduce(0, inverse, position, reduce="amax")
    return unique, values[last]
