"""Training mini-batches on small random bipartite graphs, with real DGL blocks.

Checks the sampler's promises: rank partitions (disjoint, covering, equal step counts), seeded
negatives, reproducible batches (rerun, resume, prefetch thread), seed-edge exclusion in every block
and direction, fan-outs, pair indices, full-graph blocks and the feature stage.
"""
from __future__ import annotations

import threading

import dgl
import numpy as np
import pytest
import torch

from metammf_dist.errors import DataError
from metammf_dist.sampler import (
    EdgeBatches, EdgePartition, FullGraphBatches, NeighborBatches, UniformNeighborSampler, attach_features,
    build_train_graph, make_batches, prefetch,
)
from metammf_dist.sampler.negatives import draw_epoch_negatives

UI, IU = ("user", "ui", "item"), ("item", "iu", "user")


def random_graph(num_users=300, num_items=60, num_edges=4000, seed=0, power=1.2):
    """Unique (user, item) pairs with power-law item popularity, so some items are hubs."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1) ** power
    users = rng.integers(0, num_users, num_edges)
    items = rng.choice(num_items, num_edges, p=pop / pop.sum())
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))]
    return build_train_graph(pairs[:, 0], pairs[:, 1], num_users, num_items), pairs


@pytest.fixture(scope="module")
def graph_and_pairs():
    return random_graph()


class ArrayStore:
    """An in-memory feature store: row i of ``table`` is item i's features; records the ids asked for."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self.calls = []

    def gather_concat(self, ids: np.ndarray) -> np.ndarray:
        self.calls.append(ids.copy())
        return self.table[ids]


def batches_equal(a, b) -> bool:
    names = ("step", "num_pos")
    tensors = ("seed_eids", "input_users", "input_items", "output_users", "output_items", "pos_u", "pos_i",
               "neg_u", "neg_i")
    if any(getattr(a, n) != getattr(b, n) for n in names):
        return False
    if any(not torch.equal(getattr(a, n), getattr(b, n)) for n in tensors):
        return False
    if len(a.blocks) != len(b.blocks):
        return False
    for x, y in zip(a.blocks, b.blocks):
        for et in (UI, IU):
            if not (torch.equal(x.edges[et].data[dgl.EID], y.edges[et].data[dgl.EID])
                    and all(torch.equal(p, q) for p, q in zip(x.edges(etype=et), y.edges(etype=et)))):
                return False
        for nt in ("user", "item"):
            if not torch.equal(x.srcnodes[nt].data[dgl.NID], y.srcnodes[nt].data[dgl.NID]):
                return False
    return True


# -- graph ------------------------------------------------------------------------------------------
def test_graph_contract(graph_and_pairs):
    g, pairs = graph_and_pairs
    assert set(g.ntypes) == {"user", "item"} and set(g.canonical_etypes) == {UI, IU}
    assert g.num_nodes("user") == 300 and g.num_nodes("item") == 60
    u, i = g.edges(etype=UI, order="eid")
    i2, u2 = g.edges(etype=IU, order="eid")
    assert torch.equal(u, u2) and torch.equal(i, i2)
    assert np.array_equal(u.numpy(), pairs[:, 0]) and np.array_equal(i.numpy(), pairs[:, 1])


def test_graph_rejects_bad_ids():
    with pytest.raises(DataError, match="item id 7 is out of range"):
        build_train_graph(np.array([0, 1]), np.array([2, 7]), 3, 5)
    with pytest.raises(DataError, match="user id -1"):
        build_train_graph(np.array([0, -1]), np.array([0, 0]), 3, 5)
    with pytest.raises(DataError, match="2 user ids but 1 item ids"):
        build_train_graph(np.array([0, 1]), np.array([0]), 3, 5)


# -- partition --------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_edges,batch_size,world_size", [
    (1000, 100, 4), (1003, 100, 4), (1001, 100, 4), (997, 96, 3), (50, 64, 2), (7, 8, 7), (1000, 101, 1),
])
def test_partition_disjoint_covering_equal_steps(num_edges, batch_size, world_size):
    parts = [EdgePartition(num_edges, batch_size, r, world_size, seed=5).batches(epoch=3)
             for r in range(world_size)]
    steps = {len(p) for p in parts}
    assert len(steps) == 1 and steps.pop() == EdgePartition(num_edges, batch_size, 0, world_size, 5).num_batches()
    every = torch.cat([b for p in parts for b in p])
    assert every.numel() == num_edges and torch.equal(every.sort().values, torch.arange(num_edges))
    per_rank = batch_size // world_size
    for step in range(len(parts[0])):
        sizes = [p[step].numel() for p in parts]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        if step < len(parts[0]) - 1:
            assert sizes == [per_rank] * world_size


