"""``metammf-dist scale SWEEP.yaml``: run a scaling sweep over synthetic catalogs; CSV, markdown, plots.

Each point (catalog size x series, see ``scaling/sweep.py``) is a real ``train`` run in its own process(es);
results are written after every point, so an interrupted sweep keeps what it measured (``--resume`` skips
points already in ``results.csv``).  Ends with one JSON line: the growth figures per series and the
largest plan error.
"""
from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("sweep", help="sweep YAML (configs/sweeps/ci.yaml, configs/sweeps/full.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: the sweep's out)")
    parser.add_argument("--data-dir", default=None, help="where synthetic catalogs are generated/reused "
                        "(default: the sweep's data_dir)")
    parser.add_argument("--resume", action="store_true", help="keep the points already in results.csv")
    parser.add_argument("--only", default=None, help="comma list of series names to run")
    parser.add_argument("--replan", action="store_true",
                        help="with --resume: re-plan the kept points with the current planner (no training)")


def _read_rows(path: Path):
    if not path.is_file():
        return []
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    numeric = {"items", "users", "interactions", "feat_dim", "world_size", "zero_stage", "refresh_every",
               "eval_users", "train_steps"}
    out = []
    for r in rows:
        conv = {}
        for k, v in r.items():
            if k in ("series", "fusion_cache", "run_dir"):
                conv[k] = v
            elif k in numeric:
                conv[k] = int(float(v))
            else:
                conv[k] = float(v)
        out.append(conv)
    return out


def run(args) -> int:
    from metammf_dist.scaling.point import replan_row, run_point
    from metammf_dist.scaling.report import growth, markdown, plots, write_csv
    from metammf_dist.scaling.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    if args.out:
        sweep.out = args.out
    if args.data_dir:
        sweep.data_dir = args.data_dir
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    rows = _read_rows(out / "results.csv") if args.resume else []
    if args.replan:
        by_name = {s.name: s for s in sweep.series}
        rows = [replan_row(sweep, by_name[r["series"]], r) if r["series"] in by_name else r for r in rows]
        if rows:
            write_csv(rows, out / "results.csv")
    done = {(r["series"], r["items"]) for r in rows}
    command = "metammf-dist scale " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else \
        f"metammf-dist scale {args.sweep}"
    points = [(c, s) for c, s in sweep.points() if (only is None or s.name in only) and (s.name, c.items) not in done]
    print(f"scale sweep '{sweep.name}': {len(points)} point(s) to run -> {out}", flush=True)
    for cat, series in points:
        rows.append(run_point(sweep, cat, series, log=lambda m: print(m, flush=True)))
        rows.sort(key=lambda r: ([s.name for s in sweep.series].index(r["series"])
                                 if r["series"] in [s.name for s in sweep.series] else 99, r["items"]))
        write_csv(rows, out / "results.csv")
        (out / "results.md").write_text(markdown(rows, sweep.name, command))
    if rows:
        written = plots(rows, out)
        (out / "results.md").write_text(markdown(rows, sweep.name, command)
                                        + "\n" + "\n".join(f"![{w}]({w})" for w in written) + "\n")
    summary = {"sweep": sweep.name, "points": len(rows), "out": str(out),
               "max_abs_plan_error": max((abs(r["plan_error"]) for r in rows), default=0.0),
               "growth": {g["series"]: {k: g[k] for k in ("from_items", "to_items", "cost_growth",
                                                           "fused_items_growth", "rss_growth", "eval_growth")}
                          for g in growth(rows)}}
    print(json.dumps(summary))
    return 0
