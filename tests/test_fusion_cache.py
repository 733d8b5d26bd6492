"""The fusion cache (strategies/fusion_cache.py): exact values, seed-only fusion gradients, seed-only feature
reads, its refresh schedule, checkpointed resume (2 ranks, ZeRO-3) and the config guard.

Runs in both lanes (torch graph backend for the in-process checks; the trainer runs use the lane's).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from helpers import close, last_json, straight_and_resumed, train

from metammf_dist.config import ConfigError, ModelConfig, load_config
from metammf_dist.graph.torch_graph import Block
from metammf_dist.model import build_model
from metammf_dist.sampler import build_train_graph, make_batches
from metammf_dist.sampler.features import attach_features
from metammf_dist.strategies.fusion_cache import FusionCache
from metammf_dist.train.objective import BPRObjective

N_USERS, N_ITEMS, FEAT = 120, 400, 10
TOL = dict(rtol=0.0, atol=1e-10)


class ArrayStore:
    """An in-memory feature table with the store's ``gather_concat``; counts the rows it was asked for."""

    def __init__(self, feats: np.ndarray):
        self.feats, self.rows_read = feats, 0

    def gather_concat(self, ids: np.ndarray) -> np.ndarray:
        self.rows_read += len(ids)
        return self.feats[ids]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 3000), rng.integers(0, N_ITEMS, 3000)], 1), axis=0)
    graph = build_train_graph(pairs[:, 0], pairs[:, 1], N_USERS, N_ITEMS, backend="torch")
    feats = rng.standard_normal((N_ITEMS, FEAT)).astype(np.float32).astype(np.float64)  # batches carry float32
    cfg = ModelConfig(fusion_dims=[8, 4], item_id_dim=3, user_id_dim=7, meta_dim=3, cp_rank=2, meta_hidden=8,
                      gcn_dropout=[0.0, 0.0])
    return graph, feats, cfg


def _batch(graph, store, seeds_only, step: int = 0):
    batches = make_batches("neighbor", graph, fanouts=[4, 4], batch_size=64, num_negatives=2, seed=5, rank=0,
                           world_size=1)
    batch = next(iter(batches.epoch(0, start_step=step)))
    return attach_features(batch, store, seeds_only)


def _grads(objective, batch, **rows) -> tuple:
    """(loss, gradients by parameter name, the rows the model returned for a push)."""
    objective.zero_grad()
    loss, fresh = objective(batch, **rows)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}, fresh


