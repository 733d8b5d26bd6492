"""Where a training step's time goes (docs/results/scaling.md's 1M-item breakdown), and what a dense Adam step over the ID
tables alone costs at that size.

    .venv/bin/python experiments/profile_step.py DATA_PATH [--steps 5] [key=value ...]
    e.g. DATA_PATH = bench_out/scale/data/synth-i1000000-u1000000-e10000000-image128-text256-s1

Builds the trainer of ``configs/scale/base.yaml`` (fusion cache on, refreshed every 500 steps, sparse ID tables,
no prefetch thread so the feature gather shows up as its own line), takes one warm-up step, then profiles
``--steps`` steps with cProfile and prints the top functions by cumulative time.  Then times three
``torch.optim.Adam`` steps over dense tables shaped like the dataset's user and item ID tables.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from metammf_dist.config import load_config
from metammf_dist.train.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_path")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sort", default="cumulative", help="pstats sort key (cumulative, tottime)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()  # key=value overrides before or after the flags
    cfg = load_config("configs/scale/base.yaml", [f"data.path={args.data_path}", "run_dir=/tmp/profile_step",
                                                  "train.fusion_cache_refresh=500", "train.num_workers=0",
                                                  *args.overrides])
    started = time.perf_counter()
    trainer = Trainer(cfg, overwrite=True)  # a scratch run folder
    print(f"setup {time.perf_counter() - started:.1f} s")
    batches = trainer.batches.epoch(0, store=trainer.store)
    trainer.train_step(next(batches), 0)  # warm-up (and the first cache refresh)
    trainer.state.global_step += 1
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(args.steps):
        batch = next(batches)
        trainer.train_step(batch, 0)
        trainer.state.global_step += 1
    profile.disable()
    print(f"{args.steps} steps: {time.perf_counter() - started:.2f} s; last batch {batch.stats()}")
    pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)

    tables = [torch.nn.Parameter(torch.randn(trainer.ds.num_users, cfg.model.user_id_dim)),
              torch.nn.Parameter(torch.randn(trainer.ds.num_items, cfg.model.item_id_dim))]
    adam = torch.optim.Adam(tables, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    for t in tables:
        t.grad = torch.randn_like(t)
    adam.step()
    started = time.perf_counter()
    for _ in range(3):
        adam.step()
    print(f"dense Adam step over the ID tables ({sum(t.numel() for t in tables):,} floats): "
          f"{(time.perf_counter() - started) / 3:.2f} s")


if __name__ == "__main__":
    main()