def test_partition_seeded_by_epoch_and_world_size_invariant():
    one = EdgePartition(1000, 100, 0, 1, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(one.batches(0), one.batches(0)))
    assert not torch.equal(one.batches(0)[0], one.batches(1)[0])
    two = [EdgePartition(1000, 100, r, 2, seed=5).batches(0) for r in range(2)]
    for step, batch in enumerate(one.batches(0)):  # a global step is the same edges at any world size
        assert torch.equal(torch.cat([two[0][step], two[1][step]]), batch)


def test_partition_rejects_too_many_ranks():
    with pytest.raises(ValueError, match="batch_size=2 is smaller than world_size=4"):
        EdgePartition(100, 2, 0, 4, seed=0)


# -- negatives --------------------------------------------------------------------------------------
def test_negatives_reproducible_and_fresh_each_epoch():
    a = draw_epoch_negatives(500, 40, 3, seed=1, epoch=2)
    assert a.shape == (500, 3) and a.dtype == torch.int64 and int(a.min()) >= 0 and int(a.max()) < 40
    assert torch.equal(a, draw_epoch_negatives(500, 40, 3, seed=1, epoch=2))
    assert not torch.equal(a, draw_epoch_negatives(500, 40, 3, seed=1, epoch=3))
    assert not torch.equal(a, draw_epoch_negatives(500, 40, 3, seed=2, epoch=2))


def test_negatives_do_not_depend_on_world_size(graph_and_pairs):
    """A positive edge gets the same negatives in a 1-rank and a 2-rank run (launcher equivalence)."""
    g, _ = graph_and_pairs

    def pairs(batches):
        out = {}
        for b in batches:
            neg = b.output_items[b.neg_i].reshape(b.num_pos, -1)
            for e, row in zip(b.seed_eids.tolist(), neg.tolist()):
                out[e] = row
        return out

    one = pairs(EdgeBatches(g, batch_size=256, num_negatives=2, seed=5).epoch(1))
    two = {}
    for r in range(2):
        two.update(pairs(EdgeBatches(g, batch_size=256, num_negatives=2, seed=5, rank=r, world_size=2).epoch(1)))
    assert one == two and len(one) == g.num_edges("ui")


def test_batch_negatives_follow_the_epoch(graph_and_pairs):
    g, _ = graph_and_pairs
    b = EdgeBatches(g, batch_size=256, num_negatives=2, seed=3)
    e0, e0_again, e1 = list(b.epoch(0)), list(b.epoch(0)), list(b.epoch(1))
    neg = lambda batch: batch.output_items[batch.neg_i]
    assert all(torch.equal(neg(x), neg(y)) for x, y in zip(e0, e0_again))
    assert not torch.equal(torch.cat([neg(x) for x in e0]), torch.cat([neg(x) for x in e1]))


# -- pair indices -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["neighbor", "edges", "full"])
def test_indices_map_back_to_global_pairs(graph_and_pairs, kind):
    g, pairs = graph_and_pairs
    k = 3
    b = make_batches(kind, g, fanouts=[4, 3], batch_size=200, num_negatives=k, seed=0, rank=1, world_size=2)
    for batch in b.epoch(0):
        eids = batch.seed_eids.numpy()
        assert batch.num_pos == eids.size
        assert np.array_equal(batch.output_users[batch.pos_u].numpy(), pairs[eids, 0])
        assert np.array_equal(batch.output_items[batch.pos_i].numpy(), pairs[eids, 1])
        assert batch.neg_u.numel() == batch.neg_i.numel() == k * eids.size
        assert np.array_equal(batch.output_users[batch.neg_u].numpy(), np.repeat(pairs[eids, 0], k))
        if batch.blocks:
            last, first = batch.blocks[-1], batch.blocks[0]
            assert torch.equal(last.dstnodes["user"].data[dgl.NID], batch.output_users)
            assert torch.equal(last.dstnodes["item"].data[dgl.NID], batch.output_items)
            assert torch.equal(first.srcnodes["user"].data[dgl.NID], batch.input_users)
            assert torch.equal(first.srcnodes["item"].data[dgl.NID], batch.input_items)
        else:
            assert torch.equal(batch.input_users, batch.output_users)
            assert torch.equal(batch.input_items, batch.output_items)
        assert batch.num_input_items == batch.input_items.numel()


