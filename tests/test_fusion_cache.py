"""The fusion cache (engine/fusion_cache.py): exact values, seed-only fusion gradients, seed-only feature
reads, its refresh schedule, checkpointed resume (2 ranks, ZeRO-3) and the config guard.

Runs in both lanes (torch graph backend for the in-process checks; the trainer runs use the lane's).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metammf_dist.config import ConfigError, ModelConfig, load_config
from metammf_dist.engine.fusion_cache import FusionCache
from metammf_dist.engine.objective import BPRObjective
from metammf_dist.model import build_model
from metammf_dist.sampler import build_train_graph, make_batches
from metammf_dist.sampler.features import attach_features

from test_train import close, last_json, straight_and_resumed, train

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


def _batch(graph, store, seeds_only, grad_items: int = 0, step: int = 0):
    batches = make_batches("neighbor", graph, fanouts=[4, 4], batch_size=64, num_negatives=2, seed=5, rank=0,
                           world_size=1)
    batches.grad_items_per_step = grad_items
    batch = next(iter(batches.epoch(0, start_step=step)))
    return attach_features(batch, store, seeds_only)


def _grads(objective, batch) -> dict:
    objective.zero_grad()
    loss = objective(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}


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

    cache = FusionCache(N_ITEMS, cfg.fusion_dims[-1], refresh_every=1, chunk=64)
    cache.refresh(model, ArrayStore(feats), global_step=0)
    torch.testing.assert_close(cache.fused, model.fuse(torch.from_numpy(feats)).float().detach(), rtol=0, atol=1e-6)
    cache.fused = model.fuse(torch.from_numpy(feats)).detach()  # float64 copy for a 1e-10 comparison
    cached.cached_fusion = cache.lookup(cached.input_items[n_seed:])

    loss_exact, g_exact = _grads(objective, exact)
    loss_cached, g_cached = _grads(objective, cached)
    torch.testing.assert_close(loss_cached, loss_exact, **TOL)

    # oracle for the gradients: the exact forward with the neighbour rows' fusion output detached
    full_fuse = model.fuse
    model.fuse = lambda x: torch.cat([full_fuse(x)[:n_seed], full_fuse(x)[n_seed:].detach()])
    try:
        _, g_oracle = _grads(objective, exact)
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
    torch.testing.assert_close(model.seed_fusion, full_fuse(torch.from_numpy(feats[seeds.numpy()])), **TOL)
    cache.fused = torch.zeros_like(cache.fused)
    cache.push(seeds, model.seed_fusion)
    torch.testing.assert_close(cache.fused[seeds], model.seed_fusion, **TOL)
    others = torch.ones(N_ITEMS, dtype=torch.bool)
    others[seeds] = False
    assert cache.fused[others].abs().sum() == 0


def test_push_later_row_wins_and_needs_a_refresh():
    cache = FusionCache(6, 2, refresh_every=5)
    with pytest.raises(RuntimeError, match="before the first refresh"):
        cache.push(torch.tensor([1]), torch.ones(1, 2))
    cache.fused = torch.zeros(6, 2)
    cache.push(torch.tensor([4, 1, 4]), torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert cache.fused.tolist() == [[0, 0], [2, 2], [0, 0], [0, 0], [3, 3], [0, 0]]


def test_refresh_schedule_and_world_split(setup):
    graph, feats, cfg = setup
    torch.manual_seed(1)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    cache = FusionCache(N_ITEMS, 4, refresh_every=3, chunk=64)
    assert cache.due(5)  # nothing cached yet: refresh whatever the step
    cache.refresh(model, ArrayStore(feats), 5)
    assert [s for s in range(5, 13) if cache.due(s)] == [6, 9, 12]
    # two "ranks" each fuse their chunks (0, 2, 4, ... / 1, 3, 5, ...); their sum is the whole cache
    parts = []
    for rank in range(2):
        part = FusionCache(N_ITEMS, 4, refresh_every=3, rank=rank, world_size=2, chunk=64)
        part.refresh(model, ArrayStore(feats), 0)
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


def test_grad_items_are_sampled_neighbours_read_after_the_seeds(setup):
    graph, feats, _ = setup
    store = ArrayStore(feats)
    batch = _batch(graph, store, True, 5)
    n_seed, n_input = int(batch.output_items.numel()), int(batch.input_items.numel())
    pos = batch.grad_items_pos
    assert pos.numel() == 5 and torch.equal(pos, torch.unique(pos)) and int(pos.min()) >= n_seed
    assert batch.grad_items_weight == (n_input - n_seed) / 5
    # the feature stage read the seeds, then the sampled neighbours, nothing else
    assert store.rows_read == n_seed + 5
    torch.testing.assert_close(batch.item_feats, torch.from_numpy(feats[batch.feature_items.numpy()]).float())
    again, other = _batch(graph, ArrayStore(feats), True, 5), _batch(graph, ArrayStore(feats), True, 5, step=1)
    assert torch.equal(again.grad_items_pos, pos)  # keyed by (seed, epoch, rank, step)...
    assert not torch.equal(other.input_items[other.grad_items_pos], batch.input_items[pos])  # ...not fixed
    everything = _batch(graph, ArrayStore(feats), True, 10**6)  # more than there are: all, weight 1
    assert torch.equal(everything.grad_items_pos, torch.arange(n_seed, n_input)) and everything.grad_items_weight == 1.0


def test_grad_items_make_the_fusion_gradient_exact_in_expectation(setup):
    """``train.fusion_cache_grad_items``: with a fresh cache, (a) sampling every neighbour gives the uncached step's
    loss and gradients; (b) sampling ONE neighbour with weight n gives, averaged over the n choices, exactly the
    uncached step's fusion gradient (unbiased); each single draw keeps the loss and the ID/GCN gradients exact."""
    graph, feats, cfg = setup
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    objective = BPRObjective(model)
    fused_all = model.fuse(torch.from_numpy(feats)).detach()
    loss_exact, g_exact = _grads(objective, _batch(graph, ArrayStore(feats), seeds_only=False))

    batch = _batch(graph, ArrayStore(feats), True, 10**6)
    n_seed, n_input = int(batch.output_items.numel()), int(batch.input_items.numel())
    batch.cached_fusion = fused_all[batch.input_items[n_seed:]]
    loss_all, g_all = _grads(objective, batch)
    torch.testing.assert_close(loss_all, loss_exact, **TOL)
    assert g_all.keys() == g_exact.keys()
    for name in g_exact:
        torch.testing.assert_close(g_all[name], g_exact[name], **TOL, msg=name)
    torch.testing.assert_close(model.seed_fusion, fused_all[batch.feature_items], **TOL)  # what the trainer pushes

    n_rest = n_input - n_seed
    fusion_params = [n for n in g_exact if ".fusion." in n]
    mean = {n: torch.zeros_like(g_exact[n]) for n in fusion_params}
    seeds = batch.output_items
    for j in range(n_seed, n_input):
        batch.grad_items_pos, batch.grad_items_weight = torch.tensor([j]), float(n_rest)
        batch.item_feats = torch.from_numpy(feats[torch.cat([seeds, batch.input_items[j:j + 1]]).numpy()])
        loss_j, g_j = _grads(objective, batch)
        torch.testing.assert_close(loss_j, loss_exact, **TOL)
        for name in g_exact:
            if ".fusion." in name:
                mean[name] += g_j[name] / n_rest
            else:
                torch.testing.assert_close(g_j[name], g_exact[name], **TOL, msg=name)
    assert any(not torch.allclose(g_j[n], g_exact[n], rtol=0, atol=1e-8) for n in fusion_params)  # one draw: noisy
    for name in fusion_params:
        torch.testing.assert_close(mean[name], g_exact[name], rtol=1e-9, atol=1e-12, msg=name)


