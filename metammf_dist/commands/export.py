"""``metammf-dist export RUN_DIR [--out DIR] [--k 20]``: user/item vectors and top-K lists to Parquet.

Writes ``users.parquet`` (user, vector), ``items.parquet`` (item, vector) and ``topk.parquet``
(user, rank, item, score) — recommendations exclude each user's train and valid items.
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/export)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoints whose pickles name globals outside the safe list (full pickle can "
                             "run code: only for run folders you trust)")
    parser.add_argument("--data", default=None)


def _vectors_table(ids, vecs):
    import pyarrow as pa

    flat = pa.array(vecs.contiguous().view(-1).numpy())
    return pa.table({"id": pa.array(ids), "vector": pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])})


def run(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from metammf_dist.evaluation.ranking import fill_excluded
    from metammf_dist.train.inference import compute_vectors, split_csr
    from metammf_dist.train.restore import restore

    cfg, ds, store, graph, model, tag = restore(args.run_dir, args.data, args.checkpoint, args.trust_checkpoint)
    out = Path(args.out or Path(args.run_dir) / "export")
    out.mkdir(parents=True, exist_ok=True)
    user_vecs, item_vecs = compute_vectors(model, store, graph, ds.num_users, ds.num_items, cfg.eval.item_chunk)
    pq.write_table(_vectors_table(np.arange(ds.num_users), user_vecs).rename_columns(["user", "vector"]), out / "users.parquet")
    pq.write_table(_vectors_table(np.arange(ds.num_items), item_vecs).rename_columns(["item", "vector"]), out / "items.parquet")
    _, excl, _ = split_csr(ds, "train", ["train", "valid"])
    k = min(args.k, ds.num_items)
    cols = {"user": [], "rank": [], "item": [], "score": []}
    for lo in range(0, ds.num_users, cfg.eval.user_chunk):
        hi = min(lo + cfg.eval.user_chunk, ds.num_users)
        scores = user_vecs[lo:hi] @ item_vecs.T
        fill_excluded(scores, excl, torch.arange(lo, hi))  # train + valid items are never recommended
        top = torch.topk(scores, k, dim=1)
        cols["user"].append(np.repeat(np.arange(lo, hi), k))
        cols["rank"].append(np.tile(np.arange(k), hi - lo))
        cols["item"].append(top.indices.reshape(-1).numpy())
        cols["score"].append(top.values.reshape(-1).numpy())
    pq.write_table(pa.table({name: np.concatenate(v) for name, v in cols.items()}), out / "topk.parquet")
    print(f"exported checkpoint {tag}: {ds.num_users:,} users, {ds.num_items:,} items, top-{k} lists -> {out}")
    return 0
