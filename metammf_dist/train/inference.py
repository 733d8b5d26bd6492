"""Full-neighbourhood inference: every user and item vector, computed once per evaluation.

Item features are streamed from the shard store in chunks (never the whole table at once); the fusion
output (64-d per item by default) is what stays in memory.  For the GCN scorer the two GraphSAGE layers
then run over the whole train graph.
"""
from __future__ import annotations

import torch

from metammf_dist.distributed.collectives import fetch_owned_rows
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
    ``max_users`` > 0 ranks a fixed random subset of the split's users (``sample_users``), and both CSRs then
    hold only those users' rows (the others are empty; the excluded splits are read for those users only): at
    10M users the whole train split's CSR would be ~5 GiB while it is built, for the 20k users ranked."""
    import numpy as np

    u, i = ds.interactions(split)
    split_users = np.unique(u)
    users = sample_users(torch.from_numpy(split_users), max_users)
    ranked = None  # a mask over user ids when only some users are ranked
    if users.numel() < split_users.size:
        ranked = np.zeros(ds.num_users, dtype=bool)
        ranked[users.numpy()] = True
        keep = ranked[u]
        u, i = u[keep], i[keep]
    truth = build_csr(torch.from_numpy(u), torch.from_numpy(i), ds.num_users)
    excluded = [tuple(map(torch.from_numpy, ds.interactions(s, users=ranked))) for s in exclude_splits]
    exclude = build_csr(torch.cat([p[0] for p in excluded]), torch.cat([p[1] for p in excluded]), ds.num_users)
    return truth, exclude, users


@torch.no_grad()
def sharded_vectors(model, store, graph, num_users: int, num_items: int, rank: int, world_size: int,
                    item_chunk: int = 8192, device: torch.device = torch.device("cpu")):
    """Collective, for row-sharded ID tables (``train.id_tables=sharded``): this rank's final vectors of the users
    and items it owns -> ``((user_lo, user_vecs), (item_lo, item_vecs))``, no rank holding any other row.

    Layer 0 is local (the owned items' fusion from their features ⊕ their ID rows, the owned users' ID rows).
    The GCN then runs layer by layer, and each layer in chunks of ``item_chunk`` owned users and items (the same
    number of chunks on every rank): a chunk's in-edges (``graph.range_block``) and the rows of the neighbours
    they reach, fetched from their owners (``collectives.fetch_owned_rows``), are all a rank holds beyond its own
    layer outputs — so no rank holds the neighbourhood of its whole range at once.  Every node's aggregation sees
    the same edges in the same order as in ``compute_vectors``, so the rows equal its rows of those nodes."""
    from metammf_dist.distributed.sharded_ids import row_block, row_range

    was_training = model.training
    model.eval()
    try:
        own = {"user": row_range(num_users, rank, world_size), "item": row_range(num_items, rank, world_size)}
        blocks = {"user": row_block(num_users, world_size), "item": row_block(num_items, world_size)}
        item_rows = model.item_emb.local_weight()
        fused = [model.fuse(torch.from_numpy(feats).to(device))
                 for _, _, feats in store.iter_range(*own["item"], item_chunk)]
        fused = torch.cat(fused) if fused else item_rows.new_zeros(0, model.fusion_out_dim)
        h = {"user": model.as_input_rows(model.user_emb.local_weight()),
             "item": torch.cat([fused.to(model.param_dtype), model.as_input_rows(item_rows)], dim=1)}
        if getattr(model, "gcn", None) is not None:
            h = _gcn_by_chunks(model, graph, h, own, blocks, world_size, item_chunk, device)
        return (own["user"][0], h["user"].float()), (own["item"][0], h["item"].float())
    finally:
        model.train(was_training)


def _gcn_by_chunks(model, graph, h, own, blocks, world_size, item_chunk, device):
    """The GCN over the owned nodes, layer by layer and chunk by chunk (``sharded_vectors``).  The last layer's
    chunk rows are combined with the earlier layers' rows of the chunk at once (``gcn.combine_layers``, the
    same arithmetic as over whole tables) and, with two layers or more, written over the layer-0 rows, which
    nothing reads any more: a 2-layer GCN holds two tables of the own nodes, not three (unless the layer-0 table
    is the ID table's own storage, as the user rows may be)."""
    chunks = max(1, -(-max(blocks.values()) // item_chunk))  # from global sizes: equal on every rank
    parts = [{nt: (min(lo + c * item_chunk, hi), min(lo + (c + 1) * item_chunk, hi)) for nt, (lo, hi) in own.items()}
             for c in range(chunks)]
    outputs, last = [h], model.gcn.num_layers - 1
    result = {ntype: None for ntype in h}
    for index in range(model.gcn.num_layers):
        out = {ntype: None for ntype in h} if index < last else result
        for part in parts:
            rows = _layer_chunk(model, graph, index, h, own, part, blocks, world_size, device)
            at = {nt: slice(part[nt][0] - own[nt][0], part[nt][1] - own[nt][0]) for nt in part}
            if rows and index == last:
                rows = model.gcn.combine_layers([{nt: o[nt][at[nt]] for nt in o} for o in outputs] + [rows])
            for ntype, x in rows.items():
                if out[ntype] is None:
                    first = outputs[0][ntype]
                    reuse = index == last and last > 0 and first.shape[1:] == x.shape[1:] and \
                        first.dtype == x.dtype and not _shares_storage(first, model)
                    out[ntype] = first if reuse else \
                        x.new_empty((own[ntype][1] - own[ntype][0],) + tuple(x.shape[1:]))
                out[ntype][at[ntype]] = x
        if index < last:
            h = {ntype: x if x is not None else h[ntype][:0] for ntype, x in out.items()}
            outputs.append(h)
    return {ntype: x if x is not None else outputs[0][ntype][:0] for ntype, x in result.items()}


def _shares_storage(x: torch.Tensor, model) -> bool:
    """Whether ``x`` is (a view of) a table the model or its sharded ID tables hold."""
    ptr = x.untyped_storage().data_ptr()
    tables = [model.user_emb.local_weight(), model.item_emb.local_weight()] \
        if hasattr(model.user_emb, "local_weight") else []
    return any(t.untyped_storage().data_ptr() == ptr for t in [*tables, *model.parameters()])


def _layer_chunk(model, graph, index, h, own, part, blocks, world_size, device):
    """GCN layer ``index`` for the owned nodes ``part`` (user and item ranges inside ``own``), from ``h``, the
    previous layer's rows of every owned node -> ``{ntype: rows of part}``.  Collective (the row fetches)."""
    block = graph.range_block(part["user"], part["item"]).to(device)
    src = {}
    for ntype in ("user", "item"):
        lo, hi = part[ntype]
        others = block.src_nids[ntype][block.num_dst_nodes(ntype):]  # owned outside the chunk, or by other ranks
        mine = h[ntype][lo - own[ntype][0]:hi - own[ntype][0]]
        src[ntype] = torch.cat([mine, fetch_owned_rows(others, h[ntype], own[ntype][0], blocks[ntype], world_size)])
    if all(hi == lo for lo, hi in part.values()):  # past this rank's rows: it only served the others' fetches
        return {}
    scale = model.inv_sqrt_degree(block.src_nids["user"], block.src_nids["item"])
    return model.gcn.layer_forward(index, block, src, scale)
