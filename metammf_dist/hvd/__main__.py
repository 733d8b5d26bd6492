"""``python -m metammf_dist.hvd CONFIG [key=value ...]``: train with Horovod (run it under ``horovodrun``)."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metammf_dist.hvd", description=__doc__)
    parser.add_argument("config", help="YAML experiment config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.graph_backend=torch")
    args = parser.parse_args(argv)

    from metammf_dist.cli import user_error_message
    from metammf_dist.config import load_config, require_data_path
    from metammf_dist.hvd.trainer import HorovodTrainer

    try:
        cfg = require_data_path(load_config(args.config, args.overrides))
    except Exception as exc:  # noqa: BLE001 - a bad config: one line, exit 2 (as the main CLI)
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"python -m metammf_dist.hvd: error: {message}", file=sys.stderr)
        return 2
    trainer = HorovodTrainer(cfg)
    metrics = trainer.fit()
    if trainer.rank == 0:
        print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
