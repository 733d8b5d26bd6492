"""Full-neighbourhood inference: every user and item vector, computed once per evaluation.

Item features are streamed from the shard store in chunks (never the whole table at once); the fusion
output (64-d per item by default) is what stays in memory.  For the GCN scorer the two GraphSAGE layers
then run over the whole train graph.
"""
from __future__ import annotations

import torch

from metammf_dist.evaluation.ranking import build_csr


@torch.no_grad()
def compute_vectors(model, store, graph, num_users: int, num_items: int, item_chunk: int = 8192,
                    device: torch.device = torch.device("cpu")):
    """-> (user_vecs [num_users, D], item_vecs [num_items, D]) in eval mode (dropout off)."""
    was_training = model.training
    model.eval()
    try:
        item_in = []
        for lo, hi, feats in store.iter_range(0, num_items, item_chunk):
            ids = torch.arange(lo, hi, device=device)
            item_in.append(model.item_vectors(ids, torch.from_numpy(feats).to(device)))
        item_in = torch.cat(item_in) if item_in else torch.empty(0, model.user_emb.embedding_dim)
        user_in = torch.cat([model.user_vectors(torch.arange(lo, min(lo + item_chunk, num_users), device=device))
                             for lo in range(0, num_users, item_chunk)])
        out = {"user": user_in, "item": item_in}
        if getattr(model, "gcn", None) is not None:
            out = model.propagate_graph(graph.to(device), out)
        out = model.add_item_graph(out, torch.arange(num_items, device=device), item_chunk)
        return out["user"].float(), out["item"].float()  # ranked in fp32 (a bf16 model's vectors too)
    finally:
        model.train(was_training)


def sample_users(users: torch.Tensor, max_users: int, seed: int = 0) -> torch.Tensor:
    """``max_users`` of ``users`` (sorted), the same ones on every call and rank; all when ``max_users`` <= 0."""
    if max_users <= 0 or users.numel() <= max_users:
        return users
    pick = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(seed))[:max_users]
    return users[pick.sort().values]


def split_csr(ds, split: str, exclude_splits, max_users: int = 0):
    """Ground truth of ``split`` and the items to exclude from ranking (e.g. train (+ valid) items);
    ``max_users`` > 0 ranks a fixed random subset of the split's users (``sample_users``)."""
    import numpy as np

    u, i = ds.interactions(split)
    truth = build_csr(torch.from_numpy(u), torch.from_numpy(i), ds.num_users)
    ex_u, ex_i = [], []
    for s in exclude_splits:
        a, b = ds.interactions(s)
        ex_u.append(a)
        ex_i.append(b)
    exclude = build_csr(torch.from_numpy(np.concatenate(ex_u)), torch.from_numpy(np.concatenate(ex_i)), ds.num_users)
    users = sample_users(torch.from_numpy(np.unique(u)), max_users)
    return truth, exclude, users


@torch.no_grad()
def sharded_vectors(model, store, graph, num_users: int, num_items: int, rank: int, world_size: int,
                    item_chunk: int = 8192, device: torch.device = torch.device("cpu")):
    """Collective, for row-sharded ID tables (``train.id_tables=sharded``): this rank's final vectors of the users
    and items it owns -> ``((user_lo, user_vecs), (item_lo, item_vecs))``, no rank holding any other row.

    Layer 0 is local (the owned items' fusion from their features ⊕ their ID rows, the owned users' ID rows).
    The GCN then runs layer by layer over ``graph.range_block`` (the in-edges of the owned nodes): before each
    layer the rows of the neighbours other ranks own are fetched from them (``collectives.fetch_owned_rows``),
    so the result equals ``compute_vectors``' rows of those nodes."""
    from metammf_dist.distributed.collectives import fetch_owned_rows
    from metammf_dist.distributed.sharded_ids import row_block, row_range

    was_training = model.training
    model.eval()
    try:
        users, items = row_range(num_users, rank, world_size), row_range(num_items, rank, world_size)
        blocks = {"user": row_block(num_users, world_size), "item": row_block(num_items, world_size)}
        item_rows = model.item_emb.local_weight()
        fused = [model.fuse(torch.from_numpy(feats).to(device))
                 for _, _, feats in store.iter_range(items[0], items[1], item_chunk)]
        fused = torch.cat(fused) if fused else item_rows.new_zeros(0, model.fusion_out_dim)
        h = {"user": model.as_input_rows(model.user_emb.local_weight()),
             "item": torch.cat([fused.to(model.param_dtype), model.as_input_rows(item_rows)], dim=1)}
        if getattr(model, "gcn", None) is not None:
            block = graph.range_block(users, items).to(device)  # the own nodes' in-edges only on the device
            lo = {"user": users[0], "item": items[0]}
            scale = model.inv_sqrt_degree(block.src_nids["user"], block.src_nids["item"])
            outputs = [h]
            for index in range(model.gcn.num_layers):
                src = {}
                for ntype in ("user", "item"):
                    others = block.src_nids[ntype][block.num_dst_nodes(ntype):]
                    src[ntype] = torch.cat([h[ntype], fetch_owned_rows(others, h[ntype], lo[ntype], blocks[ntype],
                                                                       world_size)])
                h = model.gcn.layer_forward(index, block, src, scale)
                outputs.append(h)
            h = model.gcn.combine_layers(outputs)
        return (users[0], h["user"].float()), (items[0], h["item"].float())
    finally:
        model.train(was_training)
