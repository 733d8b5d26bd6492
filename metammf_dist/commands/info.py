"""``metammf-dist info``: summarize a dataset, verify its feature shards, or count a model's parameters.

* ``info DATASET [--verify]`` - users, items, interactions per split, modalities and dims, feature dtype,
  source.  ``--verify`` re-hashes every feature shard against the manifest; a bad shard is a one-line
  error naming the shard file (exit 2).
* ``info --model CONFIG [key=value ...] [--dataset DATASET | --users U --items I --feat-dim D]`` -
  parameter counts per component (meta-learner, fusion layers, ID tables, GCN) of the configured model
  for those sizes.
"""
from __future__ import annotations

from metammf_dist.errors import DataError


def add_arguments(parser) -> None:
    parser.add_argument("targets", nargs="*", metavar="DATASET | key=value",
                        help="the dataset folder/URL; with --model: config overrides key=value")
    parser.add_argument("--verify", action="store_true", help="sha256-check every feature shard")
    parser.add_argument("--model", metavar="CONFIG", help="count the parameters of this model config (YAML)")
    parser.add_argument("--dataset", metavar="DATASET", help="with --model: take the sizes from this dataset")
    parser.add_argument("--users", type=int, help="with --model: number of users")
    parser.add_argument("--items", type=int, help="with --model: number of items")
    parser.add_argument("--feat-dim", type=int, help="with --model: concatenated feature dim")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help='fsspec options for an object-store DATASET, e.g. \'{"anon": true}\'')


def run(args) -> int:
    if args.model:
        return _model_info(args)
    if len(args.targets) != 1:
        raise DataError("info: give exactly one DATASET (or --model CONFIG)")
    from metammf_dist.commands.prepare import parse_storage_options

    return _dataset_info(args.targets[0], verify=args.verify,
                         storage_options=parse_storage_options(args.storage_options))


def format_summary(summary: dict) -> str:
    """Human-readable lines for ``Dataset.summary()``."""
    from metammf_dist.data.dataset import format_source

    counts = summary["interactions"]
    mods = ", ".join(f"{name}:{dim}" for name, dim in summary["modalities"].items())
    rows = [
        ("dataset", summary["path"]),
        ("users", f"{summary['num_users']:,}"),
        ("items", f"{summary['num_items']:,}"),
        ("interactions", f"{summary['num_interactions']:,} (density {summary['density']:.4%})"),
        ("  train", f"{counts['train']:,}"),
        ("  valid", f"{counts['valid']:,}"),
        ("  test", f"{counts['test']:,}"),
        ("modalities", f"{mods} (feature dim {summary['feat_dim']:,})"),
        ("feature dtype", summary["feature_dtype"]),
        ("source", format_source(summary["source"])),
    ]
    if summary.get("split_seed") is not None:
        rows.append(("split seed", str(summary["split_seed"])))
    return "\n".join(f"{label:<14} {value}" for label, value in rows)


def _dataset_info(path: str, *, verify: bool, storage_options=None) -> int:
    from metammf_dist.data.dataset import Dataset

    ds = Dataset.open(path, storage_options=storage_options)
    print(format_summary(ds.summary()))
    if verify:
        store = ds.feature_store(cache_mb=16, verify=True)
        store.verify_all()  # ShardIntegrityError (a StoreError) names the bad shard; the CLI prints it
        print(f"{'verified':<14} {store.manifest.num_shards} feature shard(s): sha256 OK")
    return 0


def _model_info(args) -> int:
    from metammf_dist.config import load_config

    bad = [t for t in args.targets if "=" not in t]
    if bad:
        raise DataError(f"info --model: {bad[0]!r} is not a key=value override (use --dataset for a dataset)")
    cfg = load_config(args.model, args.targets)
    sizes = (args.users, args.items, args.feat_dim)
    if args.dataset:
        if any(v is not None for v in sizes):
            raise DataError("info --model: give either --dataset or --users/--items/--feat-dim, not both")
        from metammf_dist.data.dataset import Dataset

        ds = Dataset.open(args.dataset)
        num_users, num_items, feat_dim = ds.num_users, ds.num_items, ds.feat_dim
    elif all(v is not None for v in sizes):
        num_users, num_items, feat_dim = sizes
        for flag, value in zip(("--users", "--items", "--feat-dim"), sizes):
            if value < 1:
                raise DataError(f"info --model: {flag} must be >= 1, got {value}")
    else:
        raise DataError("info --model: give --dataset DATASET or all of --users, --items and --feat-dim")
    from metammf_dist.model.summary import count_parameters, format_parameter_table

    counts = count_parameters(cfg.model, num_users, num_items, feat_dim)
    print(f"model {args.model}: {num_users:,} users, {num_items:,} items, feature dim {feat_dim:,}")
    print(format_parameter_table(counts))
    return 0
