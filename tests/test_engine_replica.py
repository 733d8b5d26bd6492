"""``deepspeed_engine.replicate``: the hook-free replica ZeRO-3 evaluation and cache refreshes run on.

The replica is built on the meta device and takes over the trained model's tensors, so it must compute
exactly what the model computes (bitwise: same tensors, same code), allocate no parameter of its own, and
keep ID tables that ``train.id_tables=sparse`` moved out of the module tree.
"""
import pytest
import torch
from helpers import FEAT, N_ITEMS, N_USERS, toy_cfg, toy_feats, toy_graph

from metammf_dist.distributed.deepspeed_engine import replicate
from metammf_dist.distributed.id_tables import SparseIdTables
from metammf_dist.model import build_model

OPTIONS = dict(gcn_type="light", item_knn=2, item_knn_at="output", feature_norm="standardize")


def _trained_like(**overrides):
    """A model whose every parameter and buffer differs from a fresh build's (as after training)."""
    cfg = toy_cfg(**{**OPTIONS, **overrides})
    torch.manual_seed(0)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.set_feature_stats(torch.rand(FEAT) + 1, torch.rand(FEAT) + 0.5)
    model.set_item_graph(torch.stack([torch.arange(N_ITEMS), (torch.arange(N_ITEMS) + 3) % N_ITEMS], 1))
    g = toy_graph()
    model.set_degrees(*g.edges(etype="ui"))
    return cfg, model, g


def _vectors(model, g):
    ids = torch.arange(N_ITEMS)
    out = {"user": model.user_vectors(torch.arange(N_USERS)), "item": model.item_vectors(ids, toy_feats())}
    out = model.propagate_graph(g, out)
    return model.add_item_graph(out, ids)


@torch.no_grad()
def test_replica_computes_bitwise_like_the_model_and_shares_its_tensors():
    cfg, model, g = _trained_like()
    model.eval()
    before = torch.randn(3)  # the replica's build must not move the global generator
    torch.manual_seed(5)
    replica = replicate(model, lambda: build_model(cfg, N_USERS, N_ITEMS, FEAT))
    after = torch.randn(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.randn(3)) and not torch.equal(before, after)
    assert not replica.training
    want, got = _vectors(model, g), _vectors(replica, g)
    for side in ("user", "item"):
        assert torch.equal(want[side], got[side]), side
    theirs = dict(model.named_parameters())
    assert {n: p.data_ptr() for n, p in replica.named_parameters()} == {n: p.data_ptr() for n, p in theirs.items()}
    assert all(not p.requires_grad for p in replica.parameters())
    assert torch.equal(replica.knn_index, model.knn_index) and replica.knn_index.data_ptr() == model.knn_index.data_ptr()


@torch.no_grad()
def test_replica_keeps_sparse_id_tables_outside_the_module_tree():
    cfg, model, g = _trained_like()
    model.eval()
    SparseIdTables(model, lr=0.01)
    assert "item_emb" not in model._modules
    replica = replicate(model, lambda: build_model(cfg, N_USERS, N_ITEMS, FEAT))
    assert replica.item_emb is model.item_emb and replica.user_emb is model.user_emb
    assert "item_emb" not in replica._modules
    want, got = _vectors(model, g), _vectors(replica, g)
    assert torch.equal(want["item"], got["item"]) and torch.equal(want["user"], got["user"])


def test_replica_of_a_different_architecture_is_refused():
    cfg, model, _ = _trained_like()
    other = toy_cfg(**{**OPTIONS, "fusion_dims": [8, 8, 4]})  # one more fusion layer: its weights have no source
    with pytest.raises(RuntimeError, match="no counterpart"):
        replicate(model, lambda: build_model(other, N_USERS, N_ITEMS, FEAT))
