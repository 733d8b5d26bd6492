"""Full-ranking evaluation over all items, optionally sharded across torch.distributed ranks.

For every evaluated user: score ALL items, set the user's excluded items (train items; plus valid
items when testing -- the caller merges them into one ``exclude`` CSR) to -inf, take the top
max(ks) items and compare them with the user's truth items (``metrics.py``).  The hot loop per
chunk of users is ``matmul -> exclusion fill (-inf) -> topk``, plus a cheap tie fix-up.

Determinism (results independent of ``user_chunk`` and of the number of ranks):

* Ties are broken by the LOWER item id: the ranked list is ordered by (score desc, item id asc).
  ``torch.topk`` picks arbitrarily among equal scores, so ``topk_lowest_id`` repairs only the
  rows where a tied item was left out at the K-th position and then sorts the K picked items
  stably.  (Popularity scores are integer counts with many ties, so this matters.)
* The evaluated users are de-duplicated and sorted; users with no truth item are skipped.
  Sorted users are cut into chunks of ``user_chunk``; rank r of W takes chunks r, r+W, r+2W, ...
* Per-user metric values are float64; they are summed as fixed-point int64 (value * 2**32,
  rounded), so the sum -- and the ``all_reduce(SUM)`` over ranks -- is exact and independent of
  summation order.  The rounding error is below 2**-33 per user (about 1e-10).
  Every rank returns the same averaged metrics.
* Caveat: this makes the ranking a pure function of each user's score row.  A float matmul may
  round differently for different chunk sizes (BLAS blocking); that can only swap items whose
  scores differ in the last bits, but exact invariance needs bit-identical scores.

``user_vecs_fn`` / ``score_fn`` must be rank-local (no collectives inside): ranks may process
different numbers of chunks.  The only collective is one ``all_reduce`` at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from .metrics import check_ks, hit_matrix, metric_keys, per_user_metrics

FIXED_POINT_SCALE = 2**32  # metric sums are exact int64 multiples of 1/2**32
_MAX_USERS = 2**31  # keeps sum(value * 2**32) < 2**63 for values in [0, 1]


@dataclass
class CSR:
    """Compressed sparse rows of (user -> items): row u is ``indices[indptr[u]:indptr[u+1]]``.

    ``indptr`` has ``num_rows + 1`` int64 entries; ``indices`` are int64 item ids, sorted and unique
    within each row when built by ``build_csr``.
    """

    indptr: torch.Tensor
    indices: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    def row_lengths(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def gather(self, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sub-CSR of ``rows`` (in the given order): ``(local_indptr, indices, local_row_of_each)``."""
        rows = rows.to(self.indptr.device, torch.int64)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        local_indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(lengths, 0, out=local_indptr[1:])
        local_row = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), lengths)
        total = int(local_indptr[-1])
        positions = torch.arange(total, device=rows.device) - local_indptr[:-1][local_row] + starts[local_row]
        return local_indptr, self.indices[positions], local_row

    def to_pairs(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """All (user, item) pairs as two int64 tensors."""
        users = torch.repeat_interleave(torch.arange(self.num_rows), self.row_lengths())
        return users, self.indices


def as_id_tensor(x, name: str) -> torch.Tensor:
    """Flat int64 CPU tensor from integer ids (numpy, torch or list); float/bool ids are an error."""
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
        if not x.flags.writeable:  # read-only (e.g. Arrow-backed) ids: torch must not share that memory
            x = x.copy()
    t = torch.as_tensor(x)
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}")
    return t.reshape(-1).to(torch.int64).cpu()


def build_csr(users, items, num_users: int) -> CSR:
    """CSR of ``num_users`` rows from parallel (user, item) id arrays (numpy or torch).

    Pairs are de-duplicated and each row's items sorted ascending.
    """
    users = as_id_tensor(users, "users")
    items = as_id_tensor(items, "items")
    if users.numel() != items.numel():
        raise ValueError(f"users and items differ in length ({users.numel()} vs {items.numel()})")
    if users.numel():
        if int(users.min()) < 0 or int(users.max()) >= num_users:
            raise ValueError(f"user ids must lie in [0, {num_users}), got [{int(users.min())}, {int(users.max())}]")
        if int(items.min()) < 0:
            raise ValueError(f"item ids must be >= 0, got {int(items.min())}")
        stride = int(items.max()) + 1
        keys = torch.unique(users * stride + items)  # sorted, unique
        users, items = keys // stride, keys % stride
    indptr = torch.zeros(num_users + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(users, minlength=num_users), 0, out=indptr[1:])
    return CSR(indptr=indptr, indices=items)