# -- neighbour sampling -----------------------------------------------------------------------------
def test_seed_edges_never_in_their_own_neighbourhood(graph_and_pairs):
    g, pairs = graph_and_pairs
    b = NeighborBatches(g, fanouts=[5, 5], batch_size=300, num_negatives=2, seed=11)
    checked = 0
    for epoch in range(3):
        for batch in b.epoch(epoch):
            seeds = set(batch.seed_eids.tolist())
            for block in batch.blocks:
                for et in (UI, IU):
                    eids = block.edges[et].data[dgl.EID]
                    assert seeds.isdisjoint(eids.tolist())
                    checked += eids.numel()
    assert checked > 10_000


def test_blocks_are_real_edges_with_fanout_and_exclusion(graph_and_pairs):
    g, pairs = graph_and_pairs
    fanouts = [6, 3]
    b = NeighborBatches(g, fanouts=fanouts, batch_size=400, num_negatives=1, seed=2, rank=0, world_size=2)
    item_deg = np.bincount(pairs[:, 1], minlength=60)
    user_deg = np.bincount(pairs[:, 0], minlength=300)
    for batch in list(b.epoch(0))[:4]:
        seeds = batch.seed_eids.numpy()
        for layer, block in enumerate(batch.blocks):
            fanout = fanouts[layer]
            src_nid = {nt: block.srcnodes[nt].data[dgl.NID] for nt in ("user", "item")}
            dst_nid = {nt: block.dstnodes[nt].data[dgl.NID] for nt in ("user", "item")}
            for nt in ("user", "item"):  # DGL block convention: dst nodes lead the src nodes
                assert torch.equal(src_nid[nt][: block.num_dst_nodes(nt)], dst_nid[nt])
                assert dst_nid[nt].unique().numel() == dst_nid[nt].numel()
            for et, (s_col, d_col, dst_type, deg) in {UI: (0, 1, "item", item_deg), IU: (1, 0, "user", user_deg)}.items():
                src, dst = block.edges(etype=et)
                eids = block.edges[et].data[dgl.EID].numpy()
                assert np.array_equal(src_nid[et[0]][src].numpy(), pairs[eids, s_col])
                assert np.array_equal(dst_nid[et[2]][dst].numpy(), pairs[eids, d_col])
                assert np.unique(eids).size == eids.size  # without replacement
                nodes = dst_nid[dst_type].numpy()
                excluded = np.bincount(pairs[seeds, d_col], minlength=deg.size)[nodes]
                got = np.bincount(dst.numpy(), minlength=nodes.size)
                assert np.array_equal(got, np.minimum(fanout, deg[nodes] - excluded))
        for lower, upper in zip(batch.blocks[:-1], batch.blocks[1:]):
            for nt in ("user", "item"):
                assert torch.equal(lower.dstnodes[nt].data[dgl.NID], upper.srcnodes[nt].data[dgl.NID])


def test_sampling_is_uniform_over_non_excluded_edges():
    # 100 stars: item j has 20 users, 3 of its edges are seeds.  Each of the other 17 edges of a star
    # should be drawn 5/17 of the time with fan-out 5.
    stars, arms = 100, 20
    g = build_train_graph(np.arange(stars * arms), np.repeat(np.arange(stars), arms), stars * arms, stars)
    sampler = UniformNeighborSampler(g, [5])
    arm_is_seed = np.isin(np.arange(arms), [2, 9, 15])
    seeds = torch.from_numpy(np.flatnonzero(np.tile(arm_is_seed, stars)))
    counts = np.zeros(arms)
    trials = 30
    for t in range(trials):
        rng = np.random.Generator(np.random.PCG64(t))
        _, _, blocks = sampler.sample_blocks(torch.tensor([], dtype=torch.int64), torch.arange(stars), seeds, rng)
        np.add.at(counts, blocks[0].edges[UI].data[dgl.EID].numpy() % arms, 1)
    assert counts[arm_is_seed].sum() == 0
    freq = counts[~arm_is_seed] / (trials * stars)
    assert np.abs(freq - 5 / 17).max() < 0.04


def test_all_neighbours_with_fanout_minus_one(graph_and_pairs):
    g, pairs = graph_and_pairs
    b = NeighborBatches(g, fanouts=[-1], batch_size=500, num_negatives=1, seed=0)
    batch = next(iter(b.epoch(0)))
    block = batch.blocks[0]
    items = block.dstnodes["item"].data[dgl.NID].numpy()
    expected = np.isin(pairs[:, 1], items)
    expected[batch.seed_eids.numpy()] = False
    assert np.array_equal(np.sort(block.edges[UI].data[dgl.EID].numpy()), np.flatnonzero(expected))


