"""``metammf-dist prepare {mmrec,mmgcn} SRC OUT``: import a public dataset into the canonical form.

* ``mmrec``: ``<name>.inter`` (userID itemID x_label) + ``<modality>_feat.npy`` (see ``data.mmrec``);
* ``mmgcn``: pickled ``user_item_dict*.npy`` + ``v/a/t_feat*.npy`` (see ``data.mmgcn``); needs
  ``--allow-pickle`` because unpickling can run code; split per user with ``--split-seed``.
* ``--cold-items FRAC`` (both): a seeded fraction of the items loses every train interaction to valid/test
  (``data.splits.hold_out_items``), recorded in ``dataset.json``.

OUT is a local folder or fsspec URL; it appears only when the import has fully succeeded.
"""
from __future__ import annotations

import json
import time

from metammf_dist.errors import DataError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    mmrec = sub.add_parser("mmrec", help="MMRec layout: <name>.inter + <modality>_feat.npy",
                           description="Import an MMRec folder: <name>.inter (userID itemID x_label) + "
                                       "<modality>_feat.npy (row = itemID).")
    mmgcn = sub.add_parser("mmgcn", help="MetaMMF/MMGCN layout: pickled user_item_dict*.npy + v/a/t_feat*.npy",
                           description="Import a MetaMMF/MMGCN folder: pickled user_item_dict*.npy + "
                                       "v_feat/a_feat/t_feat*.npy; splits each user's items 80/10/10 at random.")
    for p in (mmrec, mmgcn):
        p.add_argument("src", metavar="SRC", help="source folder")
        p.add_argument("out", metavar="OUT", help="output dataset folder or fsspec URL (must not exist)")
        p.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"),
                       help="feature dtype in the store (auto: float16 if the sources are, else float32)")
        p.add_argument("--shard-size", type=int, default=65536, help="items per feature shard")
        p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
        p.add_argument("--storage-options", default=None, metavar="JSON",
                       help="fsspec storage options for OUT as JSON (e.g. an S3 endpoint)")
        p.add_argument("--cold-items", type=float, default=0.0, metavar="FRAC",
                       help="hold this fraction of the items out of train entirely (their train interactions go to "
                            "valid/test; drawn with --split-seed): the cold-item protocol")
    mmgcn.add_argument("--allow-pickle", action="store_true",
                       help="allow unpickling user_item_dict*.npy (only for files you trust: pickle can run code)")
    mmgcn.add_argument("--split-seed", type=int, default=2023, help="seed of the per-user random split and of --cold-items")
    mmrec.add_argument("--split-seed", type=int, default=2023, help="seed of --cold-items' draw (the split is the source's)")


def parse_storage_options(text):
    if not text:
        return None
    try:
        opts = json.loads(text)
    except ValueError as exc:
        raise DataError(f"--storage-options: not valid JSON ({exc})") from None
    if not isinstance(opts, dict):
        raise DataError("--storage-options: expected a JSON object")
    return opts


def run(args) -> int:
    started = time.perf_counter()
    common = dict(dtype=args.dtype, shard_size=args.shard_size, overwrite=args.overwrite,
                  storage_options=parse_storage_options(args.storage_options), cold_items=args.cold_items,
                  split_seed=args.split_seed)
    if args.format == "mmrec":
        from metammf_dist.data.mmrec import import_mmrec

        meta = import_mmrec(args.src, args.out, **common)
    else:
        from metammf_dist.data.mmgcn import import_mmgcn

        meta = import_mmgcn(args.src, args.out, allow_pickle=args.allow_pickle, **common)
    counts = meta["interactions"]
    mods = ", ".join(f"{name}:{dim}" for name, dim in meta["modalities"].items())
    print(f"wrote {args.out}: {meta['num_users']:,} users, {meta['num_items']:,} items, "
          f"{counts['train']:,} / {counts['valid']:,} / {counts['test']:,} train/valid/test interactions, "
          f"features {mods} ({meta['feature_dtype']})"
          + (f", {meta['source']['cold_items']:,} cold items" if "cold_items" in meta["source"] else "")
          + f" in {time.perf_counter() - started:.1f}s")
    return 0
