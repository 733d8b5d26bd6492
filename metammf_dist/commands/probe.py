"""``metammf-dist probe RUN_DIR [--data PATH]``: linear probes of a run's meta vectors s_i (R² of the planted gate
on ``synth --planted-fusion`` catalogs, of modality dominance and of popularity); one JSON line
(``metammf_dist/ablation/probe.py``)."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--data", default=None, help="dataset path if it moved since training")


def run(args) -> int:
    from metammf_dist.ablation.probe import probe_run

    result = probe_run(args.run_dir, args.data)
    if not result:
        from metammf_dist.errors import TrainingError

        raise TrainingError(f"{args.run_dir}: this fusion kind has no meta-learner to probe")
    print(json.dumps(result, sort_keys=True))
    return 0
