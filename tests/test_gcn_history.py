"""GCN layer histories (``train.gcn_history``, strategies/gcn_history.py): the one-hop history pass equals the
full-graph GCN when the histories are fresh; gradients reach only the seeds' ID rows; pushes and refreshes;
a 2-rank ZeRO-3 run resumed mid-epoch equals a straight run; the config guard.

Runs in both lanes (torch graph backend for the in-process checks; the trainer runs use the lane's).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import close, straight_and_resumed

from metammf_dist.config import ConfigError, ModelConfig, load_config
from metammf_dist.model import build_model
from metammf_dist.sampler import build_train_graph, make_batches
from metammf_dist.sampler.features import attach_features
from metammf_dist.sampler.torch_neighbor import TorchNeighborSampler
from metammf_dist.strategies.fusion_cache import FusionCache
from metammf_dist.strategies.gcn_history import GCNHistory
from metammf_dist.train.objective import BPRObjective

N_USERS, N_ITEMS, FEAT = 90, 150, 10


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 1200), rng.integers(0, N_ITEMS, 1200)], 1), axis=0)
    graph = build_train_graph(pairs[:, 0], pairs[:, 1], N_USERS, N_ITEMS, backend="torch")
    feats = torch.from_numpy(rng.standard_normal((N_ITEMS, FEAT)))
    return graph, feats


def _model(combine: str, layers: int = 2, dropout=(0.0,), knn_at=None):
    """``knn_at``: with an item–item kNN graph (``model.item_knn=3``) used at the GCN's input or output."""
    cfg = ModelConfig(fusion_dims=[8, 4], item_id_dim=3, user_id_dim=7, meta_dim=3, meta_hidden=8, gcn_layers=layers,
                      gcn_dropout=list(dropout), gcn_combine=combine, item_knn=3 if knn_at else 0,
                      item_knn_at=knn_at or "output")
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    if knn_at:
        model.set_item_graph(torch.randint(0, N_ITEMS, (N_ITEMS, 3), generator=torch.Generator().manual_seed(9)))
    return model


def _history_inputs(model, graph, feats, users, items, block_users, block_items):
    """Fusion snapshot, fresh histories and the forward_blocks arguments of a one-hop history step."""
    fused = model.fuse(feats).detach()
    history = GCNHistory(FusionCache(N_ITEMS, 4, refresh_every=10, store=None), graph, N_USERS, model.dim,
                         model.gcn.num_layers)
    history.refresh(model, fused, graph, global_step=0)
    n_u, n_i = users.numel(), items.numel()
    rows = history.lookup({"user": block_users[n_u:], "item": block_items[n_i:]})
    return fused, history, rows


@pytest.mark.parametrize("combine,layers,knn_at", [("mean", 2, None), ("last", 2, None), ("mean", 3, None),
                                                    ("mean", 2, "input"), ("mean", 2, "output")])
def test_history_pass_with_fresh_histories_equals_the_full_graph(setup, combine, layers, knn_at):
    """All in-edges, no excluded edges, no dropout: seeds' outputs = the full-graph GCN's rows (also with an
    item–item kNN graph at the GCN's input or output)."""
    graph, feats = setup
    model = _model(combine, layers, knn_at=knn_at)
    users, items = torch.tensor([0, 3, 7, 40, 89]), torch.tensor([1, 2, 50, 149])
    sampler = TorchNeighborSampler(graph, [-1])
    in_users, in_items, blocks = sampler.sample_blocks(users, items, torch.empty(0, dtype=torch.long),
                                                       sampler.generator(0))
    assert in_users.numel() > users.numel() and in_items.numel() > items.numel()
    fused, history, rows = _history_inputs(model, graph, feats, users, items, in_users, in_items)
    out = model.forward_blocks(blocks, in_users, in_items, feats[items], cached_fusion=fused[in_items[items.numel():]],
                               neighbor_history=rows)
    hidden = out["fresh"]["hidden"]
    with torch.no_grad():
        full = model.forward_graph(graph, feats)
    # the history tables are float32: compare at float32 precision
    torch.testing.assert_close(out["user"], full["user"][users], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["item"], full["item"][items], rtol=0, atol=1e-5)
    # the returned fresh rows: the seeds' layer-0 .. L-1 vectors, what a push writes back
    assert len(hidden) == layers
    torch.testing.assert_close(hidden[1]["item"].float(), history.tables[0]["item"][items], rtol=0, atol=1e-5)


