"""``metammf-dist ablate CONFIG --out DIR --seeds N [--variants meta,cp,static,id] [--reference static] [--jobs J]
[key=value ...]``: train every variant on seeds 1..N (resumable), write ``DIR/results.csv`` and ``results.md``.
``metammf-dist ablate --report DIR/results.csv [--reference static] [--metrics recall@20,ndcg@20]``: print the
tables again from the CSV alone (with ``--metrics``: one compact row per variant).

Variants and what a seed shares across them: ``metammf_dist/ablation/runner.py``; the tables:
``ablation/report.py``.  Run it with ``OMP_NUM_THREADS=1`` in the environment for bit-reproducible probes (each
training run gets one thread either way).
"""
from __future__ import annotations

from metammf_dist.config import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="YAML experiment config (the base every variant overrides)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every variant (e.g. model.scorer=mf)")
    parser.add_argument("--out", help="output folder: runs/, results.csv, results.md, ablation.json")
    parser.add_argument("--seeds", type=int, default=8, help="train seeds 1..N (default 8)")
    parser.add_argument("--variants", default="meta,cp,static,id",
                        help="comma-separated, of meta, cp, static, static-wide, id (default: meta,cp,static,id)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="training runs at once, each a one-thread process (default 1; at most one per core)")
    parser.add_argument("--reference", default="static", help="the variant differences are taken to (default static)")
    parser.add_argument("--report", metavar="CSV", help="only print the tables of an existing results.csv")
    parser.add_argument("--metrics", default=None, metavar="A,B",
                        help="with --report: one compact row per variant for these metrics (e.g. recall@20,ndcg@20)")


def run(args) -> int:
    if args.report:
        from metammf_dist.ablation.report import report

        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        print(report(args.report, args.reference, metrics), end="")
        return 0
    if not args.config or not args.out:
        raise ConfigError("ablate: give CONFIG and --out DIR (or --report CSV)")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: need at least 1, got {args.jobs}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds: need at least 1, got {args.seeds}")
    from metammf_dist.ablation.runner import Ablation, run_ablation

    ab = Ablation(config=args.config, out=args.out, seeds=list(range(1, args.seeds + 1)),
                  variants=[v.strip() for v in args.variants.split(",") if v.strip()],
                  overrides=list(args.overrides), reference=args.reference)
    csv_path = run_ablation(ab, log=lambda line: print(line, flush=True), jobs=args.jobs)
    print((csv_path.parent / "results.md").read_text(), end="")
    return 0
