"""``metammf-dist bench {features,fusion,train,sampler,eval,fullstep,shard}``: benchmark commands.

Each benchmark measures its baseline and our implementation side by side in one run and ends with one
JSON line of ratios.  Each lives in its own module with ``add_arguments(parser)`` and ``run(args)``.
"""
from __future__ import annotations

import importlib

BENCHMARKS = {
    "features": "metammf_dist.bench.features",
    "fusion": "metammf_dist.bench.fusion",
    "train": "metammf_dist.bench.train",
    "sampler": "metammf_dist.bench.sampler",
    "eval": "metammf_dist.bench.evaluation",
    "fullstep": "metammf_dist.bench.fullstep",
    "shard": "metammf_dist.bench.shard",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHMARKS.items():
        p = sub.add_parser(name)
        p.set_defaults(_bench_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError:  # benchmark not written yet
            pass


def run(args) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
