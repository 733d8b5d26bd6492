"""MetaMMFRecommender (model/recommender.py), registry and parameter summary.

Cold-start item vectors, MF scores as dot products, the blocks path of both scorers against the
full-graph path, allocation-free parameter counts, and one BPR step on a toy problem.
"""
import dgl
import pytest
import torch
from helpers import FEAT, N_ITEMS, N_USERS, toy_cfg, toy_feats, toy_graph
from torch.nn import functional as F

from metammf_dist.config import ConfigError, ModelConfig, load_config
from metammf_dist.model import (
    build_model,
    count_parameters,
    format_parameter_table,
    parameter_counts,
)
from metammf_dist.model.recommender import MetaMMFRecommender

TOL = dict(rtol=0.0, atol=1e-10)
def _model(seed: int = 0, **overrides) -> MetaMMFRecommender:
    torch.manual_seed(seed)
    return build_model(toy_cfg(**overrides), N_USERS, N_ITEMS, FEAT).double().eval()


def test_cold_start_item_gets_fusion_plus_mean_id_row():
    model = _model(scorer="mf")
    ids = torch.tensor([2, N_ITEMS, N_ITEMS + 5])  # one known item, two with no ID row
    feats = toy_feats(3)
    vecs = model.item_vectors(ids, feats)
    assert vecs.shape == (3, 7)
    fused = model.fusion(feats)
    torch.testing.assert_close(vecs[:, :4], fused, **TOL)
    torch.testing.assert_close(vecs[0, 4:], model.item_emb.weight[2], **TOL)
    mean_row = model.item_emb.weight.mean(0)
    torch.testing.assert_close(vecs[1, 4:], mean_row, **TOL)
    torch.testing.assert_close(vecs[2, 4:], mean_row, **TOL)
    scores = model.score(model.user_vectors(torch.tensor([0, 1, 2])), vecs)
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_mf_scores_are_dot_products_and_blocks_select_dst_nodes():
    model = _model(scorer="mf")
    assert model.gcn is None
    users, items, feats = torch.tensor([0, 4, 5]), torch.tensor([1, 8, 3]), toy_feats(3)
    out = model.forward_blocks(None, users, items, feats)
    scores = model.score(out["user"], out["item"])
    expected = torch.stack([sum(out["user"][r, c] * out["item"][r, c] for c in range(7)) for r in range(3)])
    torch.testing.assert_close(scores, expected, **TOL)
    torch.testing.assert_close(out["user"], model.user_emb.weight[users], **TOL)
    # with blocks: only the dst nodes of the last block (a prefix of the inputs) are computed
    g, all_feats = toy_graph(), toy_feats()
    input_nodes, output_nodes, blocks = dgl.dataloading.NeighborSampler([-1, -1]).sample(
        g, {"user": torch.tensor([1, 3]), "item": torch.tensor([0])})
    out = model.forward_blocks(blocks, input_nodes["user"], input_nodes["item"], all_feats[input_nodes["item"]])
    full = model.forward_graph(g, all_feats)
    for nt in ("user", "item"):
        torch.testing.assert_close(out[nt], full[nt][output_nodes[nt]], **TOL)


@pytest.mark.parametrize("combine,gcn_type", [("last", "sage"), ("mean", "sage"), ("mean", "light")])
def test_gcn_blocks_path_equals_full_graph(combine, gcn_type):
    model = _model(scorer="gcn", gcn_combine=combine, gcn_type=gcn_type)
    g, all_feats = toy_graph(), toy_feats()
    if gcn_type == "light":
        u, i = g.edges(etype="ui")
        model.set_degrees(u, i)
        assert (model.item_inv_sqrt_deg < 1).any()  # real degrees, not the placeholder ones
    full = model.forward_graph(g, all_feats, chunk_size=4)
    torch.testing.assert_close(full["item"], model.forward_graph(g, all_feats, chunk_size=100)["item"], **TOL)
    input_nodes, output_nodes, blocks = dgl.dataloading.NeighborSampler([-1, -1]).sample(
        g, {"user": torch.tensor([0, 2]), "item": torch.tensor([5, 1, 7])})
    out = model(blocks, input_nodes["user"], input_nodes["item"], all_feats[input_nodes["item"]])
    for nt in ("user", "item"):
        torch.testing.assert_close(out[nt], full[nt][output_nodes[nt]], **TOL)


@pytest.mark.parametrize("fusion", ["meta", "cp", "static"])
@pytest.mark.parametrize("scorer", ["mf", "gcn", "light"])
def test_parameter_counts_match_count_parameters(fusion, scorer):
    gcn_type = "light" if scorer == "light" else "sage"
    cfg = toy_cfg(fusion=fusion, scorer="mf" if scorer == "mf" else "gcn", gcn_type=gcn_type, meta_hidden=5, gcn_layers=3)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT)
    counts = parameter_counts(model)
    assert counts == count_parameters(cfg, N_USERS, N_ITEMS, FEAT)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert (counts["meta_learner"] == 0) == (fusion == "static") and (counts["gcn"] == 0) == (scorer != "gcn")
    assert "fusion_layers" in format_parameter_table(counts)


def test_count_parameters_at_paper_scale_without_allocating():
    counts = count_parameters(ModelConfig(), num_users=10**8, num_items=10**8, feat_dim=2276)
    assert counts["item_id"] == 32 * 10**8 and counts["user_id"] == 64 * 10**8
    table = format_parameter_table({"meta": counts, "cp": count_parameters(ModelConfig(fusion="cp"), 1, 1, 2276)})
    assert "meta" in table and "cp" in table


@pytest.mark.parametrize("scorer", ["mf", "gcn"])
def test_bpr_gradient_step_decreases_loss(scorer):
    model = _model(scorer=scorer)  # eval mode: no dropout, so the loss is deterministic
    g, feats = toy_graph(), toy_feats()
    users, pos, neg = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 2, 4, 6, 8, 1]), torch.tensor([3, 5, 7, 0, 2, 4])

    def loss() -> torch.Tensor:
        vec = model.forward_graph(g, feats)
        u = vec["user"][users]
        return -F.logsigmoid(model.score(u, vec["item"][pos]) - model.score(u, vec["item"][neg])).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = loss()
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None for p in model.fusion.parameters())
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after < before - 1e-6


def test_dimension_contract_is_checked():
    with pytest.raises(ValueError, match="user_id_dim"):
        build_model(toy_cfg(user_id_dim=8), N_USERS, N_ITEMS, FEAT)


def test_id_init_std_sets_the_id_rows_scale():
    """``model.id_init_std`` (default 0.1) is the std of the initial ID rows; 0 or less is a config error."""
    torch.manual_seed(0)
    big = build_model(toy_cfg(), 4000, 3000, FEAT)
    small = build_model(toy_cfg(id_init_std=0.01), 4000, 3000, FEAT)
    assert abs(float(big.user_emb.weight.std()) - 0.1) < 0.005
    assert abs(float(small.item_emb.weight.std()) - 0.01) < 0.0005
    with pytest.raises(ConfigError, match="model.id_init_std"):
        load_config("configs/tiktok.yaml", ["model.id_init_std=0"])
