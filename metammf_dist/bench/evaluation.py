"""``metammf-dist bench eval``: full-ranking evaluation throughput vs a bare ``matmul + topk`` of the same shapes.

Random float32 user and item vectors (``--users`` x ``--dim``, ``--items`` x ``--dim``, seeded), a random
exclusion CSR (``--train-per-user`` items per user, as train items) and truth CSR (``--truth-per-user``).

* ours: ``evaluation.ranking.evaluate_full_ranking`` (chunks of ``--user-chunk`` users: matmul, exclusion
  fill with -inf, top-K with the lowest-id tie rule, hit matrix, Precision/Recall/HitRate/NDCG at K = 10, 20);
* bare: the same chunks of users, ``scores = U[chunk] @ I.T`` then ``torch.topk(scores, max K)`` — nothing else.

Both run in this process, on the same tensors and thread count, interleaved (bare, ours, bare, ours, ...)
for ``--rounds`` rounds; each side's figure is its best (minimum) round, as ``timeit`` advises (other load
on a shared machine only ever adds time).  Ends with one JSON line: ``eval_vs_bare`` (ours users/s ÷ bare
users/s; target >= 0.5), both throughputs and the shapes.
"""
from __future__ import annotations

import json
import time
from typing import Dict, List

import numpy as np

TARGET = 0.5


def add_arguments(parser) -> None:
    parser.add_argument("--users", type=int, default=20_000, help="evaluated users")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalog size (all items are ranked)")
    parser.add_argument("--dim", type=int, default=64, help="vector width D")
    parser.add_argument("--user-chunk", type=int, default=1024, help="users per scoring chunk (both sides)")
    parser.add_argument("--train-per-user", type=int, default=20, help="excluded (train) items per user")
    parser.add_argument("--truth-per-user", type=int, default=5, help="truth (test) items per user")
    parser.add_argument("--ks", default="10,20", help="cut-offs")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each side is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2,000 users x 100,000 items (a smoke run)")


def make_inputs(users: int, items: int, dim: int, train_per_user: int, truth_per_user: int, seed: int) -> Dict:
    """Seeded random vectors and CSRs (duplicates within a user are dropped by ``build_csr``)."""
    import torch

    from metammf_dist.evaluation.ranking import build_csr

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    user_vecs = torch.randn(users, dim, generator=gen)
    item_vecs = torch.randn(items, dim, generator=gen)
    ex_u = np.repeat(np.arange(users, dtype=np.int64), train_per_user)
    ex_i = rng.integers(0, items, ex_u.size, dtype=np.int64)
    tr_u = np.repeat(np.arange(users, dtype=np.int64), truth_per_user)
    tr_i = rng.integers(0, items, tr_u.size, dtype=np.int64)
    return {
        "user_vecs": user_vecs,
        "item_vecs": item_vecs,
        "exclude": build_csr(ex_u, ex_i, users),
        "truth": build_csr(tr_u, tr_i, users),
        "users": torch.arange(users, dtype=torch.int64),
    }


def run_ours(inputs: Dict, ks: List[int], user_chunk: int) -> Dict:
    from metammf_dist.evaluation.ranking import evaluate_full_ranking

    return evaluate_full_ranking(inputs["user_vecs"], inputs["item_vecs"], inputs["exclude"], inputs["truth"],
                                 inputs["users"], ks=tuple(ks), user_chunk=user_chunk)


def run_bare(inputs: Dict, k: int, user_chunk: int) -> int:
    """``matmul + topk`` over the same user chunks; returns a checksum so nothing is optimized away."""
    import torch

    user_vecs, item_t = inputs["user_vecs"], inputs["item_vecs"].t()
    total = 0
    for lo in range(0, user_vecs.shape[0], user_chunk):
        scores = user_vecs[lo:lo + user_chunk] @ item_t
        _, top = torch.topk(scores, k, dim=1)
        total += int(top[:, 0].sum())
    return total


def run_benchmark(users: int = 20_000, items: int = 1_000_000, dim: int = 64, user_chunk: int = 1024,
                  train_per_user: int = 20, truth_per_user: int = 5, ks=(10, 20), rounds: int = 2, threads: int = 2,
                  seed: int = 0) -> Dict:
    import torch

    torch.set_num_threads(threads)
    ks = sorted(int(k) for k in ks)
    inputs = make_inputs(users, items, dim, train_per_user, truth_per_user, seed)
    bare_times, ours_times, metrics = [], [], {}
    for _ in range(max(1, rounds)):
        t0 = time.perf_counter()
        run_bare(inputs, max(ks), user_chunk)
        bare_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        metrics = run_ours(inputs, ks, user_chunk)
        ours_times.append(time.perf_counter() - t0)
    bare_s, ours_s = min(bare_times), min(ours_times)
    evaluated = int(metrics["num_users"])
    return {
        "eval_vs_bare": bare_s / ours_s if ours_s > 0 else float("inf"),
        "ours_users_per_s": evaluated / ours_s,
        "bare_users_per_s": users / bare_s,
        "ours_seconds": ours_s,
        "bare_seconds": bare_s,
        "ours_rounds_s": ours_times,
        "bare_rounds_s": bare_times,
        "users": users, "evaluated_users": evaluated, "items": items, "dim": dim, "user_chunk": user_chunk,
        "ks": ks, "threads": threads, "rounds": rounds,
        "target_met": bare_s / ours_s >= TARGET if ours_s > 0 else True,
    }


def run(args) -> int:
    users, items = (2_000, 100_000) if args.quick else (args.users, args.items)
    ks = [int(k) for k in str(args.ks).split(",") if k.strip()]
    out = run_benchmark(users=users, items=items, dim=args.dim, user_chunk=args.user_chunk,
                        train_per_user=args.train_per_user, truth_per_user=args.truth_per_user, ks=ks,
                        rounds=args.rounds, threads=args.threads, seed=args.seed)
    print(f"full ranking of {items:,} items for {users:,} users, {args.dim}-d float32, "
          f"chunks of {args.user_chunk} users, {args.threads} threads, best of {out['rounds']} interleaved rounds")
    print(f"  bare matmul + topk({max(ks)}): {out['bare_seconds']:.2f} s  ({out['bare_users_per_s']:,.0f} users/s)")
    print(f"  evaluate_full_ranking:     {out['ours_seconds']:.2f} s  ({out['ours_users_per_s']:,.0f} users/s)")
    print(f"  ours / bare throughput: {out['eval_vs_bare']:.2f} (target >= {TARGET})")
    print(json.dumps(out))
    return 0
