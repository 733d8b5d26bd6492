"""Re-plan the points of a finished sweep (no training): each point's ``plan`` next to its measured peak.

    .venv/bin/python scripts/replan_sweep.py [SWEEP.yaml] [RESULTS.csv]
    (defaults: configs/sweeps/full.yaml, bench_out/scale/full/results.csv)

Uses the runtime baseline the sweep measured (``plan_baseline_mb`` of its first row), so a planner change can
be checked against measured peaks without rerunning the sweep.
"""
from __future__ import annotations

import csv
import sys

import metammf_dist.scaling.point as point
from metammf_dist.scaling.sweep import load_sweep


def main() -> None:
    sweep_path = sys.argv[1] if len(sys.argv) > 1 else "configs/sweeps/full.yaml"
    results = sys.argv[2] if len(sys.argv) > 2 else "bench_out/scale/full/results.csv"
    sweep = load_sweep(sweep_path)
    rows = list(csv.DictReader(open(results)))
    baseline = int(float(rows[0]["plan_baseline_mb"]) * 2**20)
    point.runtime_baseline = lambda: baseline
    worst = 0.0
    for row in rows:
        series = next(s for s in sweep.series if s.name == row["series"])
        overrides = point.point_overrides(sweep, series, _data_path(row), row["run_dir"])
        plan = point.plan_point(sweep, series, overrides)["plan_peak_mb"]
        err = plan / float(row["peak_rss_mb"]) - 1
        worst = max(worst, abs(err))
        print(f"{row['series']:26s} {int(row['items']):>10,d} items: measured {float(row['peak_rss_mb']):7.0f} MiB, "
              f"plan {plan:7.0f} MiB ({err:+.1%}; at the sweep {float(row['plan_error']):+.1%})")
    print(f"largest |plan error|: {worst:.1%}")


def _data_path(row) -> str:
    """The catalog folder a point trained on (its run's resolved config says it)."""
    import yaml

    return yaml.safe_load(open(f"{row['run_dir']}/config.yaml"))["data"]["path"]


if __name__ == "__main__":
    main()