def test_grad_items_config_guard():
    with pytest.raises(ConfigError, match="train.fusion_cache_grad_items"):
        load_config("configs/tiktok.yaml", ["train.fusion_cache_grad_items=8"])  # no cache
    with pytest.raises(ConfigError, match="train.fusion_cache_grad_items"):
        load_config("configs/tiktok.yaml", ["train.fusion_cache_refresh=5", "train.gcn_history=true",
                                            "train.fusion_cache_grad_items=8"])
    with pytest.raises(ConfigError, match="train.fusion_cache_grad_items"):
        load_config("configs/tiktok.yaml", ["train.fusion_cache_refresh=5", "train.fusion_cache_grad_items=-1"])


def test_cached_training_with_grad_items_fuses_seeds_plus_samples(synth_ds, tmp_path):
    usage = {}
    small = ["train.fusion_cache_refresh=3", "train.batch_size=64", "train.max_steps_per_epoch=6"]
    for name, extra in (("plain", []), ("grad", ["train.fusion_cache_grad_items=7"])):
        metrics = last_json(train(synth_ds, tmp_path / name, *small, *extra, epochs=1))
        assert metrics["recall@20"] > 0
        usage[name] = json.loads((tmp_path / name / "usage.json").read_text())
    plain, grad = usage["plain"], usage["grad"]
    # same batches (the sample has a stream of its own); each step fused its seeds plus 7 of its neighbours
    assert grad["train_steps"] == plain["train_steps"] == 6 and grad["input_items"] == plain["input_items"]
    assert grad["input_items"] - plain["fused_items"] > 7 * 6  # (enough neighbours per step: batch of 64 pairs)
    assert grad["fused_items"] - plain["fused_items"] == 7 * grad["train_steps"]


