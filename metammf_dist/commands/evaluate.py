"""``metammf-dist evaluate RUN_DIR [--split test] [--checkpoint best|latest]``: rank in full, print metrics JSON
(on test also warm-item and cold-item metrics when some item has no train interaction: ``evaluation/item_groups``)."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    parser.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load checkpoints whose pickles name globals outside the safe list (full pickle can "
                             "run code: only for run folders you trust)")
    parser.add_argument("--data", default=None, help="dataset path if it moved since training")
    parser.add_argument("--popularity", action="store_true",
                        help="also rank the same users by train popularity (keys popularity_<metric>)")


def run(args) -> int:
    import torch

    from metammf_dist.evaluation.item_groups import cold_item_mask, evaluate_item_groups
    from metammf_dist.evaluation.ranking import evaluate_full_ranking
    from metammf_dist.train.inference import compute_vectors, split_csr
    from metammf_dist.train.restore import restore

    cfg, ds, store, graph, model, tag = restore(args.run_dir, args.data, args.checkpoint, args.trust_checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # ranking is matmul + top-k: GPU if any
    user_vecs, item_vecs = compute_vectors(model.to(device), store, graph, ds.num_users, ds.num_items,
                                           cfg.eval.item_chunk, device=device)
    exclude = ["train"] if args.split == "valid" else ["train", "valid"]
    truth, excl, users = split_csr(ds, args.split, exclude, cfg.eval.max_users)
    cold = cold_item_mask(ds.interactions("train")[1], ds.num_items)
    if args.split == "test" and bool(cold.any()):  # the same scores, also ranked by item group
        metrics = evaluate_item_groups(user_vecs, item_vecs, excl, truth, users, cold, tuple(cfg.eval.ks),
                                       cfg.eval.user_chunk)
    else:
        metrics = evaluate_full_ranking(user_vecs, item_vecs, excl, truth, users, ks=tuple(cfg.eval.ks),
                                        user_chunk=cfg.eval.user_chunk)
    metrics = {k: float(v) for k, v in metrics.items()}
    if args.popularity:
        from metammf_dist.evaluation.popularity import evaluate_popularity

        _, train_i = ds.interactions("train")
        pop = evaluate_popularity(torch.from_numpy(train_i), ds.num_items, excl, truth, users, ks=tuple(cfg.eval.ks),
                                  user_chunk=cfg.eval.user_chunk)
        metrics.update({f"popularity_{k}": float(v) for k, v in pop.items() if k != "num_users"})
    metrics["checkpoint"] = tag
    print(json.dumps(metrics, sort_keys=True))
    return 0
