"""``metammf-dist train CONFIG [key=value ...] [--resume | --overwrite] [--trust-checkpoint]``: train, evaluate,
print the test metrics.

The same entry runs single-process, under torchrun, under the deepspeed launcher and under Slurm.
The last stdout line is one JSON object of the final test metrics (rank 0 only).  The config is validated
before any process group starts or any data is read; the run folder is claimed (locked) next.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser) -> None:
    parser.add_argument("config", help="YAML experiment config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 model.fusion=cp")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's newest usable checkpoint (fresh if it has none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="the run folder holds another run: move it aside to RUN_DIR.replaced-<time> and start")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="with --resume: load checkpoints whose pickles name globals outside the safe list "
                             "(full pickle can run code: only for run folders you trust)")
    parser.add_argument("--sampler", choices=["neighbor", "full"], help="shortcut for train.sampler=...")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    from metammf_dist.config import ConfigError, load_config, require_data_path
    from metammf_dist.distributed.process_group import shutdown
    from metammf_dist.train.loop import Trainer

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in run_dir and --overwrite moves it aside: pass one of them")
    overrides = list(args.overrides)
    if args.sampler:
        overrides.append(f"train.sampler={args.sampler}")
    cfg = require_data_path(load_config(args.config, overrides))
    if cfg.train.id_tables == "sharded":  # before any process group: one line in the DGL lane
        from metammf_dist.distributed.sharded_ids import torchrec_missing

        reason = torchrec_missing()
        if reason:
            raise ConfigError(reason)
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, trust_checkpoint=args.trust_checkpoint)
    metrics = trainer.fit()
    shutdown(trainer.info)
    if trainer.info.is_main:
        print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0
