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
        # each chunk written into one table at once: a list of chunk outputs kept the heap of every chunk's
        # activations alive between them (glibc; +590 B per item fused, 1.5 GiB for 2.5M items)
        item_in = None
        for lo, hi, feats in store.iter_range(0, num_items, item_chunk):
            ids = torch.arange(lo, hi, device=device)
            rows = model.item_vectors(ids, torch.from_numpy(feats).to(device))
            if item_in is None:
                item_in = rows.new_empty((num_items,) + tuple(rows.shape[1:]))
            item_in[lo:hi] = rows
            del rows
        if item_in is None:
            item_in = torch.empty(0, model.user_emb.embedding_dim)
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

    ranked = None  # a mask over user ids when only some users are ranked
    if max_users > 0:  # the split's users first (streamed), then only the ranked users' pairs
        split_users = ds.split_users(split)
        users = sample_users(torch.from_numpy(split_users), max_users)
        if users.numel() < split_users.size:
            ranked = np.zeros(ds.num_users, dtype=bool)
            ranked[users.numpy()] = True
        del split_users
        u, i = ds.interactions(split, users=ranked)
    else:
        u, i = ds.interactions(split)
        users = torch.from_numpy(np.unique(u))
    truth = build_csr(torch.from_numpy(u), torch.from_numpy(i), ds.num_users)
    excluded = [tuple(map(torch.from_numpy, ds.interactions(s, users=ranked))) for s in exclude_splits]
    exclude = build_csr(torch.cat([p[0] for p in excluded]), torch.cat([p[1] for p in excluded]), ds.num_users)
    return truth, exclude, users


@torch.no_grad()
def sharded_vectors(model, store, graph, num_users: int, num_items: int, rank: int, world_size: int,
                    item_chunk: int = 8192, device: torch.device = torch.device("cpu"), ranked_users=None):
    """Collective, for row-sharded ID tables (``train.id_tables=sharded``): this rank's final vectors of the items
    it owns and the users' -> ``(user_rows, (item_lo, item_vecs))``, where ``user_rows(ids)`` gives the final
    rows of users ``ids`` (a collective: every rank asks for the same ids in the same order).  No rank holds
    another rank's item rows.

    Layer 0 is local (the owned items' fusion from their features ⊕ their ID rows, the owned users' ID rows).
    The GCN then runs layer by layer, and each layer in chunks of ``item_chunk`` owned users and items (the same
    number of chunks on every rank): a chunk's in-edges (``graph.range_block``) and the rows of the neighbours
    they reach, fetched from their owners (``collectives.fetch_owned_rows``), are all a rank holds beyond its own
    layer outputs — so no rank holds the neighbourhood of its whole range at once.  Every node's aggregation sees
    the same edges in the same order as in ``compute_vectors``, so the rows equal its rows of those nodes.

    ``ranked_users`` (ascending ids, the same on every rank; a sampled evaluation's users): only their final
    rows are made (``_gcn_for_ranked_users``), and every rank holds all of them."""
    from metammf_dist.distributed.sharded_ids import row_block, row_range

    was_training = model.training
    model.eval()
    try:
        own = {"user": row_range(num_users, rank, world_size), "item": row_range(num_items, rank, world_size)}
        blocks = {"user": row_block(num_users, world_size), "item": row_block(num_items, world_size)}
        item_rows = model.as_input_rows(model.item_emb.local_weight())
        lo_i = own["item"][0]
        item_in = item_rows.new_empty((item_rows.shape[0], model.fusion_out_dim + item_rows.shape[1]))
        item_in[:, model.fusion_out_dim:] = item_rows
        for lo, hi, feats in store.iter_range(*own["item"], item_chunk):  # written in place, as in compute_vectors
            item_in[lo - lo_i:hi - lo_i, :model.fusion_out_dim] = model.fuse(torch.from_numpy(feats).to(device))
        h = {"user": model.as_input_rows(model.user_emb.local_weight()), "item": item_in}
        if ranked_users is not None:
            ranked_users = ranked_users.to(device=device, dtype=torch.int64)
            mine = ranked_users[(ranked_users >= own["user"][0]) & (ranked_users < own["user"][1])]
            if getattr(model, "gcn", None) is not None:
                users, items = _gcn_for_ranked_users(model, graph, h, own, blocks, world_size, item_chunk, device,
                                                     ranked_users, mine)
            else:
                users, items = h["user"][mine - own["user"][0]], h["item"]
            return _gathered_rows(mine, users.float(), world_size), (own["item"][0], items.float())
        if getattr(model, "gcn", None) is not None:
            h = _gcn_by_chunks(model, graph, h, own, blocks, world_size, item_chunk, device)
        user_lo, user_vecs = own["user"][0], h["user"].float()

        def user_rows(ids):  # collective: every rank asks for the same chunk
            return fetch_owned_rows(ids.to(user_vecs.device), user_vecs, user_lo, blocks["user"], world_size)

        return user_rows, (own["item"][0], h["item"].float())
    finally:
        model.train(was_training)