def test_a_batch_with_no_neighbour_items_still_pushes_its_seeds(setup):
    """Every input item a seed (small catalogs): the cache rows are empty, the seeds' fusion is still recorded for the
    push (not the previous step's), with and without sampled neighbours."""
    _, feats, cfg = setup
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    ids, x = torch.tensor([3, 7, 9]), torch.from_numpy(feats[[3, 7, 9]])
    empty = torch.zeros(0, cfg.fusion_dims[-1], dtype=torch.float64)
    model.seed_fusion = None
    for grad_items in (None, (torch.zeros(0, dtype=torch.long), 1.0)):
        vectors = model.item_vectors(ids, x, fused_rest=empty, grad_items=grad_items)
        assert vectors.shape[0] == 3
        torch.testing.assert_close(model.seed_fusion, model.fuse(x).detach(), **TOL)


def _deferred_setup(setup):
    graph, feats, cfg = setup
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    cache = FusionCache(N_ITEMS, cfg.fusion_dims[-1], refresh_every=1, chunk=64, deferred_grad=True)
    cache.refresh(model, ArrayStore(feats), global_step=0)
    assert cache.offset is None and cache.pending_steps == 0  # nothing pending before the first step
    cache.fused = model.fuse(torch.from_numpy(feats)).detach()  # float64 rows, for tight comparisons
    return graph, feats, model, cache


def test_deferred_grad_hands_the_uncached_neighbour_gradient_to_the_next_window(setup):
    """``train.fusion_cache_deferred_grad``: the loss gradients at the cached rows, backpropagated through the next
    refresh, are exactly the fusion gradient the neighbours send without the cache (same weights); the offset term
    adds it to the fusion parameters' gradient and changes neither the loss value nor any other gradient."""
    graph, feats, model, cache = _deferred_setup(setup)
    objective = BPRObjective(model)
    loss_exact, g_exact = _grads(objective, _batch(graph, ArrayStore(feats), seeds_only=False))

    batch = _batch(graph, ArrayStore(feats), seeds_only=True)
    n_seed = int(batch.output_items.numel())
    batch.cached_fusion = cache.lookup(batch.input_items[n_seed:]).requires_grad_(True)
    loss_cached, g_cached = _grads(objective, batch)
    torch.testing.assert_close(loss_cached, loss_exact, **TOL)
    assert batch.cached_fusion.grad is not None and batch.cached_fusion.grad.abs().sum() > 0
    cache.accumulate(batch.input_items[n_seed:], batch.cached_fusion.grad)
    assert cache.pending_steps == 1
    cache.refresh(model, ArrayStore(feats), global_step=1)  # same weights: Jacobians as in the step
    assert cache.pending_steps == 0 and cache.pending.abs().sum() == 0  # the window starts afresh
    offset = cache.offset
    fusion_params = [n for n in g_exact if ".fusion." in n]
    assert sorted("model." + n for n in offset) == sorted(fusion_params)
    tol = dict(rtol=1e-5, atol=1e-9)  # the accumulator holds float32
    for name in fusion_params:
        torch.testing.assert_close(g_cached[name] + offset[name[len("model."):]], g_exact[name], **tol, msg=name)

    # the next steps add the offset: this batch again now gets the uncached step's gradients, loss value unchanged
    model.fusion_grad_offset = offset
    batch.cached_fusion = batch.cached_fusion.detach()
    loss_offset, g_offset = _grads(objective, batch)
    assert loss_offset.item() == loss_cached.item()
    for name in g_exact:
        torch.testing.assert_close(g_offset[name], g_exact[name], **(tol if name in fusion_params else TOL), msg=name)