@pytest.mark.parametrize("fusion", ["meta", "cp", "static"])
def test_cached_step_equals_exact_values_with_seed_only_fusion_gradients(setup, fusion):
    graph, feats, cfg = setup
    cfg = ModelConfig(**{**cfg.__dict__, "fusion": fusion})
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    objective = BPRObjective(model)

    exact_store, cached_store = ArrayStore(feats), ArrayStore(feats)
    exact = _batch(graph, exact_store, seeds_only=False)
    cached = _batch(graph, cached_store, seeds_only=True)
    n_seed = int(cached.output_items.numel())
    n_input = int(cached.input_items.numel())
    assert 0 < n_seed < n_input  # the batch has neighbour items at all
    # the feature stage read only the seed items' rows, which are the first input items
    assert cached_store.rows_read == n_seed and exact_store.rows_read == n_input
    assert torch.equal(cached.input_items[:n_seed], cached.output_items)

    cache = FusionCache(N_ITEMS, cfg.fusion_dims[-1], refresh_every=1, store=ArrayStore(feats), chunk=64)
    rows = cache.prepare(cached, 0, lambda: contextlib.nullcontext(model))  # the first step refreshes
    assert cache.refreshes == 1 and cache.refreshed_at == 0
    torch.testing.assert_close(cache.fused, model.fuse(torch.from_numpy(feats)).float().detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(rows["cached_fusion"], cache.fused[cached.input_items[n_seed:]], rtol=0, atol=0)
    cache.fused = model.fuse(torch.from_numpy(feats)).detach()  # float64 copy for a 1e-10 comparison
    rows = cache.prepare(cached, 0, None)  # not due again at the same step: no refresh
    assert cache.refreshes == 1

    loss_exact, g_exact, none = _grads(objective, exact)
    loss_cached, g_cached, fresh = _grads(objective, cached, **rows)
    assert none is None
    torch.testing.assert_close(loss_cached, loss_exact, **TOL)

    # oracle for the gradients: the exact forward with the neighbour rows' fusion output detached
    full_fuse = model.fuse
    model.fuse = lambda x: torch.cat([full_fuse(x)[:n_seed], full_fuse(x)[n_seed:].detach()])
    try:
        _, g_oracle, _ = _grads(objective, exact)
    finally:
        del model.fuse
    assert g_cached.keys() == g_oracle.keys()
    for name in g_oracle:
        torch.testing.assert_close(g_cached[name], g_oracle[name], **TOL, msg=name)
    fusion_params = [n for n in g_oracle if ".fusion." in n]
    assert fusion_params
    # ...which is not the exact gradient: neighbour items do move the fusion without the cache
    assert any(not torch.allclose(g_cached[n], g_exact[n], rtol=0, atol=1e-12) for n in fusion_params)
    for name in g_oracle:
        if ".fusion." not in name:  # ID tables and GCN: same gradient as the exact step
            torch.testing.assert_close(g_cached[name], g_exact[name], **TOL, msg=name)

    # after the step the seeds' exact fusion rows go back into the cache; no other row changes
    seeds = cached.output_items
    torch.testing.assert_close(fresh["fusion"], full_fuse(torch.from_numpy(feats[seeds.numpy()])), **TOL)
    cache.fused = torch.zeros_like(cache.fused)
    cache.after_step(cached, fresh)
    torch.testing.assert_close(cache.fused[seeds], fresh["fusion"], **TOL)
    others = torch.ones(N_ITEMS, dtype=torch.bool)
    others[seeds] = False
    assert cache.fused[others].abs().sum() == 0


def test_push_later_row_wins_and_needs_a_refresh():
    cache = FusionCache(6, 2, refresh_every=5, store=None)
    with pytest.raises(RuntimeError, match="before the first refresh"):
        cache.push(torch.tensor([1]), torch.ones(1, 2))
    cache.fused = torch.zeros(6, 2)
    cache.push(torch.tensor([4, 1, 4]), torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert cache.fused.tolist() == [[0, 0], [2, 2], [0, 0], [0, 0], [3, 3], [0, 0]]


def test_refresh_schedule_and_world_split(setup):
    graph, feats, cfg = setup
    torch.manual_seed(1)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    cache = FusionCache(N_ITEMS, 4, refresh_every=3, store=ArrayStore(feats), chunk=64)
    assert cache.due(5)  # nothing cached yet: refresh whatever the step
    cache.refresh(model, 5)
    assert [s for s in range(5, 13) if cache.due(s)] == [6, 9, 12]
    # two "ranks" each fuse their chunks (0, 2, 4, ... / 1, 3, 5, ...); their sum is the whole cache
    parts = []
    for rank in range(2):
        part = FusionCache(N_ITEMS, 4, refresh_every=3, store=ArrayStore(feats), rank=rank, world_size=2, chunk=64)
        part.refresh(model, 0)
        parts.append(part.fused)
        assert (part.fused.abs().sum(1) == 0).sum() > 0  # the other rank's rows are left at zero
    torch.testing.assert_close(parts[0] + parts[1], cache.fused, rtol=0, atol=0)


def test_fusion_cache_needs_the_sampled_gcn(tmp_path):
    for extra in (["model.scorer=mf"], ["train.sampler=full"]):
        with pytest.raises(ConfigError, match="train.fusion_cache_refresh"):
            load_config("configs/tiktok.yaml", ["train.fusion_cache_refresh=5", *extra])
    with pytest.raises(ConfigError, match="train.fusion_cache_refresh"):
        load_config("configs/tiktok.yaml", ["train.fusion_cache_refresh=-1"])


@pytest.mark.multiproc
def test_cached_training_resumes_mid_epoch_like_a_straight_run(synth_ds, tmp_path):
    """2 ranks, ZeRO-3 (refresh inside gathered parameters, all-reduced), K = 3 steps, sparse ID tables, resumed
    at step 2 (module, optimizer, ID tables and fusion cache all restored)."""
    cache = ["train.fusion_cache_refresh=3", "train.id_tables=sparse"]
    straight, resumed, straight_run = straight_and_resumed(synth_ds, tmp_path, *cache)
    assert (straight_run / "checkpoints" / "epoch0001-step0000000" / "fusion_cache.pt").exists()
    assert close(straight, resumed, 1e-6), (straight, resumed)
    # and the cache did change the run: without it the same schedule ends elsewhere
    plain = last_json(train(synth_ds, tmp_path / "c", nproc=2, stage=3, epochs=1))
    assert not close(straight, plain, 1e-6), (straight, plain)


def test_a_batch_with_no_neighbour_items_still_returns_its_seeds_fusion(setup):
    """Every input item a seed (small catalogs): the cached rows are empty, and the model still returns the seeds'
    exact fusion rows for the push (the strategy writes back what this step computed)."""
    _, feats, cfg = setup
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    users, ids = torch.tensor([0, 1]), torch.tensor([3, 7, 9])
    none = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    # two layers whose src nodes are their dst nodes and that hold no edges: every input item is a seed
    blocks = [Block({"ui": none, "iu": none}, {"ui": none[0], "iu": none[0]}, {"user": users, "item": ids},
                    {"user": users, "item": ids}) for _ in range(2)]
    x = torch.from_numpy(feats[ids.numpy()])
    empty = torch.zeros(0, cfg.fusion_dims[-1], dtype=torch.float64)
    out = model.forward_blocks(blocks, users, ids, x, cached_fusion=empty)
    assert out["item"].shape[0] == 3
    torch.testing.assert_close(out["fresh"]["fusion"], model.fuse(x).detach(), **TOL)
    assert "fresh" not in model.forward_blocks(blocks, users, ids, x)  # no strategy rows: nothing to push