def merge_csr(*csrs: CSR) -> CSR:
    """Union of several CSRs with the same number of rows (e.g. train + valid items to exclude)."""
    num_rows = csrs[0].num_rows
    if any(c.num_rows != num_rows for c in csrs):
        raise ValueError(f"cannot merge CSRs with different row counts {[c.num_rows for c in csrs]}")
    pairs = [c.to_pairs() for c in csrs]
    return build_csr(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]), num_rows)


def topk_lowest_id(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` per row ordered by (score desc, column asc): ties go to the lower column (item id).

    Returns ``(values, indices)``, both ``[n, k]``.  Raises on NaN scores.
    """
    # One extra rank tells, without another pass over all items, whether a row is ambiguous:
    # the (k+1)-th best score equals the k-th, so topk may have left out a lower-id tied item.
    k_plus = min(k + 1, scores.shape[1])
    values, indices = torch.topk(scores, k_plus, dim=1, largest=True, sorted=True)
    if torch.isnan(values).any():  # topk ranks NaN highest, so any NaN shows up here
        raise ValueError("scores contain NaN; cannot rank items")
    ambiguous = values[:, k_plus - 1] == values[:, k - 1] if k_plus > k else None
    values, indices = values[:, :k], indices[:, :k]
    threshold = values[:, -1:]
    if ambiguous is not None and bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        s, t = scores[rows], threshold[rows]
        above, tied = s > t, s == t
        need = k - above.sum(1, keepdim=True)  # tied slots to fill, lowest ids first
        chosen = above | (tied & (torch.cumsum(tied, 1) <= need))
        indices[rows] = chosen.nonzero()[:, 1].view(-1, k)
    # Order the k picked items by (score desc, id asc): sort ids, then stable sort on score.
    indices = torch.sort(indices, dim=1).values
    values = scores.gather(1, indices)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), indices.gather(1, order)


def fill_excluded(scores: torch.Tensor, exclude: CSR, chunk_users: torch.Tensor) -> None:
    """Set each user's excluded items to -inf, in place."""
    _, cols, local_row = exclude.gather(chunk_users)
    if cols.numel():
        scores.index_put_((local_row.to(scores.device), cols.to(scores.device)),
                          torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))


def _chunks_of_rank(users: torch.Tensor, user_chunk: int, rank: int, world_size: int):
    """The chunks of (sorted) ``users`` that ``rank`` evaluates: chunk c goes to rank c % world_size."""
    num_chunks = (users.numel() + user_chunk - 1) // user_chunk
    for c in range(rank, num_chunks, world_size):
        yield users[c * user_chunk:(c + 1) * user_chunk]


def eval_users(truth: CSR, users) -> torch.Tensor:
    """Sorted unique ``users`` that have at least one truth item (the users that get evaluated)."""
    users = torch.unique(as_id_tensor(users, "users"))
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= truth.num_rows):
        raise ValueError(f"user ids must lie in [0, {truth.num_rows}), got [{int(users.min())}, {int(users.max())}]")
    return users[truth.row_lengths()[users] > 0]


def checked_ranking_inputs(num_items: int, exclude: CSR, truth: CSR, users, ks: Sequence[int],
                           user_chunk: int) -> Tuple[list, torch.Tensor]:
    """``(ks, eval_users(truth, users))`` after checking what a full ranking is given: the CSRs' shapes and item
    ids against ``num_items``, a positive ``user_chunk``, a user count the fixed-point sums hold."""
    ks = check_ks(ks)
    if user_chunk <= 0:
        raise ValueError(f"user_chunk must be positive, got {user_chunk}")
    for name, csr in (("exclude", exclude), ("truth", truth)):
        if csr.num_rows != truth.num_rows:
            raise ValueError(f"{name} has {csr.num_rows} rows but truth has {truth.num_rows}")
        if csr.indices.numel() and int(csr.indices.max()) >= num_items:
            raise ValueError(f"{name} holds item id {int(csr.indices.max())} >= num_items={num_items}")
    users = eval_users(truth, users)
    if users.numel() >= _MAX_USERS:
        raise ValueError(f"too many users for exact fixed-point sums: {users.numel()}")
    return ks, users


def local_ranking_sums(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    num_items: int,
    exclude: CSR,
    truth: CSR,
    users,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """This rank's share of the work: int64 ``[len(metric_keys(ks)) + 1]`` fixed-point metric sums
    followed by the number of users evaluated.  Summing the results of ranks 0..W-1 gives exactly
    the ``world_size=1`` result.
    """
    ks, users = checked_ranking_inputs(num_items, exclude, truth, users, ks, user_chunk)
    keys = metric_keys(ks)
    kmax = max(ks)
    k_eff = min(kmax, num_items)
    totals = torch.zeros(len(keys) + 1, dtype=torch.int64)
    for chunk in _chunks_of_rank(users, user_chunk, rank, world_size):
        scores = score_fn(chunk)
        if scores.shape != (chunk.numel(), num_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {(chunk.numel(), num_items)}")
        fill_excluded(scores, exclude, chunk)
        values, items = topk_lowest_id(scores, k_eff)
        totals[:-1] += _chunk_sums(items, values, truth, chunk, ks, kmax)
        totals[-1] += chunk.numel()
        del scores, values, items  # free this chunk's scores before the next chunk allocates its own
    return totals


def _chunk_sums(items: torch.Tensor, values: torch.Tensor, truth: CSR, chunk: torch.Tensor, ks: Sequence[int],
                kmax: int) -> torch.Tensor:
    """int64 fixed-point metric sums of one user chunk from its ranked ``items`` (``[n, k]``, best first; slots
    with a -inf ``value`` are not candidates), in ``metric_keys(ks)`` order."""
    truth_indptr, truth_items, _ = truth.gather(chunk)
    hits = hit_matrix(items.cpu(), truth_indptr, truth_items, valid=(values > float("-inf")).cpu())
    if hits.shape[1] < kmax:  # fewer items than the largest cut-off: the missing ranks are misses
        hits = torch.cat([hits, hits.new_zeros(hits.shape[0], kmax - hits.shape[1])], dim=1)
    per_user = per_user_metrics(hits, truth_indptr[1:] - truth_indptr[:-1], ks)
    fixed = torch.stack([torch.round(per_user[key] * FIXED_POINT_SCALE) for key in metric_keys(ks)])
    return fixed.to(torch.int64).sum(1).cpu()


def _metrics(totals: torch.Tensor, ks: Sequence[int]) -> Dict[str, float]:
    """The averaged metrics dict from the summed fixed-point ``totals`` (+ the user count, last)."""
    count = int(totals[-1])
    if count == 0:
        raise ValueError("no user to evaluate: none of the given users has a truth item")
    result = {key: int(s) / FIXED_POINT_SCALE / count for key, s in zip(metric_keys(ks), totals[:-1].tolist())}
    result["num_users"] = count
    return result


def _resolve_group(group):
    """(rank, world_size) of this process in ``group``; (0, 1) when not distributed."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _all_reduce_sum(totals: torch.Tensor, group) -> torch.Tensor:
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    reduced = totals.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    return reduced.cpu()


def evaluate_scores(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    num_items: int,
    exclude: CSR,
    truth: CSR,
    users,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    group=None,
) -> Dict[str, float]:
    """Full-ranking metrics for a custom scorer ``score_fn(user_ids) -> Tensor[n, num_items]``.

    ``score_fn`` must return a fresh tensor (it is modified in place).  Distributed when
    torch.distributed is initialized or ``group`` is given; every rank returns the same dict:
    ``precision@K``, ``recall@K``, ``hit@K``, ``ndcg@K`` per K, and ``num_users``.
    """
    ks = check_ks(ks)
    rank, world_size = _resolve_group(group)
    totals = local_ranking_sums(score_fn, num_items, exclude, truth, users, ks, user_chunk, rank, world_size)
    if world_size > 1 or group is not None:
        totals = _all_reduce_sum(totals, group)
    return _metrics(totals, ks)


def evaluate_full_ranking(
    user_vecs_fn: Union[Callable[[torch.Tensor], torch.Tensor], torch.Tensor],
    item_vecs: torch.Tensor,
    exclude: CSR,
    truth: CSR,
    users,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    group=None,
) -> Dict[str, float]:
    """Full-ranking metrics with scores ``user_vec @ item_vecs.T`` over all items.

    ``user_vecs_fn`` is either a ``[num_users, D]`` tensor or a callable ``user_ids -> Tensor[n, D]``
    (computed lazily per chunk; receives a CPU LongTensor).  Scores are computed on
    ``item_vecs.device`` in ``item_vecs.dtype``.  See ``evaluate_scores`` for the returned dict.
    """
    if item_vecs.dim() != 2:
        raise ValueError(f"item_vecs must be [num_items, D], got shape {tuple(item_vecs.shape)}")
    if isinstance(user_vecs_fn, torch.Tensor):
        table = user_vecs_fn

        def user_vecs(ids: torch.Tensor) -> torch.Tensor:
            return table[ids.to(table.device)]
    else:
        user_vecs = user_vecs_fn
    item_t = item_vecs.t()

    def score_fn(ids: torch.Tensor) -> torch.Tensor:
        return user_vecs(ids).to(device=item_vecs.device, dtype=item_vecs.dtype) @ item_t

    return evaluate_scores(score_fn, item_vecs.shape[0], exclude, truth, users, ks, user_chunk, group)


def evaluate_item_sharded(
    user_vecs_fn: Callable[[torch.Tensor], torch.Tensor],
    local_items: torch.Tensor,
    item_lo: int,
    num_items: int,
    exclude: CSR,
    truth: CSR,
    users,
    ks: Sequence[int] = (10, 20),
    user_chunk: int = 1024,
    group=None,
) -> Dict[str, float]:
    """Full ranking with the items cut across ranks: this rank holds the vectors of items
    ``[item_lo, item_lo + len(local_items))`` only.  Every rank takes every chunk of users: it scores them
    against its own items, sets their excluded items that fall in its slice to -inf, and keeps its top-K by
    (score desc, item id asc); the ranks' candidates are all-gathered and merged in the same order, so each
    user's ranked list is the one ``evaluate_full_ranking`` makes over all items.  ``user_vecs_fn(ids)`` may be
    a collective (every rank calls it for the same chunks in the same order).  Every rank returns the same dict.
    """
    ks = check_ks(ks)
    rank, world_size = _resolve_group(group)
    users = eval_users(truth, users)
    keys, kmax = metric_keys(ks), max(ks)
    k_eff = min(kmax, num_items)
    n_local = local_items.shape[0]
    item_t = local_items.t()
    totals = torch.zeros(len(keys) + 1, dtype=torch.int64)
    for start in range(0, users.numel(), user_chunk):
        chunk = users[start:start + user_chunk]
        scores = user_vecs_fn(chunk).to(device=local_items.device, dtype=local_items.dtype) @ item_t
        _, cols, rows = exclude.gather(chunk)
        mine = (cols >= item_lo) & (cols < item_lo + n_local)
        if bool(mine.any()):
            scores.index_put_((rows[mine].to(scores.device), (cols[mine] - item_lo).to(scores.device)),
                              torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
        k_local = min(k_eff, n_local)
        values = torch.full((chunk.numel(), k_eff), float("-inf"), dtype=scores.dtype, device=scores.device)
        items = torch.full((chunk.numel(), k_eff), num_items, dtype=torch.int64, device=scores.device)
        if k_local:
            v, i = topk_lowest_id(scores, k_local)
            values[:, :k_local], items[:, :k_local] = v, i + item_lo
        del scores  # before the next chunk's scores exist (one chunk of users x own items alive at a time)
        if world_size > 1:  # every rank's candidates, merged by (score desc, id asc)
            all_values = [torch.empty_like(values) for _ in range(world_size)]
            all_items = [torch.empty_like(items) for _ in range(world_size)]
            dist.all_gather(all_values, values, group=group)
            dist.all_gather(all_items, items, group=group)
            values, items = torch.cat(all_values, 1), torch.cat(all_items, 1)
            by_id = torch.sort(items, dim=1, stable=True).indices
            values, items = values.gather(1, by_id), items.gather(1, by_id)
            by_score = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k_eff]
            values, items = values.gather(1, by_score), items.gather(1, by_score)
        totals[:-1] += _chunk_sums(items, values, truth, chunk, ks, kmax)
        totals[-1] += chunk.numel()
    return _metrics(totals, ks)
