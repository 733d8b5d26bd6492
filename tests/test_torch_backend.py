"""The torch graph backend (no DGL): its sampler, its blocks and the GCN on them, checked against DGL.

Runs in both lanes.  Without DGL (the latest lane) the checks against DGL are skipped; everything that
only needs the torch backend still runs: seed-edge exclusion, exact fan-outs, real edges, uniform draws
(chi-square against the exact law), reproducibility, full-graph blocks and the GCN's torch path.

With DGL the torch backend is compared with (a) the DGL backend (our numpy sampler + DGL blocks) and
(b) DGL's own samplers (``dgl.sampling.sample_neighbors`` for one hop and
``dgl.dataloading.NeighborSampler`` for two), since (a) shares its sampling law with ours by
construction: per-node sampled degrees must match exactly and per-edge / per-node frequencies over many
draws must agree (chi-square), and the GCN must give the same numbers (float64, 1e-10) on both kinds of
blocks of the same sample.

DGL's own ``exclude_edges`` / ``exclude_eids`` (what ``as_edge_prediction_sampler`` uses) draws ``fanout``
in-edges among ALL in-edges and then drops the excluded ones, so a node touching a seed edge keeps fewer
than ``fanout`` (measured with DGL 2.1; pinned below).  Both our backends draw among the non-excluded
in-edges (``min(fanout, usable)`` kept).  DGL's reference for that law is its sampler on the graph with
the seed edges removed (``dgl.remove_edges``), which is what (b) runs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metammf_dist.model.gcn import GCN, dgl_available
from metammf_dist.sampler import negatives
from metammf_dist.sampler import (
    BipartiteGraph, Block, NeighborBatches, TorchNeighborSampler, build_train_graph, make_batches,
)
from metammf_dist.sampler.torch_neighbor import floyd_sample

UI, IU = ("user", "ui", "item"), ("item", "iu", "user")
NT = ("user", "item")
TOL = dict(rtol=0.0, atol=1e-10)
DIM = 6


def random_pairs(num_users=300, num_items=60, num_edges=4000, seed=0, power=1.2):
    """Unique (user, item) pairs with power-law item popularity (some items are hubs), shuffled."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1) ** power
    users = rng.integers(0, num_users, num_edges)
    items = rng.choice(num_items, num_edges, p=pop / pop.sum())
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    return pairs[rng.permutation(len(pairs))]


@pytest.fixture(scope="module")
def pairs():
    return random_pairs()


@pytest.fixture(scope="module")
def tgraph(pairs):
    return build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="torch")


def needs_dgl():
    return pytest.importorskip("dgl")


def to_dgl_block(block: Block):
    dgl = needs_dgl()
    out = dgl.create_block({et: block.edges(et) for et in (UI, IU)},
                           num_src_nodes={nt: block.num_src_nodes(nt) for nt in NT},
                           num_dst_nodes={nt: block.num_dst_nodes(nt) for nt in NT}, idtype=torch.int64)
    for nt in NT:
        out.srcnodes[nt].data[dgl.NID] = block.src_nids[nt]
        out.dstnodes[nt].data[dgl.NID] = block.dst_nids[nt]
    for et in (UI, IU):
        out.edges[et].data[dgl.EID] = block.edge_ids(et)
    return out


def from_dgl_block(block) -> Block:
    dgl = needs_dgl()
    return Block({et[1]: block.edges(etype=et) for et in (UI, IU)},
                 {et[1]: block.edges[et].data[dgl.EID] for et in (UI, IU)},
                 src_nids={nt: block.srcnodes[nt].data[dgl.NID] for nt in NT},
                 dst_nids={nt: block.dstnodes[nt].data[dgl.NID] for nt in NT})


def chi2_z(stat: float, df: int) -> float:
    """Wilson–Hilferty: a chi-square(df) statistic as an approximately standard normal z-score."""
    a = 2.0 / (9.0 * df)
    return ((stat / df) ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a)


