"""One-hop neighbour sampling time at 10k and 1M nodes per side (10 edges per node), and, side by side, the
two ways of gathering history rows (``t[ids]`` vs ``index_select``) from a 1M x 64 table.

    .venv/bin/python experiments/bench_sampler.py [--sizes 10000 1000000] [--backend torch|dgl]

Prints ms per ``sample_blocks`` call (3,000 seed edges, fan-out 10, median of 20) with a checksum of the
sampled nodes (equal checksums = identical samples; run it at an older commit to compare), then the two
gather timings measured in the same process.  Synthetic random graphs, seeded; 2 threads.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from metammf_dist.sampler import build_train_graph
from metammf_dist.sampler.neighbor import UniformNeighborSampler
from metammf_dist.sampler.torch_neighbor import TorchNeighborSampler


def _timed(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--backend", choices=["torch", "dgl"], default="torch")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for n in args.sizes:
        rng = np.random.default_rng(0)
        pairs = np.unique(np.stack([rng.integers(0, n, 10 * n), rng.integers(0, n, 10 * n)], 1), axis=0)
        graph = build_train_graph(pairs[:, 0], pairs[:, 1], n, n, backend=args.backend)
        sampler = (TorchNeighborSampler if args.backend == "torch" else UniformNeighborSampler)(graph, [10])
        eids = torch.from_numpy(rng.choice(len(pairs), 3000, replace=False))
        users = torch.unique(torch.from_numpy(pairs[eids.numpy(), 0]))
        items = torch.unique(torch.cat([torch.from_numpy(pairs[eids.numpy(), 1]),
                                        torch.from_numpy(rng.integers(0, n, 3000))]))
        in_users, in_items, _ = sampler.sample_blocks(users, items, eids, sampler.generator(1))
        ms = _timed(lambda: sampler.sample_blocks(users, items, eids, sampler.generator(1)))
        print(f"{n:>9,} nodes per side ({args.backend}): {ms:6.2f} ms per sample; input users / items "
              f"{in_users.numel():,} / {in_items.numel():,}, checksum {int(in_users.sum())} {int(in_items.sum())}")
    table = torch.randn(1_000_000, 64)
    ids = torch.randint(0, 1_000_000, (35_000,))
    fancy, select = _timed(lambda: table[ids]), _timed(lambda: table.index_select(0, ids))
    print(f"35k rows from a 1M x 64 table: t[ids] {fancy:.2f} ms, index_select {select:.2f} ms "
          f"({fancy / select:.1f}x)")


if __name__ == "__main__":
    main()