# -- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["neighbor", "edges"])
def test_epoch_reproducible_resumable_and_thread_independent(graph_and_pairs, kind):
    g, _ = graph_and_pairs
    make = lambda workers: make_batches(kind, g, fanouts=[5, 4], batch_size=300, num_negatives=2, seed=9,
                                        rank=1, world_size=3, num_workers=workers)
    first = list(make(0).epoch(4))
    assert len(first) == make(0).num_batches(4)
    assert all(batches_equal(x, y) for x, y in zip(first, make(0).epoch(4)))
    assert all(batches_equal(x, y) for x, y in zip(first, make(2).epoch(4)))  # sampled in a thread
    resumed = list(make(0).epoch(4, start_step=3))
    assert [b.step for b in resumed] == list(range(3, len(first)))
    assert all(batches_equal(x, y) for x, y in zip(first[3:], resumed))
    other = list(make(0).epoch(5))
    assert not batches_equal(first[0], other[0])


def test_ranks_partition_the_epoch(graph_and_pairs):
    g, pairs = graph_and_pairs
    world = 3
    per_rank = [list(NeighborBatches(g, fanouts=[3, 3], batch_size=600, num_negatives=1, seed=4, rank=r,
                                     world_size=world).epoch(1)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    seen = torch.cat([b.seed_eids for p in per_rank for b in p])
    assert torch.equal(seen.sort().values, torch.arange(len(pairs)))


# -- full graph -------------------------------------------------------------------------------------
def test_full_graph_blocks_cover_everything(graph_and_pairs):
    g, pairs = graph_and_pairs
    b = FullGraphBatches(g, num_layers=2, batch_size=256, num_negatives=2, seed=0)
    batch = next(iter(b.epoch(0)))
    assert len(batch.blocks) == 2
    for block in batch.blocks:
        for nt, n in (("user", 300), ("item", 60)):
            assert block.num_src_nodes(nt) == block.num_dst_nodes(nt) == n
            assert torch.equal(block.srcnodes[nt].data[dgl.NID], torch.arange(n))
        for et in (UI, IU):
            assert torch.equal(block.edges[et].data[dgl.EID].sort().values, torch.arange(len(pairs)))
    assert torch.equal(batch.pos_u, torch.from_numpy(pairs[batch.seed_eids.numpy(), 0]))
    assert torch.equal(batch.pos_i, torch.from_numpy(pairs[batch.seed_eids.numpy(), 1]))
    assert batch.num_input_items == 60


# -- features ---------------------------------------------------------------------------------------
def test_attach_features_uses_input_items(graph_and_pairs):
    g, _ = graph_and_pairs
    table = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    store = ArrayStore(table)
    batch = next(iter(NeighborBatches(g, fanouts=[2, 2], batch_size=64, num_negatives=1, seed=0).epoch(0)))
    attach_features(batch, store)
    assert len(store.calls) == 1 and np.array_equal(store.calls[0], batch.input_items.numpy())
    assert batch.item_feats.dtype == torch.float32
    assert torch.equal(batch.item_feats, torch.from_numpy(table[batch.input_items.numpy()]))


def test_prefetch_matches_inline_and_stops_cleanly(graph_and_pairs):
    g, _ = graph_and_pairs
    table = np.arange(60 * 4, dtype=np.float32).reshape(60, 4)
    source = NeighborBatches(g, fanouts=[3, 3], batch_size=128, num_negatives=1, seed=1)
    inline = list(prefetch(source.epoch(0), ArrayStore(table), ahead=0))
    ahead = list(source.epoch(0, store=ArrayStore(table)))
    threaded = list(prefetch(source.epoch(0), ArrayStore(table), ahead=2))
    for x, y, z in zip(inline, ahead, threaded):
        assert batches_equal(x, z) and batches_equal(x, y)
        assert torch.equal(x.item_feats, z.item_feats) and torch.equal(x.item_feats, y.item_feats)

    before = threading.active_count()
    it = prefetch(source.epoch(0), ArrayStore(table), ahead=1)
    next(it)
    it.close()  # e.g. a trainer that stops after max_steps_per_epoch
    assert threading.active_count() == before


def test_prefetch_reraises_errors():
    def broken():
        yield from ()
        raise RuntimeError("sampler broke")

    with pytest.raises(RuntimeError, match="sampler broke"):
        list(prefetch(broken(), None, ahead=1))


def test_make_batches_rejects_unknown_kind(graph_and_pairs):
    g, _ = graph_and_pairs
    with pytest.raises(ValueError, match="unknown sampler kind 'cluster'"):
        make_batches("cluster", g, fanouts=[2], batch_size=10, num_negatives=1, seed=0, rank=0, world_size=1)