# -- graph and blocks -------------------------------------------------------------------------------
def test_bipartite_graph_contract(pairs, tgraph):
    assert isinstance(tgraph, BipartiteGraph)
    assert tgraph.num_nodes("user") == 300 and tgraph.num_nodes("item") == 60 and tgraph.num_edges() == len(pairs)
    u, i = tgraph.edges(UI)
    assert np.array_equal(u.numpy(), pairs[:, 0]) and np.array_equal(i.numpy(), pairs[:, 1])
    for adj, dst_col in ((tgraph.in_edges("ui"), 1), (tgraph.in_edges("iu"), 0)):
        assert np.array_equal(adj.degrees().numpy(), np.bincount(pairs[:, dst_col], minlength=adj.num_dst))
        for node in (0, 1, adj.num_dst - 1):
            row = adj.eids[adj.indptr[node]:adj.indptr[node + 1]].numpy()
            assert np.array_equal(row, np.flatnonzero(pairs[:, dst_col] == node))  # ascending edge ids
            assert np.array_equal(adj.position[row].numpy(), np.arange(row.size))
    full = tgraph.full_block()
    assert all(full.num_src_nodes(nt) == full.num_dst_nodes(nt) == tgraph.num_nodes(nt) for nt in NT)
    assert full.num_edges() == 2 * len(pairs) and torch.equal(full.edge_ids(IU), torch.arange(len(pairs)))


def test_nodes_block_of_ranges_is_the_range_block_and_of_sets_keeps_their_edges(tgraph):
    """``nodes_block`` (any dst sets; the sharded evaluation's ranked users) lays a block out like ``range_block``
    (the per-rank full-graph layer) and holds exactly the dst nodes' in-edges."""
    def same(a, b):
        for etype in ("ui", "iu"):
            assert all(torch.equal(x, y) for x, y in zip(a.edges(etype), b.edges(etype))), etype
            assert torch.equal(a.edge_ids(etype), b.edge_ids(etype)), etype
        for ntype in NT:
            assert torch.equal(a.src_nids[ntype], b.src_nids[ntype]) and torch.equal(a.dst_nids[ntype], b.dst_nids[ntype])

    nu, ni = tgraph.num_nodes("user"), tgraph.num_nodes("item")
    for (ul, uh), (il, ih) in [((0, nu), (0, ni)), ((3, 9), (5, 5)), ((7, 7), (2, 11)), ((nu - 4, nu), (0, 3))]:
        same(tgraph.nodes_block(torch.arange(ul, uh), torch.arange(il, ih)), tgraph.range_block((ul, uh), (il, ih)))
    users, items = torch.tensor([1, 4, 5, nu - 1]), torch.tensor([0, 6])
    block = tgraph.nodes_block(users, items)
    edge_u, edge_i = tgraph.edges("ui")
    for etype, dst_ids, dst_of in (("iu", users, edge_u), ("ui", items, edge_i)):
        want = torch.nonzero(torch.isin(dst_of, dst_ids)).flatten()
        assert torch.equal(torch.sort(block.edge_ids(etype)).values, want), etype
        src_local, dst_local = block.edges(etype)
        stype, dtype = ("item", "user") if etype == "iu" else ("user", "item")
        assert torch.equal(block.dst_nids[dtype][dst_local], dst_of[block.edge_ids(etype)])
        other = edge_i if etype == "iu" else edge_u
        assert torch.equal(block.src_nids[stype][src_local], other[block.edge_ids(etype)])
    assert torch.equal(block.src_nids["user"][:4], users) and torch.equal(block.src_nids["item"][:2], items)


def test_dgl_backend_still_default_and_backend_checked(pairs):
    with pytest.raises(ValueError, match="unknown backend 'pyg'"):
        build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="pyg")
    g = build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="torch")
    with pytest.raises(ValueError, match="backend='dgl' but the graph is a torch-backend graph"):
        make_batches("neighbor", g, fanouts=[2], batch_size=10, num_negatives=1, seed=0, rank=0, world_size=1,
                     backend="dgl")
    if dgl_available():
        assert not isinstance(build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60), BipartiteGraph)


