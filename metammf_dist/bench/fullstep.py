"""``metammf-dist bench fullstep``: the full-graph mode's step vs a cached sampled step, on catalogs too big
for the full-graph step to fit in memory at once.

A ``--sampler full`` step fuses every item with gradient and runs the GCN over the whole graph.  At 1M items
(384-d, meta fusion [256, 32]) the planner puts that step at ~22 GiB, which this 24 GiB machine cannot hold
next to anything else.  This benchmark times the same work in two parts that each fit:

1. **fusion, every item**: forward + backward of ``model.fuse`` over all items in ``--chunk``-item chunks
   (features read from the shard store; gradients accumulate in the fusion parameters as in one step);
2. **GCN, whole graph**: ID rows + the fusion outputs of part 1 (as leaves) through the 2-layer GCN over every
   user and item, forward + backward of a BPR loss on one batch of pairs.

Their sum is the full-graph step's compute (a lower bound: one step would also hold everything at once).  Next
to it, in the same process, it times ``--cached-steps`` real training steps with the fusion cache and sparse ID
tables (``Trainer.train_step``; the first refresh is timed apart and amortised over ``train.fusion_cache_refresh``
steps).  Both modes take the same batch, so the epoch ratio is the step ratio.  Ends with one JSON line: ``full_step_s``, ``cached_step_s``, ``epoch_speedup``.
"""
from __future__ import annotations

import json
import statistics
import time


def add_arguments(parser) -> None:
    parser.add_argument("config", help="training config (e.g. configs/scale/base.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (data.path=..., ...)")
    parser.add_argument("--chunk", type=int, default=50_000, help="items per fusion chunk in part 1")
    parser.add_argument("--cached-steps", type=int, default=10, help="timed cached steps (after 2 warm-up)")
    parser.add_argument("--cached-only", action="store_true", help="time the cached steps only (no full-graph parts)")
    parser.add_argument("--refresh", type=int, default=0,
                        help="fusion cache refresh period K for the cached mode (default: one epoch of steps)")


def run(args) -> int:
    import numpy as np
    import torch

    from metammf_dist.config import load_config
    from metammf_dist.train.loop import Trainer

    # the cached mode's period is --refresh (set below); the placeholder lets keys that need the cache
    # (train.gcn_history) pass validation when the config has it off
    cfg = load_config(args.config, ["train.fusion_cache_refresh=1", *args.overrides, "train.id_tables=sparse",
                                    "run_dir=/tmp/bench-fullstep"])
    # the cached mode's trainer; part 1 and 2 use its model (same weights) outside the engine
    from metammf_dist.data.dataset import Dataset
    from metammf_dist.sampler.partition import epoch_steps

    ds = Dataset.open(cfg.data.path)
    steps_per_epoch = epoch_steps(ds.num_interactions("train"), cfg.train.batch_size)
    refresh = args.refresh or steps_per_epoch
    cfg.train.fusion_cache_refresh = refresh
    trainer = Trainer(cfg, overwrite=True)  # a scratch run folder
    model, store = trainer.model, trainer.store
    print(f"catalog: {ds.num_users:,} users, {ds.num_items:,} items, {ds.num_interactions('train'):,} train pairs, "
          f"{ds.feat_dim}-d; {steps_per_epoch:,} steps per epoch at batch {cfg.train.batch_size:,}", flush=True)

    # ---- cached sampled steps ------------------------------------------------------------------------
    batches = trainer.batches.epoch(0, store=store)
    times, refresh_s = [], 0.0
    strategy = trainer.strategy
    for i in range(2 + args.cached_steps):
        strategy.last_refresh_seconds = 0.0
        t0 = time.perf_counter()
        trainer.train_step(next(batches), 0)
        seconds = time.perf_counter() - t0
        trainer.state.global_step += 1
        if strategy.last_refresh_seconds:
            refresh_s = strategy.last_refresh_seconds
            seconds -= refresh_s
        if i >= 2:
            times.append(seconds)
    cached = statistics.median(times) + refresh_s / refresh
    print(f"cached step: {statistics.median(times):.2f} s + refresh {refresh_s:.1f} s / {refresh} steps = "
          f"{cached:.2f} s", flush=True)
    batches.close()
    if args.cached_only:
        print(json.dumps({"num_items": ds.num_items, "cached_step_s": cached, "cached_refresh_s": refresh_s,
                          "refresh_every": refresh, "cache_mb": cfg.data.cache_mb}))
        return 0

    # ---- part 1: fusion of every item, forward + backward --------------------------------------------
    model.train()
    model.zero_grad(set_to_none=True)
    fused_parts = []
    t0 = time.perf_counter()
    for lo in range(0, ds.num_items, args.chunk):
        hi = min(lo + args.chunk, ds.num_items)
        feats = torch.from_numpy(np.asarray(store.gather_concat(np.arange(lo, hi)), dtype=np.float32))
        out = model.fuse(feats)
        out.sum().backward()  # a stand-in upstream gradient of the right shape
        fused_parts.append(out.detach())
    fusion_s = time.perf_counter() - t0
    print(f"part 1, fusion of {ds.num_items:,} items fwd+bwd: {fusion_s:.1f} s", flush=True)

    # ---- part 2: GCN over the whole graph, forward + backward ------------------------------------------
    fused = torch.cat(fused_parts).requires_grad_(True)
    del fused_parts
    t0 = time.perf_counter()
    item_in = torch.cat([fused, model.item_emb(torch.arange(ds.num_items))], dim=1)
    user_in = model.user_emb(torch.arange(ds.num_users))
    out = model.propagate_graph(trainer.graph, {"user": user_in, "item": item_in})
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(0, ds.num_users, (cfg.train.batch_size,), generator=gen)
    i = torch.randint(0, ds.num_items, (cfg.train.batch_size,), generator=gen)
    j = torch.randint(0, ds.num_items, (cfg.train.batch_size,), generator=gen)
    loss = torch.nn.functional.softplus((out["user"][u] * (out["item"][j] - out["item"][i])).sum(-1)).mean()
    loss.backward()
    gcn_s = time.perf_counter() - t0
    print(f"part 2, GCN over {ds.num_users + ds.num_items:,} nodes fwd+bwd: {gcn_s:.1f} s", flush=True)
    full = fusion_s + gcn_s
    summary = {"num_items": ds.num_items, "steps_per_epoch": steps_per_epoch, "full_step_s": full,
               "full_fusion_s": fusion_s, "full_gcn_s": gcn_s, "cached_step_s": cached,
               "cached_refresh_s": refresh_s, "refresh_every": refresh, "epoch_speedup": full / cached,
               "full_epoch_h": full * steps_per_epoch / 3600, "cached_epoch_h": cached * steps_per_epoch / 3600}
    print(f"full-graph step >= {full:.1f} s vs cached {cached:.2f} s: epoch {full / cached:.1f}x faster with the cache "
          f"({summary['full_epoch_h']:.1f} h vs {summary['cached_epoch_h']:.2f} h per epoch)")
    print(json.dumps(summary))
    return 0
