"""``metammf-dist synth OUT --users U --items I --interactions E --modality image:128 ...``.

Generates a synthetic catalog with planted structure (clusters, Zipf popularity, feature signal; with
``--planted-fusion`` an item-specific gate over the modalities; see ``data.synth``) in the canonical form,
streamed in bounded memory.  Same arguments -> same bytes.
"""
from __future__ import annotations

import time

from metammf_dist.commands.prepare import parse_storage_options
from metammf_dist.errors import DataError


def add_arguments(parser) -> None:
    parser.add_argument("out", metavar="OUT", help="output dataset folder or fsspec URL (must not exist)")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--interactions", type=int, required=True, help="exact number of distinct (user, item) pairs")
    parser.add_argument("--modality", action="append", default=[], metavar="NAME:DIM",
                        help="a feature modality, repeatable (e.g. --modality image:128 --modality text:384)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-frac", type=float, default=0.1)
    parser.add_argument("--test-frac", type=float, default=0.1)
    parser.add_argument("--cold-items", "--cold-frac", dest="cold_frac", type=float, default=0.0, metavar="FRAC",
                        help="fraction of items whose interactions all go to valid/test (cold start)")
    parser.add_argument("--planted-fusion", action="store_true",
                        help="items carry a gate that decides how their modalities combine (item-specific fusion; "
                             "see data/synth.py)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--clusters", type=int, default=0, help="planted latent clusters (0 = auto)")
    parser.add_argument("--zipf", type=float, default=0.9, help="popularity exponent")
    parser.add_argument("--shard-size", type=int, default=65536, help="items per feature shard")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--storage-options", default=None, metavar="JSON", help="fsspec storage options as JSON")


def parse_modalities(specs) -> dict:
    if not specs:
        raise DataError("synth: give at least one --modality NAME:DIM (e.g. --modality image:128)")
    out = {}
    for spec in specs:
        name, sep, dim = spec.partition(":")
        if not sep or not name or not dim.isdigit() or int(dim) < 1:
            raise DataError(f"--modality {spec!r}: expected NAME:DIM with a positive integer DIM (e.g. image:128)")
        if name in out:
            raise DataError(f"--modality {name!r} given twice")
        out[name] = int(dim)
    return out


def run(args) -> int:
    from metammf_dist.data.synth import SynthSpec, generate

    spec = SynthSpec(num_users=args.users, num_items=args.items, num_interactions=args.interactions,
                     modalities=parse_modalities(args.modality), seed=args.seed, valid_frac=args.valid_frac,
                     test_frac=args.test_frac, cold_frac=args.cold_frac, dtype=args.dtype, clusters=args.clusters,
                     zipf=args.zipf, planted_fusion=args.planted_fusion)
    started = time.perf_counter()
    meta = generate(spec, args.out, shard_size=args.shard_size, overwrite=args.overwrite,
                    storage_options=parse_storage_options(args.storage_options))
    counts = meta["interactions"]
    rss = _peak_rss_mib()
    print(f"wrote {args.out}: {meta['num_users']:,} users, {meta['num_items']:,} items, "
          f"{counts['train']:,} / {counts['valid']:,} / {counts['test']:,} train/valid/test interactions, "
          f"{meta['source']['num_clusters']} clusters, {meta['source']['cold_items']:,} cold items "
          f"in {time.perf_counter() - started:.1f}s" + (f", peak RSS {rss:,.0f} MiB" if rss else ""))
    return 0


def _peak_rss_mib():
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, AttributeError):  # pragma: no cover - non-POSIX
        return None
