"""Command line: ``metammf-dist <command>`` (also ``python -m metammf_dist``).

Each command lives in its own module; this file only wires argparse to them.  Modules are imported
lazily so ``metammf-dist info`` does not pay for importing DeepSpeed.
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import signal
import sys
import traceback
from typing import List, Optional

# command name -> module with ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "prepare": ("metammf_dist.commands.prepare", "import a public dataset into the canonical form"),
    "synth": ("metammf_dist.commands.synth", "generate a synthetic catalog with planted structure"),
    "info": ("metammf_dist.commands.info", "summarize a dataset (and --verify its shards) or a model config"),
    "train": ("metammf_dist.commands.train", "train (and evaluate) a model from a YAML config"),
    "evaluate": ("metammf_dist.commands.evaluate", "evaluate the best checkpoint of a run folder"),
    "export": ("metammf_dist.commands.export", "export user/item vectors and top-K lists of a run to Parquet"),
    "plan": ("metammf_dist.commands.plan", "predict per-rank memory for a config, world size and ZeRO stage"),
    "scale": ("metammf_dist.commands.scale", "scaling sweep over synthetic catalogs: CSV, markdown table, plots"),
    "bench": ("metammf_dist.commands.bench", "benchmarks: features | fusion | train | sampler | eval"),
    "ablate": ("metammf_dist.commands.ablate", "seeded fusion ablation: variants x seeds, paired intervals (CSV, markdown)"),
    "probe": ("metammf_dist.commands.probe", "linear probes of a run's meta vectors s_i (planted gate, modality, popularity)"),
}


class UserError(Exception):
    """An error the user can fix (bad input, bad config); printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metammf-dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack: the first thing to look at when a rank seems stuck.
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, OSError):  # stderr is not a real file (e.g. captured in-process)
        pass
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a trailing `key=value ...` positional once an option follows the first
    # positional (`train CONFIG --resume a=b`); such leftovers are overrides too.
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the process boundary: every failure ends here, once
        message = user_error_message(exc)
        if message is None:  # a bug: its traceback, printed once, exit code 1
            traceback.print_exc()
            return 1
        rank = os.environ.get("RANK", "0")
        where = f" (rank {rank})" if rank not in ("", "0") else ""
        print(f"metammf-dist {args.command}{where}: error: {message}", file=sys.stderr, flush=True)
        if os.environ.get("METAMMF_TRACEBACK"):
            traceback.print_exc()
        return 2


STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp")


def user_error_message(exc: BaseException) -> Optional[str]:
    """One line for an error the user can fix (bad input, config, file system, storage), else None (a bug).

    ``METAMMF_TRACEBACK=1`` prints the traceback after the line as well."""
    from metammf_dist.config import ConfigError
    from metammf_dist.errors import DataError, TrainingError

    try:
        from sharding import StoreError
    except ImportError:  # pragma: no cover - sharding always ships with the package
        StoreError = ()  # type: ignore
    if isinstance(exc, (UserError, ConfigError, DataError, TrainingError, StoreError)):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        cause = exc.strerror or str(exc) or type(exc).__name__
        return f"{where}: {cause}" if where else f"{cause} ({type(exc).__name__})"
    if type(exc).__module__.split(".")[0] in STORAGE_MODULES:
        return f"storage: {type(exc).__name__}: {exc}"
    return None


def entry() -> None:
    """The process entry point (console script and ``python -m metammf_dist``): ``main``, then ``os._exit``.

    Every command leaves through ``os._exit`` once it has returned (its files closed, a distributed run's final
    barrier passed), after flushing the standard streams and logging.  Interpreter teardown aborted finished
    processes ("terminate called without an active exception") in two ways, both caught under gdb: with a
    live gloo group (about 1 run in 12 of a 2-rank test), and after Parquet reads through Python file objects,
    whose buffers Arrow's pool threads release late and cannot, at teardown, take the GIL to free (`bench
    shard` 4 runs in 10, even with single-threaded reads in the dataset code).  ``main`` itself stays an
    ordinary function for in-process callers.
    """
    import logging

    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
