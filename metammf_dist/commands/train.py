"""``metammf-dist train CONFIG [key=value ...] [--resume]``: train, evaluate, print the test metrics.

The same entry runs single-process, under torchrun, under the deepspeed launcher and under Slurm.
The last stdout line is one JSON object of the final test metrics (rank 0 only).
"""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML experiment config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 model.fusion=cp")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest complete checkpoint")
    parser.add_argument("--sampler", choices=["neighbor", "full"], help="shortcut for train.sampler=...")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def run(args) -> int:
    from metammf_dist.config import load_config
    from metammf_dist.train.loop import Trainer

    overrides = list(args.overrides)
    if args.sampler:
        overrides.append(f"train.sampler={args.sampler}")
    cfg = load_config(args.config, overrides)
    from metammf_dist.distributed.process_group import shutdown

    trainer = Trainer(cfg)
    try:
        metrics = trainer.fit(resume=args.resume)
    except BaseException:
        # no final barrier: the other ranks may be blocked in a collective this rank will never join; the
        # traceback must reach the log and the launcher must see this rank fail (it then stops the others)
        import traceback

        traceback.print_exc()
        raise
    shutdown(trainer.info)
    if trainer.info.is_main:
        print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0