def _gathered_rows(ids: torch.Tensor, rows: torch.Tensor, world_size: int):
    """Every rank's (ids, rows) on every rank -> ``rows_of(ids)`` (a local lookup; unknown ids are refused)."""
    from metammf_dist.distributed.collectives import all_gather_rows

    all_ids, all_rows = all_gather_rows(ids, rows, world_size)
    all_ids, order = torch.sort(all_ids)
    all_rows = all_rows[order]

    def rows_of(wanted: torch.Tensor) -> torch.Tensor:
        wanted = wanted.to(all_ids.device)
        at = torch.searchsorted(all_ids, wanted).clamp_(max=max(all_ids.numel() - 1, 0))
        if all_ids.numel() == 0 or not bool((all_ids[at] == wanted).all()):
            raise ValueError("sharded evaluation: asked for the vectors of users outside the ranked set")
        return all_rows[at]

    return rows_of


def _chunk_parts(own, blocks, item_chunk):
    """The owned user and item ranges cut into chunks of ``item_chunk``: ``[{ntype: (lo, hi)}]``, as many chunks on
    every rank (counted from the global block sizes); a rank past its rows gets empty ranges."""
    chunks = max(1, -(-max(blocks.values()) // item_chunk))
    return [{nt: (min(lo + c * item_chunk, hi), min(lo + (c + 1) * item_chunk, hi)) for nt, (lo, hi) in own.items()}
            for c in range(chunks)]


def _gcn_for_ranked_users(model, graph, h, own, blocks, world_size, item_chunk, device, ranked, mine):
    """The GCN of a sampled evaluation: the final rows of every owned item, but of the ranked users only.

    Layers 0 .. L-2 run as in ``_gcn_by_chunks`` over every owned node, except that the items' layer L-2 is left
    to the last pass.  Items' in-neighbours are users only, so the last pass takes one chunk of owned items at a
    time through their layer L-1 rows (from layer L-2 of the users, fetched) to their layer-L rows (from layer
    L-1 of the users, fetched) and combines them at once: the items' layer-(L-1) table never exists.  The layer-
    (L-1) rows of the items that the ranked users reach are kept (a few per ranked user) and fetched by their
    owners for the ranked users' last layer.  A 2-layer GCN thus holds the items' layer-0 table (written over
    with the final rows) and the users' layer-1 table: two tables of the own nodes, where ``_gcn_by_chunks``
    holds three.  Returns (final rows of ``mine``, the owned ranked users; final rows of every owned item)."""
    last = model.gcn.num_layers - 1
    parts = _chunk_parts(own, blocks, item_chunk)
    outputs = [h]
    for index in range(last):  # layers 0 .. L-2: all owned users; the items' last of them comes in the last pass
        types = ("user", "item") if index < last - 1 else ("user",)
        new = dict(outputs[-1])
        for ntype in types:
            new[ntype] = None
        for part in parts:
            scoped = {nt: part[nt] if nt in types else (part[nt][0], part[nt][0]) for nt in part}
            rows = _layer_chunk(model, graph, index, outputs[-1], own, scoped, blocks, world_size, device)
            for ntype in types:
                if ntype in rows:
                    lo = part[ntype][0] - own[ntype][0]
                    if new[ntype] is None:
                        new[ntype] = rows[ntype].new_empty((own[ntype][1] - own[ntype][0],) + rows[ntype].shape[1:])
                    new[ntype][lo:lo + rows[ntype].shape[0]] = rows[ntype]
        outputs.append({nt: x if x is not None else outputs[-1][nt][:0] for nt, x in new.items()})
    # the items the ranked users reach, and this rank's of them
    reached = torch.unique(graph.edge_items[graph.nodes_block(ranked, ranked[:0]).edge_ids("iu")])
    lo_i, hi_i = own["item"]
    keep_ids = reached[(reached >= lo_i) & (reached < hi_i)]
    keep = None
    result = None
    before = outputs[last]  # layer L-1 users (all owned); its "item" entry is layer L-2 of the items (or layer 0)
    for part in parts:
        items = {"user": (own["user"][0], own["user"][0]), "item": part["item"]}
        at = slice(part["item"][0] - lo_i, part["item"][1] - lo_i)
        if last > 0:  # the chunk's layer L-1 rows, from layer L-2
            penult = _layer_chunk(model, graph, last - 1, outputs[last - 1], own, items, blocks, world_size, device)
        else:
            penult = {"item": outputs[0]["item"][at]}
        chunk_rows = penult.get("item")
        if chunk_rows is None:
            chunk_rows = outputs[0]["item"][:0]
        rows = _layer_chunk(model, graph, last, before, own, items, blocks, world_size, device,
                            dst_rows={"item": chunk_rows})
        if keep is None:
            keep = chunk_rows.new_empty((keep_ids.numel(),) + tuple(chunk_rows.shape[1:]))
        a, b = torch.searchsorted(keep_ids, torch.tensor(list(part["item"]), device=keep_ids.device)).tolist()
        keep[a:b] = chunk_rows[keep_ids[a:b] - part["item"][0]]
        if not rows:
            continue
        layers = [{"user": o["user"][:0], "item": o["item"][at]} for o in outputs[:last]]
        layers += [{"user": before["user"][:0], "item": chunk_rows}, {"user": rows["user"], "item": rows["item"]}]
        final = model.gcn.combine_layers(layers)["item"]
        if result is None:
            first = outputs[0]["item"]
            reuse = last > 0 and first.shape[1:] == final.shape[1:] and first.dtype == final.dtype and \
                not _shares_storage(first, model)
            result = first if reuse else final.new_empty((hi_i - lo_i,) + tuple(final.shape[1:]))
        result[at] = final
    if result is None:
        result = outputs[0]["item"][:0]
    # the ranked users' last layer: their own layer L-1 rows and the kept item rows, fetched from their owners
    block = graph.nodes_block(mine, mine[:0]).to(device)
    mine_at = mine - own["user"][0]
    src = {"user": before["user"][mine_at],
           "item": fetch_owned_rows(block.src_nids["item"], keep, lo_i, blocks["item"], world_size,
                                    position=lambda ids: torch.searchsorted(keep_ids, ids))}
    scale = model.inv_sqrt_degree(block.src_nids["user"], block.src_nids["item"])
    rows = model.gcn.layer_forward(last, block, src, scale)
    layers = [{"user": o["user"][mine_at], "item": o["item"][:0]} for o in outputs]
    users = model.gcn.combine_layers(layers + [{"user": rows["user"], "item": rows["item"]}])["user"]
    return users, result


def _gcn_by_chunks(model, graph, h, own, blocks, world_size, item_chunk, device):
    """The GCN over the owned nodes, layer by layer and chunk by chunk (``sharded_vectors``).  The last layer's
    chunk rows are combined with the earlier layers' rows of the chunk at once (``gcn.combine_layers``, the
    same arithmetic as over whole tables) and, with two layers or more, written over the layer-0 rows, which
    nothing reads any more: a 2-layer GCN holds two tables of the own nodes, not three (unless the layer-0 table
    is the ID table's own storage, as the user rows may be)."""
    parts = _chunk_parts(own, blocks, item_chunk)
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


def _layer_chunk(model, graph, index, h, own, part, blocks, world_size, device, dst_rows=None):
    """GCN layer ``index`` for the owned nodes ``part`` (user and item ranges inside ``own``), from ``h``, the
    previous layer's rows of every owned node -> ``{ntype: rows of part}``.  Collective (the row fetches).
    ``dst_rows[ntype]``: the previous layer's rows of the part's nodes of that type, when ``h`` lacks them."""
    block = graph.range_block(part["user"], part["item"]).to(device)
    src = {}
    for ntype in ("user", "item"):
        lo, hi = part[ntype]
        others = block.src_nids[ntype][block.num_dst_nodes(ntype):]  # owned outside the chunk, or by other ranks
        mine = (dst_rows or {}).get(ntype)
        if mine is None:
            mine = h[ntype][lo - own[ntype][0]:hi - own[ntype][0]]
        src[ntype] = torch.cat([mine, fetch_owned_rows(others, h[ntype], own[ntype][0], blocks[ntype], world_size)])
    if all(hi == lo for lo, hi in part.values()):  # past this rank's rows: it only served the others' fetches
        return {}
    scale = model.inv_sqrt_degree(block.src_nids["user"], block.src_nids["item"])
    return model.gcn.layer_forward(index, block, src, scale)