# -- the torch sampler on its own -------------------------------------------------------------------
def test_floyd_draws_distinct_uniform_subsets():
    gen = torch.Generator().manual_seed(0)
    n = torch.tensor([5] * 20000 + [3] * 10)
    out = floyd_sample(n, 3, gen)
    assert all(len(set(row)) == 3 for row in out.tolist())
    assert int(out.min()) >= 0 and bool((out < n.unsqueeze(1)).all())
    # every 3-subset of 5 equally likely (10 subsets, 2000 expected each)
    codes = (torch.nn.functional.one_hot(out[:20000], 5).sum(1) * torch.tensor([1, 2, 4, 8, 16])).sum(1)
    counts = torch.bincount(codes)[codes.unique()].double()
    assert counts.numel() == 10
    assert chi2_z(float(((counts - 2000) ** 2 / 2000).sum()), 9) < 4


def test_seed_edges_never_in_their_own_neighbourhood(tgraph):
    b = NeighborBatches(tgraph, fanouts=[5, 5], batch_size=300, num_negatives=2, seed=11)
    assert isinstance(b.sampler, TorchNeighborSampler)
    checked = 0
    for epoch in range(3):
        for batch in b.epoch(epoch):
            seeds = set(batch.seed_eids.tolist())
            for block in batch.blocks:
                assert isinstance(block, Block)
                for et in (UI, IU):
                    eids = block.edge_ids(et)
                    assert seeds.isdisjoint(eids.tolist())
                    checked += eids.numel()
    assert checked > 10_000


def test_blocks_are_real_edges_with_exact_fanout(pairs, tgraph):
    fanouts = [6, 3]
    b = NeighborBatches(tgraph, fanouts=fanouts, batch_size=400, num_negatives=1, seed=2, rank=0, world_size=2)
    degree = {"item": np.bincount(pairs[:, 1], minlength=60), "user": np.bincount(pairs[:, 0], minlength=300)}
    for batch in list(b.epoch(0))[:4]:
        seeds = batch.seed_eids.numpy()
        assert torch.equal(batch.blocks[-1].dst_nids["user"], batch.output_users)
        assert torch.equal(batch.blocks[-1].dst_nids["item"], batch.output_items)
        assert torch.equal(batch.blocks[0].src_nids["user"], batch.input_users)
        assert torch.equal(batch.blocks[0].src_nids["item"], batch.input_items)
        for layer, block in enumerate(batch.blocks):
            for nt in NT:  # dst nodes lead the src nodes, then new nodes ascending
                n_dst = block.num_dst_nodes(nt)
                assert torch.equal(block.src_nids[nt][:n_dst], block.dst_nids[nt])
                new = block.src_nids[nt][n_dst:]
                assert bool((new[1:] > new[:-1]).all()) and block.src_nids[nt].unique().numel() == new.numel() + n_dst
            for et, s_col, d_col in ((UI, 0, 1), (IU, 1, 0)):
                src, dst = block.edges(et)
                eids = block.edge_ids(et).numpy()
                assert np.array_equal(block.src_nids[et[0]][src].numpy(), pairs[eids, s_col])
                assert np.array_equal(block.dst_nids[et[2]][dst].numpy(), pairs[eids, d_col])
                assert np.unique(eids).size == eids.size  # without replacement
                nodes = block.dst_nids[et[2]].numpy()
                excluded = np.bincount(pairs[seeds, d_col], minlength=degree[et[2]].size)[nodes]
                got = np.bincount(dst.numpy(), minlength=nodes.size)
                assert np.array_equal(got, np.minimum(fanouts[layer], degree[et[2]][nodes] - excluded))
        for lower, upper in zip(batch.blocks[:-1], batch.blocks[1:]):
            for nt in NT:
                assert torch.equal(lower.dst_nids[nt], upper.src_nids[nt])


def test_all_neighbours_with_fanout_minus_one(pairs, tgraph):
    batch = next(iter(NeighborBatches(tgraph, fanouts=[-1], batch_size=500, num_negatives=1, seed=0).epoch(0)))
    block = batch.blocks[0]
    expected = np.isin(pairs[:, 1], block.dst_nids["item"].numpy())
    expected[batch.seed_eids.numpy()] = False
    assert np.array_equal(np.sort(block.edge_ids(UI).numpy()), np.flatnonzero(expected))


