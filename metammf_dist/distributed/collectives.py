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


# -- rows owned by ranks: contiguous blocks of ``block`` rows, rank r owning [r * block, (r + 1) * block) ------------
def _exchange(send: torch.Tensor, send_counts: torch.Tensor, world_size: int):
    """``all_to_all_single`` of ``send`` (rows grouped by destination rank, ``send_counts[r]`` rows for rank r)
    -> (received rows grouped by source rank, received counts)."""
    recv_counts = torch.empty_like(send_counts)
    tdist.all_to_all_single(recv_counts, send_counts)
    tail = tuple(send.shape[1:])
    out = torch.empty((int(recv_counts.sum()),) + tail, dtype=send.dtype, device=send.device)
    tdist.all_to_all_single(out, send.contiguous(), output_split_sizes=recv_counts.tolist(),
                            input_split_sizes=send_counts.tolist())
    return out, recv_counts


def _by_owner(ids: torch.Tensor, block: int, world_size: int):
    owner = torch.div(ids, block, rounding_mode="floor").clamp_(max=world_size - 1)
    order = torch.argsort(owner, stable=True)
    return order, torch.bincount(owner, minlength=world_size).to(torch.int64)


def fetch_owned_rows(ids: torch.Tensor, local: torch.Tensor, lo: int, block: int, world_size: int,
                     position=None) -> torch.Tensor:
    """Collective: rows ``ids`` (any order, repeats allowed) of a table whose rank r holds rows
    ``[r * block, ...)`` as ``local`` (starting at row ``lo`` on this rank) -> ``[len(ids), dim]``.
    ``position(ids)`` -> their rows in ``local`` when it holds only some of the owned rows (default ``ids - lo``)."""
    ids = ids.to(torch.int64)
    order, counts = _by_owner(ids, block, world_size)
    wanted, recv_counts = _exchange(ids[order], counts, world_size)  # the ids other ranks want from me
    rows = wanted - lo if position is None else position(wanted)
    served, _ = _exchange(local.index_select(0, rows), recv_counts, world_size)
    out = torch.empty((ids.numel(),) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    out[order] = served
    return out


def send_rows_to_owners(ids: torch.Tensor, values: torch.Tensor, block: int, world_size: int):
    """Collective: every rank's (ids, value rows) delivered to the ranks owning those ids -> the (ids, rows) this
    rank owns, in source-rank order (a later rank's row last, as ``all_gather_rows`` orders them)."""
    ids = ids.to(torch.int64)
    order, counts = _by_owner(ids, block, world_size)
    got_ids, recv_counts = _exchange(ids[order], counts, world_size)
    got_values, _ = _exchange(values[order], counts, world_size)
    return got_ids, got_values