def test_gradients_reach_only_the_seeds_id_rows(setup):
    graph, feats = setup
    model = _model("mean")
    batches = make_batches("neighbor", graph, fanouts=[4], batch_size=48, num_negatives=1, seed=5, rank=0,
                           world_size=1)
    batch = attach_features(next(iter(batches.epoch(0))), _Array(feats.numpy()), seeds_only=True)
    n_u, n_i = batch.output_users.numel(), batch.output_items.numel()
    assert batch.input_users.numel() > n_u and batch.input_items.numel() > n_i
    fused, history, rows = _history_inputs(model, graph, feats, batch.output_users, batch.output_items,
                                           batch.input_users, batch.input_items)
    batch.item_feats = batch.item_feats.double()
    loss, _ = BPRObjective(model)(batch, cached_fusion=fused[batch.input_items[n_i:]], neighbor_history=rows)
    loss.backward()
    for table, seeds, n_nodes in ((model.user_emb, batch.output_users, N_USERS),
                                  (model.item_emb, batch.output_items, N_ITEMS)):
        touched = torch.nonzero(table.weight.grad.abs().sum(1)).flatten()
        assert set(touched.tolist()) <= set(seeds.tolist())  # no neighbour row gets a gradient
        assert touched.numel() >= 0.9 * seeds.numel()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gcn.parameters() if p.dim() > 1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())


def _whole_block_history_pass(gcn, block, seeds, rest, history):
    """The history pass written plainly: each layer runs the GCN's own layer over [seeds; neighbours]."""
    n_out = {t: seeds[t].shape[0] for t in seeds}
    h, outputs = {t: torch.cat([seeds[t], rest[t].detach()]) for t in seeds}, [seeds]
    for index, layer in enumerate(gcn.layers):
        y = gcn._layer(layer, block, h)
        if index < gcn.num_layers - 1:
            y = {t: gcn.activation(x) for t, x in y.items()}
            h = {t: torch.cat([y[t], history[index][t].to(y[t].dtype)]) for t in y}
        outputs.append({t: y[t][: n_out[t]] for t in y})
    return gcn._combine(outputs)