def test_sampling_is_uniform_over_non_excluded_edges():
    """100 stars of 20 arms, 3 arms of each are seeds: every other arm is drawn with probability 5/17."""
    stars, arms, fanout, trials = 100, 20, 5, 40
    g = build_train_graph(np.arange(stars * arms), np.repeat(np.arange(stars), arms), stars * arms, stars,
                          backend="torch")
    sampler = TorchNeighborSampler(g, [fanout])
    arm_is_seed = np.isin(np.arange(arms), [2, 9, 15])
    seeds = torch.from_numpy(np.flatnonzero(np.tile(arm_is_seed, stars)))
    counts = np.zeros(stars * arms)
    for t in range(trials):
        _, _, blocks = sampler.sample_blocks(torch.tensor([], dtype=torch.int64), torch.arange(stars), seeds,
                                             sampler.generator(t))
        assert blocks[0].num_edges(UI) == stars * fanout
        np.add.at(counts, blocks[0].edge_ids(UI).numpy(), 1)
    assert counts[np.tile(arm_is_seed, stars)].sum() == 0
    stat, df = _uniform_chi2(counts[~np.tile(arm_is_seed, stars)].reshape(stars, -1), trials, fanout)
    assert chi2_z(stat, df) < 4, (stat, df)


@pytest.mark.parametrize("kind", ["neighbor", "full", "edges"])
def test_epoch_reproducible_resumable_and_thread_independent(tgraph, kind):
    make = lambda workers: make_batches(kind, tgraph, fanouts=[5, 4], batch_size=300, num_negatives=2, seed=9,  # noqa
                                        rank=1, world_size=3, num_workers=workers)
    first = list(make(0).epoch(4))
    assert len(first) == make(0).num_batches(4)

    def same(a, b):
        if not all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("seed_eids", "input_users", "input_items",
                                                                        "output_users", "output_items", "neg_i")):
            return False
        return all(torch.equal(x.edge_ids(et), y.edge_ids(et)) and torch.equal(x.edges(et)[0], y.edges(et)[0])
                   for x, y in zip(a.blocks, b.blocks) for et in (UI, IU))

    assert all(same(x, y) for x, y in zip(first, make(0).epoch(4)))
    assert all(same(x, y) for x, y in zip(first, make(2).epoch(4)))  # sampled in a prefetch thread
    resumed = list(make(0).epoch(4, start_step=2))
    assert [b.step for b in resumed] == list(range(2, len(first)))
    assert all(same(x, y) for x, y in zip(first[2:], resumed))
    if kind == "neighbor":
        assert not same(first[0], next(iter(make(0).epoch(5))))


def test_full_batches_use_the_whole_graph(pairs, tgraph):
    batch = next(iter(make_batches("full", tgraph, fanouts=[3, 3], batch_size=256, num_negatives=1, seed=0, rank=0,
                                   world_size=1).epoch(0)))
    assert len(batch.blocks) == 2 and all(b is tgraph.full_block() for b in batch.blocks)
    assert batch.stats()["block_edges"] == [2 * len(pairs)] * 2


# -- GCN on torch blocks ----------------------------------------------------------------------------
def _gcn(combine="last", dgl_modules=None, seed=2, num_layers=2) -> GCN:
    torch.manual_seed(seed)
    gcn = GCN(DIM, num_layers=num_layers, dropout=[0.5, 0.2], combine=combine, leaky_slope=0.1,
              dgl_modules=dgl_modules).double()
    with torch.no_grad():
        for name, p in gcn.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p))
    return gcn.eval()