def test_deferred_grad_offset_is_the_window_mean(setup, tmp_path):
    """Two steps in a window: the offset is the mean of their neighbour gradients (one of them counted twice here);
    a checkpoint carries the window (pending sums, their step count, the offset)."""
    graph, feats, model, cache = _deferred_setup(setup)
    batch = _batch(graph, ArrayStore(feats), seeds_only=True)
    n_seed = int(batch.output_items.numel())
    ids, grad = batch.input_items[n_seed:], torch.randn(int(batch.input_items.numel()) - n_seed, 4, dtype=torch.float64)
    cache.accumulate(ids, grad)
    cache.refresh(model, ArrayStore(feats), global_step=1)
    one = cache.offset
    cache.accumulate(ids, grad)
    cache.accumulate(ids, None)  # a step that read no cached rows still counts
    cache.refresh(model, ArrayStore(feats), global_step=2)
    for name in one:
        torch.testing.assert_close(cache.offset[name], one[name] / 2, rtol=1e-12, atol=0, msg=name)

    cache.accumulate(ids, grad)
    cache.save(tmp_path / "fusion_cache.pt")
    restored = FusionCache(N_ITEMS, 4, refresh_every=1, deferred_grad=True)
    assert restored.load(tmp_path / "fusion_cache.pt")
    assert restored.pending_steps == 1 and torch.equal(restored.pending, cache.pending)
    assert restored.offset.keys() == one.keys() and all(torch.equal(restored.offset[k], cache.offset[k]) for k in one)
    with pytest.raises(RuntimeError, match="without deferred_grad"):
        FusionCache(N_ITEMS, 4, refresh_every=1).accumulate(ids, grad)


def test_deferred_grad_config_guard(tmp_path):
    for extra in ([], ["train.fusion_cache_refresh=5", "train.gcn_history=true"],
                  ["train.fusion_cache_refresh=5", "train.fusion_cache_grad_items=8"]):
        with pytest.raises(ConfigError, match="train.fusion_cache_deferred_grad"):
            load_config("configs/tiktok.yaml", ["train.fusion_cache_deferred_grad=true", *extra])
    from metammf_dist.engine.fusion_cache import check_deferred_grad

    check_deferred_grad({"zero_optimization": {"stage": 2}})
    for ds in ({"zero_optimization": {"stage": 3}}, {"fp16": {"enabled": True}}):
        with pytest.raises(ConfigError, match="train.fusion_cache_deferred_grad"):
            check_deferred_grad(ds)


def test_deferred_grad_notes_a_long_window():
    from metammf_dist.engine.fusion_cache import DEFERRED_GRAD_WINDOW_HINT, deferred_grad_note

    assert deferred_grad_note(10) is None and deferred_grad_note(DEFERRED_GRAD_WINDOW_HINT) is None
    note = deferred_grad_note(400)
    assert "train.fusion_cache_refresh=400" in note and "800 steps old" in note


@pytest.mark.multiproc
def test_deferred_grad_training_resumes_mid_epoch_like_a_straight_run(synth_ds, tmp_path):
    """2 ranks, ZeRO-2, K = 3: the pending sums (averaged over ranks before a checkpoint), their step count and the
    offset are restored, so a run resumed at step 2 ends like the straight one; the offset was really in use."""
    opts = ["train.fusion_cache_refresh=3", "train.fusion_cache_deferred_grad=true"]
    straight, resumed, straight_run = straight_and_resumed(synth_ds, tmp_path, *opts, stage=2)
    assert close(straight, resumed, 1e-6), (straight, resumed)
    blob = torch.load(straight_run / "checkpoints" / "epoch0001-step0000000" / "fusion_cache.pt", weights_only=False)
    assert blob["offset"] and all(torch.isfinite(v).all() for v in blob["offset"].values())
    assert sum(float(v.abs().sum()) for v in blob["offset"].values()) > 0