@pytest.mark.parametrize("layers", [2, 3])
def test_split_aggregation_matches_the_whole_block_tape(setup, layers):
    """forward_history sums the neighbours' messages off the tape: same outputs AND same gradients (GCN
    weights, seed inputs) as running the layers over the concatenated rows."""
    graph, feats = setup
    model = _model("mean", layers)
    users, items = torch.tensor([0, 3, 7, 40, 89]), torch.tensor([1, 2, 50, 149])
    sampler = TorchNeighborSampler(graph, [3])
    in_users, in_items, blocks = sampler.sample_blocks(users, items, torch.empty(0, dtype=torch.long),
                                                       sampler.generator(3))
    _, _, rows = _history_inputs(model, graph, feats, users, items, in_users, in_items)
    with torch.no_grad():
        full = model.forward_graph(graph, feats)
    results = []
    for run in (model.gcn.forward_history, lambda *a: _whole_block_history_pass(model.gcn, *a)):
        model.zero_grad()
        seeds = {t: full[t][ids].clone().requires_grad_() for t, ids in (("user", users), ("item", items))}
        rest = {"user": full["user"][in_users[users.numel():]], "item": full["item"][in_items[items.numel():]]}
        out = run(blocks[0], seeds, rest, rows)
        out = out[0] if isinstance(out, tuple) else out  # forward_history also returns the fresh rows
        ((out["user"] ** 2).sum() + out["item"].sum()).backward()
        results.append((out, {t: seeds[t].grad for t in seeds}, [p.grad.clone() for p in model.gcn.parameters()]))
    (out_a, seed_a, par_a), (out_b, seed_b, par_b) = results
    for t in ("user", "item"):
        torch.testing.assert_close(out_a[t], out_b[t], rtol=0, atol=1e-10)
        torch.testing.assert_close(seed_a[t], seed_b[t], rtol=0, atol=1e-10)
    for a, b in zip(par_a, par_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert all(g.abs().sum() > 0 for g in par_a if g.dim() > 1)


def test_push_writes_seed_rows_last_rank_wins_and_fusion_cache(setup):
    graph, feats = setup
    model = _model("mean")
    fused = model.fuse(feats).detach().float()
    cache = FusionCache(N_ITEMS, 4, refresh_every=10, store=None)
    cache.fused, cache.refreshed_at = fused.clone(), 0
    history = GCNHistory(cache, graph, N_USERS, model.dim, 2)
    history.refresh(model, fused, graph, global_step=0)
    before_users = history.tables[0]["user"].clone()
    ids = {"user": torch.tensor([4, 9, 4]), "item": torch.tensor([7])}  # user 4 twice: the later row wins
    fresh = [{"user": torch.zeros(3, 7), "item": torch.full((1, 7), 2.0)},
             {"user": torch.tensor([[1.0] * 7, [2.0] * 7, [3.0] * 7]), "item": torch.full((1, 7), 5.0)}]
    history.push(ids, fresh)
    assert history.tables[0]["user"][4].tolist() == [3.0] * 7 and history.tables[0]["user"][9].tolist() == [2.0] * 7
    assert history.tables[0]["item"][7].tolist() == [5.0] * 7
    assert cache.fused[7].tolist() == [2.0] * 4  # the fusion part (first 4 dims) of the seed's layer-0 vector
    untouched = torch.ones(N_USERS, dtype=torch.bool)
    untouched[[4, 9]] = False
    assert torch.equal(history.tables[0]["user"][untouched], before_users[untouched])


def test_gcn_history_config_guard():
    sage = "model.gcn_type=sage"  # histories are written for GraphSAGE layers (the TikTok config uses LightGCN)
    with pytest.raises(ConfigError, match="train.gcn_history"):
        load_config("configs/tiktok.yaml", [sage, "train.gcn_history=true"])  # no fusion cache
    with pytest.raises(ConfigError, match="train.gcn_history"):
        load_config("configs/tiktok.yaml", [sage, "train.gcn_history=true", "train.fusion_cache_refresh=5",
                                            "model.gcn_layers=1", "train.fanouts=[10]", "model.gcn_dropout=[0.1]"])
    with pytest.raises(ConfigError, match="model.gcn_type"):
        load_config("configs/tiktok.yaml", ["train.gcn_history=true", "train.fusion_cache_refresh=5"])
    cfg = load_config("configs/tiktok.yaml", [sage, "train.gcn_history=true", "train.fusion_cache_refresh=5"])
    assert cfg.train.gcn_history


@pytest.mark.multiproc
def test_history_training_resumes_mid_epoch_like_a_straight_run(synth_ds, tmp_path):
    """2 ranks, ZeRO-3 (dense ID tables inside the engine: the ID modules run twice per forward), K = 3 steps;
    resumed at step 2 (module, optimizer, fusion cache and histories restored)."""
    opts = ["train.fusion_cache_refresh=3", "train.gcn_history=true", "model.gcn_type=sage"]
    straight, resumed, straight_run = straight_and_resumed(synth_ds, tmp_path, *opts)
    assert (straight_run / "checkpoints" / "epoch0001-step0000000" / "gcn_history.pt").exists()
    assert close(straight, resumed, 1e-6), (straight, resumed)
    assert straight["recall@20"] > 0


class _Array:
    def __init__(self, feats: np.ndarray):
        self.feats = feats

    def gather_concat(self, ids: np.ndarray) -> np.ndarray:
        return self.feats[ids]