def _feats(n_users, n_items, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {"user": torch.randn(n_users, DIM, generator=gen, dtype=torch.float64),
            "item": torch.randn(n_items, DIM, generator=gen, dtype=torch.float64)}


def test_torch_gcn_is_graphsage_mean_with_zero_in_degree(pairs, tgraph):
    """One layer over the whole graph, against a dense adjacency; users/items without edges get fc_self only."""
    gcn = _gcn(num_layers=1, dgl_modules=False)
    feats = _feats(300, 60)
    out = gcn.forward_graph(tgraph, feats)
    for dst_t, src_t, etype, d_col, s_col in (("user", "item", "iu", 0, 1), ("item", "user", "ui", 1, 0)):
        conv = gcn.layers[0].mods[etype]
        adjacency = torch.zeros(tgraph.num_nodes(dst_t), tgraph.num_nodes(src_t), dtype=torch.float64)
        adjacency[torch.from_numpy(pairs[:, d_col]), torch.from_numpy(pairs[:, s_col])] = 1.0
        mean = adjacency @ feats[src_t] / adjacency.sum(1, keepdim=True).clamp(min=1)
        expected = conv.fc_self(feats[dst_t]) + conv.fc_neigh(mean)
        torch.testing.assert_close(out[dst_t], expected, **TOL)
    # sampled blocks with full fan-out give the whole-graph rows of their output nodes
    sampler = TorchNeighborSampler(tgraph, [-1, -1])
    gcn2 = _gcn(combine="mean", dgl_modules=False)
    full = gcn2.forward_graph(tgraph, feats)
    out_u, out_i = torch.tensor([0, 5, 299]), torch.tensor([1, 59])
    in_u, in_i, blocks = sampler.sample_blocks(out_u, out_i, torch.tensor([], dtype=torch.int64), sampler.generator(0))
    got = gcn2(blocks, {"user": feats["user"][in_u], "item": feats["item"][in_i]})
    torch.testing.assert_close(got["user"], full["user"][out_u], **TOL)
    torch.testing.assert_close(got["item"], full["item"][out_i], **TOL)


@pytest.mark.parametrize("scorer", ["gcn", "mf"])
def test_recommender_on_torch_blocks_equals_full_graph(pairs, tgraph, scorer):
    """``MetaMMFRecommender.forward_blocks`` on torch blocks (full fan-out) = its full-graph pass, both scorers."""
    from metammf_dist.config import ModelConfig
    from metammf_dist.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(fusion_dims=[8, 4], item_id_dim=3, user_id_dim=7, meta_dim=3, gcn_layers=2, scorer=scorer)
    model = build_model(cfg, 300, 60, 11).double().eval()
    feats = torch.randn(60, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = model.forward_graph(tgraph, feats, chunk_size=16)
    sampler = TorchNeighborSampler(tgraph, [-1, -1])
    out_u, out_i = torch.tensor([3, 4, 250]), torch.tensor([0, 7, 59])
    in_u, in_i, blocks = sampler.sample_blocks(out_u, out_i, torch.tensor([], dtype=torch.int64), sampler.generator(0))
    out = model.forward_blocks(blocks, in_u, in_i, feats[in_i])
    torch.testing.assert_close(out["user"], full["user"][out_u], **TOL)
    torch.testing.assert_close(out["item"], full["item"][out_i], **TOL)


def test_same_parameters_with_and_without_dgl():
    needs_dgl()
    with_dgl, without = _gcn(dgl_modules=True), _gcn(dgl_modules=False)
    a, b = with_dgl.state_dict(), without.state_dict()
    assert list(a) == list(b)  # same names, same order: checkpoints load across lanes
    assert all(torch.equal(a[k], b[k]) for k in a)  # same init from the same seed (same random draws)
    torch.manual_seed(0)
    plain_dgl = GCN(DIM, dgl_modules=True)
    torch.manual_seed(0)
    plain_torch = GCN(DIM, dgl_modules=False)
    assert all(torch.equal(x, y) for x, y in zip(plain_dgl.state_dict().values(), plain_torch.state_dict().values()))


@pytest.mark.parametrize("combine", ["last", "mean"])
def test_torch_gcn_on_torch_blocks_equals_dgl_gcn_on_dgl_blocks(pairs, tgraph, combine):
    dgl = needs_dgl()
    gcn = _gcn(combine=combine, dgl_modules=True)
    feats = _feats(300, 60)
    b = NeighborBatches(tgraph, fanouts=[4, 3], batch_size=200, num_negatives=2, seed=5)
    dgraph = build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="dgl")
    dgl_side = NeighborBatches(dgraph, fanouts=[4, 3], batch_size=200, num_negatives=2, seed=5)
    for batch, dbatch in zip(list(b.epoch(0))[:3], list(dgl_side.epoch(0))[:3]):
        inputs = {"user": feats["user"][batch.input_users], "item": feats["item"][batch.input_items]}
        # the same sample as torch blocks and as DGL blocks
        ours = gcn(batch.blocks, inputs)
        theirs = gcn([to_dgl_block(x) for x in batch.blocks], inputs)
        for nt in NT:
            assert ours[nt].shape == (batch.blocks[-1].num_dst_nodes(nt), DIM)
            torch.testing.assert_close(ours[nt], theirs[nt], **TOL)
        # and a DGL-backend sample, converted to torch blocks
        dinputs = {"user": feats["user"][dbatch.input_users], "item": feats["item"][dbatch.input_items]}
        theirs = gcn(dbatch.blocks, dinputs)
        ours = gcn([from_dgl_block(x) for x in dbatch.blocks], dinputs)
        for nt in NT:
            torch.testing.assert_close(ours[nt], theirs[nt], **TOL)
    # whole graph, and the training path with dropout: same masks, same numbers, same gradients
    full_t, full_d = gcn.forward_graph(tgraph, feats), gcn.forward_graph(dgraph, feats)
    for nt in NT:
        torch.testing.assert_close(full_t[nt], full_d[nt], **TOL)
    gcn.train()
    grads = []
    for graph in (tgraph, dgraph):
        gcn.zero_grad()
        torch.manual_seed(7)
        out = gcn.forward_graph(graph, feats)
        (out["user"].square().sum() + out["item"].sum()).backward()
        grads.append({k: p.grad.clone() for k, p in gcn.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], **TOL)
    assert dgl.NID  # DGL really was used for the comparison


def test_gcn_without_dgl_modules_rejects_dgl_graphs(pairs):
    dgl = needs_dgl()
    g = dgl.heterograph({UI: (torch.tensor([0]), torch.tensor([0])), IU: (torch.tensor([0]), torch.tensor([0]))})
    with pytest.raises(TypeError, match="graph_backend=torch"):
        _gcn(dgl_modules=False).forward_graph(g, _feats(1, 1))


# -- distribution equivalence with DGL --------------------------------------------------------------
def _uniform_chi2(counts_rows, draws: int, fanout: int):
    """Pearson statistic of per-edge draw counts against the exact law (each of a row's u usable edges
    is kept with probability fanout/u), scaled for sampling without replacement; -> (statistic, df)."""
    stat, df = 0.0, 0
    for row in counts_rows:
        u = len(row)
        p = fanout / u
        expected = draws * p
        stat += float(((np.asarray(row) - expected) ** 2).sum() / (expected * (1 - p))) * (u - 1) / u
        df += u - 1
    return stat, df


def _one_hop_counts(draw_fn, draws, rows_usable, num_edges):
    """Run ``draw_fn(t) -> (dst global ids, edge ids)`` ``draws`` times; per-edge counts and a check
    that every dst node got exactly min(fanout, usable) edges each time."""
    counts = np.zeros(num_edges)
    for t in range(draws):
        dst, eids = draw_fn(t)
        per_node = np.bincount(dst, minlength=rows_usable["expect"].size)
        assert np.array_equal(per_node[rows_usable["nodes"]], rows_usable["expect"][rows_usable["nodes"]])
        np.add.at(counts, eids, 1)
    return counts


def test_one_hop_distribution_matches_dgl_sample_neighbors(pairs, tgraph):
    """Items in-edges (``ui``), fan-out 5, a fixed set of excluded seed edges: our torch sampler, the DGL
    backend (numpy sampler) and ``dgl.sampling.sample_neighbors`` on the graph without the seed edges, 300
    draws each: exact per-node sampled degrees, per-edge frequencies against the exact law and torch vs DGL."""
    dgl = needs_dgl()
    from metammf_dist.sampler import UniformNeighborSampler

    fanout, draws = 5, 300
    dgraph = build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="dgl")
    seeds = torch.from_numpy(np.random.default_rng(3).choice(len(pairs), 150, replace=False))
    items = torch.arange(60)
    degree = np.bincount(pairs[:, 1], minlength=60)
    usable = degree - np.bincount(pairs[seeds.numpy(), 1], minlength=60)
    rows = {"nodes": np.arange(60), "expect": np.minimum(fanout, usable)}
    no_users = torch.tensor([], dtype=torch.int64)

    tsampler = TorchNeighborSampler(tgraph, [fanout])

    def torch_draw(t):
        _, _, (block,) = tsampler.sample_blocks(no_users, items, seeds, tsampler.generator(t))
        return block.dst_nids["item"][block.edges(UI)[1]].numpy(), block.edge_ids(UI).numpy()

    nsampler = UniformNeighborSampler(dgraph, [fanout])

    def numpy_draw(t):
        _, _, (block,) = nsampler.sample_blocks(no_users, items, seeds, nsampler.generator(t))
        return block.dstnodes["item"].data[dgl.NID][block.edges(etype=UI)[1]].numpy(), \
            block.edges[UI].data[dgl.EID].numpy()

    dgl.seed(0)
    reduced = _without_edges(dgl, dgraph, seeds)

    def dgl_draw(t):
        sub = dgl.sampling.sample_neighbors(reduced, {"item": items, "user": no_users}, fanout)
        return sub.edges(etype=UI)[1].numpy(), reduced.edges[UI].data["train_eid"][sub.edges[UI].data[dgl.EID]].numpy()

    results = {name: _one_hop_counts(fn, draws, rows, len(pairs))
               for name, fn in (("torch", torch_draw), ("numpy+dgl blocks", numpy_draw), ("dgl", dgl_draw))}
    big = np.flatnonzero(usable > fanout)
    assert big.size >= 10
    is_seed = np.zeros(len(pairs), dtype=bool)
    is_seed[seeds.numpy()] = True
    for name, counts in results.items():
        assert counts[is_seed].sum() == 0, name
        per_row = [counts[(pairs[:, 1] == node) & ~is_seed] for node in big]
        stat, df = _uniform_chi2(per_row, draws, fanout)
        assert chi2_z(stat, df) < 4, (name, stat, df)
    # two-sample: torch backend vs DGL's own sampler, edge by edge over the rows that are drawn from
    mask = np.isin(pairs[:, 1], big) & ~is_seed
    a, b = results["torch"][mask], results["dgl"][mask]
    p = (fanout / usable[pairs[mask, 1]])
    stat = float(((a - b) ** 2 / np.maximum(a + b, 1) / (1 - p)).sum())
    df = int(mask.sum()) - big.size
    assert chi2_z(stat * df / mask.sum(), df) < 4, (stat, df)


def _without_edges(dgl, dgraph, eids):
    """``dgraph`` minus edges ``eids`` of both types; ``edata["train_eid"]`` keeps the original ids."""
    g = dgraph.clone()
    for et in (UI, IU):
        g.edges[et].data["train_eid"] = torch.arange(g.num_edges(et))
    return dgl.remove_edges(dgl.remove_edges(g, eids, etype=UI), eids, etype=IU)


def test_dgl_exclude_edges_drops_after_drawing(pairs, tgraph):
    """Pins the DGL behaviour that makes ``dgl.remove_edges`` the right reference (see the module docstring)."""
    dgl = needs_dgl()
    fanout = 5
    dgraph = build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="dgl")
    seeds = torch.from_numpy(np.random.default_rng(3).choice(len(pairs), 150, replace=False))
    usable = np.bincount(pairs[:, 1], minlength=60) - np.bincount(pairs[seeds.numpy(), 1], minlength=60)
    touched = np.bincount(pairs[seeds.numpy(), 1], minlength=60) > 0
    dgl.seed(0)
    short = 0
    for _ in range(20):
        sub = dgl.sampling.sample_neighbors(dgraph, {"item": torch.arange(60), "user": torch.tensor([], dtype=torch.int64)},
                                            fanout, exclude_edges={UI: seeds, IU: seeds})
        assert not np.isin(sub.edges[UI].data[dgl.EID].numpy(), seeds.numpy()).any()
        got = np.bincount(sub.edges(etype=UI)[1].numpy(), minlength=60)
        assert np.array_equal(got[~touched], np.minimum(fanout, usable[~touched]))
        assert (got <= np.minimum(fanout, usable)).all()
        short += int((got < np.minimum(fanout, usable)).sum())
    assert short > 0  # DGL kept fewer than min(fanout, usable) somewhere; ours never does (tests above)


def test_two_hop_node_frequencies_match_dgl_neighbor_sampler(pairs, tgraph):
    """Two layers (fan-outs [4, 3]) from fixed output nodes with excluded seed edges: how often each user
    and item becomes an input node, ours (torch backend) vs ``dgl.dataloading.NeighborSampler`` (on the
    graph without the seed edges)."""
    dgl = needs_dgl()
    draws = 300
    dgraph = build_train_graph(pairs[:, 0], pairs[:, 1], 300, 60, backend="dgl")
    rng = np.random.default_rng(4)
    seeds = torch.from_numpy(rng.choice(len(pairs), 100, replace=False))
    out_users = torch.from_numpy(np.unique(pairs[seeds.numpy(), 0]))
    out_items = torch.from_numpy(np.unique(pairs[seeds.numpy(), 1]))
    tsampler = TorchNeighborSampler(tgraph, [4, 3])
    ours = {nt: np.zeros(n) for nt, n in (("user", 300), ("item", 60))}
    for t in range(draws):
        in_u, in_i, _ = tsampler.sample_blocks(out_users, out_items, seeds, tsampler.generator(t))
        ours["user"][in_u.numpy()] += 1
        ours["item"][in_i.numpy()] += 1
    dgl.seed(1)
    theirs = {nt: np.zeros(n) for nt, n in (("user", 300), ("item", 60))}
    ref = dgl.dataloading.NeighborSampler([4, 3])
    reduced = _without_edges(dgl, dgraph, seeds)
    for _ in range(draws):
        input_nodes, _, _ = ref.sample_blocks(reduced, {"user": out_users, "item": out_items})
        for nt in NT:
            theirs[nt][input_nodes[nt].numpy()] += 1
    for nt in NT:
        a, b = ours[nt], theirs[nt]
        assert np.array_equal(a > 0, b > 0), nt  # the same reachable nodes
        assert (a == draws)[out_users.numpy() if nt == "user" else out_items.numpy()].all()
        cells = ~(((a == draws) & (b == draws)) | ((a == 0) & (b == 0)))  # drop certain and impossible nodes
        pooled = (a[cells] + b[cells]) / (2 * draws)
        z = (a[cells] - b[cells]) / np.sqrt(2 * draws * pooled * (1 - pooled)).clip(min=1e-9)
        stat, df = float((z ** 2).sum()), int(cells.sum())
        assert df > 10 and chi2_z(stat, df) < 4, (nt, stat, df)


def test_sampler_benchmark_tiny(capsys):
    """``metammf-dist bench sampler`` at toy size: runs every side available and ends with its JSON line."""
    import argparse
    import json

    from metammf_dist.bench import sampler as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--users", "400", "--items", "300", "--edges", "5000", "--batch", "256", "--steps", "3",
                              "--repeats", "1", "--fanouts", "4,3"])
    assert bench.run(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["edges"] == 5000 and out["torch_steps_per_s"] > 0
    if dgl_available():
        assert out["dgl_steps_per_s"] > 0 and out["dgl_native_steps_per_s"] > 0 and out["torch_vs_dgl"] > 0
    else:
        assert out["torch_vs_dgl"] is None


# -- negatives: a rank keeps its own edges' rows of the epoch's draw (both lanes: torch's generator) --------
@pytest.mark.parametrize("num_pos,chunk", [(3000, 256), (3000, 3000), (2_200_000, None)])
def test_negatives_of_some_rows_are_those_rows_of_the_whole_draw(num_pos, chunk):
    """A rank draws the epoch's stream in chunks and keeps its own edges' rows: the same values as the rows of
    the whole draw (with and without a pool; torch's generator yields the same stream cut into pieces)."""
    rows = torch.randperm(num_pos, generator=torch.Generator().manual_seed(0))[: num_pos // 3].sort().values
    kw = {} if chunk is None else {"chunk": chunk}
    for pool in (None, torch.tensor([1, 4, 5, 9, 11, 30])):
        full = negatives.draw_epoch_negatives(num_pos, 40, 2, seed=4, epoch=1, pool=pool)
        some = negatives.draw_epoch_negatives(num_pos, 40, 2, seed=4, epoch=1, pool=pool, rows=rows, **kw)
        assert some.shape == (rows.numel(), 2) and torch.equal(some, full[rows])
    empty = negatives.draw_epoch_negatives(num_pos, 40, 2, seed=4, epoch=1, rows=torch.zeros(0, dtype=torch.int64), **kw)
    assert empty.shape == (0, 2)
