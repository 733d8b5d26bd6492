"""GCN scorer (model/gcn.py): sampled blocks with full fan-out == whole-graph propagation, float64.

Also pins the message-passing semantics (users average their items and vice versa), the "mean"
combination of layer-0..L representations and the per-layer dropout rates.
"""
import dgl
import pytest
import torch
from torch.nn import functional as F

from metammf_dist.model.gcn import GCN

TOL = dict(rtol=0.0, atol=1e-10)
DIM = 6


def _toy_graph(seed: int = 0, n_users: int = 8, n_items: int = 10, n_edges: int = 30):
    """Random user–item graph in the project's contract; user n_users-1 and item n_items-1 are isolated."""
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users - 1, (n_edges,), generator=gen)
    items = torch.randint(0, n_items - 1, (n_edges,), generator=gen)
    pairs = torch.unique(torch.stack([users, items], 1), dim=0)
    u, i = pairs[:, 0], pairs[:, 1]
    return dgl.heterograph(
        {("user", "ui", "item"): (u, i), ("item", "iu", "user"): (i, u)},
        num_nodes_dict={"user": n_users, "item": n_items},
    )


def _features(g, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return {nt: torch.randn(g.num_nodes(nt), DIM, generator=gen, dtype=torch.float64) for nt in ("user", "item")}


def _gcn(num_layers: int = 2, combine: str = "last", seed: int = 2) -> GCN:
    torch.manual_seed(seed)
    gcn = GCN(DIM, num_layers=num_layers, dropout=[0.5, 0.2], combine=combine, leaky_slope=0.1).double()
    with torch.no_grad():
        for name, p in gcn.named_parameters():
            if name.endswith("bias"):  # DGL starts biases at zero; make them count
                p.copy_(torch.randn_like(p))
    return gcn.eval()


@pytest.mark.parametrize("combine", ["last", "mean"])
@pytest.mark.parametrize("seeds", [
    {"user": [0, 3, 7], "item": [1, 2, 9]},  # includes the isolated user 7 and item 9
    {"user": [], "item": [4, 0]},
    {"user": [5], "item": []},
])
def test_sampled_blocks_equal_full_graph(combine, seeds):
    g, gcn = _toy_graph(), _gcn(combine=combine)
    feats = _features(g)
    full = gcn.forward_graph(g, feats)
    assert full["user"].shape == (g.num_nodes("user"), DIM) and full["item"].shape == (g.num_nodes("item"), DIM)

    sampler = dgl.dataloading.NeighborSampler([-1, -1])  # fan-out covers every neighbour
    seed_nodes = {nt: torch.tensor(ids, dtype=torch.int64) for nt, ids in seeds.items()}
    input_nodes, output_nodes, blocks = sampler.sample(g, seed_nodes)
    out = gcn(blocks, {nt: feats[nt][input_nodes[nt]] for nt in ("user", "item")})
    for nt in ("user", "item"):
        assert out[nt].shape == (len(seeds[nt]), DIM)
        torch.testing.assert_close(out[nt], full[nt][output_nodes[nt]], **TOL)


@pytest.mark.filterwarnings("ignore:Dataloader CPU affinity")
def test_dataloader_minibatches_equal_full_graph():
    g, gcn = _toy_graph(seed=3), _gcn(combine="mean")
    feats = _features(g)
    full = gcn.forward_graph(g, feats)
    loader = dgl.dataloading.DataLoader(
        g, {"item": torch.arange(g.num_nodes("item"))}, dgl.dataloading.NeighborSampler([-1, -1]), batch_size=4
    )
    seen = 0
    for input_nodes, output_nodes, blocks in loader:
        out = gcn(blocks, {nt: feats[nt][input_nodes[nt]] for nt in ("user", "item")})
        torch.testing.assert_close(out["item"], full["item"][output_nodes["item"]], **TOL)
        seen += len(output_nodes["item"])
    assert seen == g.num_nodes("item")


def test_one_layer_is_graphsage_mean_in_both_directions():
    g, gcn = _toy_graph(), _gcn(num_layers=1)
    feats = _features(g)
    out = gcn.forward_graph(g, feats)
    layer = gcn.layers[0].mods
    for dst, src, etype in (("user", "item", "iu"), ("item", "user", "ui")):
        conv = layer[etype]
        src_ids, dst_ids = g.edges(etype=etype)
        adjacency = torch.zeros(g.num_nodes(dst), g.num_nodes(src), dtype=torch.float64)
        adjacency[dst_ids, src_ids] = 1.0
        neigh_mean = adjacency @ feats[src] / adjacency.sum(1, keepdim=True).clamp(min=1)
        expected = F.linear(feats[dst], conv.fc_self.weight, conv.fc_self.bias) + neigh_mean @ conv.fc_neigh.weight.t()
        torch.testing.assert_close(out[dst], expected, **TOL)


def test_mean_combine_averages_layer_0_to_L():
    g = _toy_graph()
    feats = _features(g)
    last, mean = _gcn(combine="last"), _gcn(combine="mean")
    mean.load_state_dict(last.state_dict())
    first = GCN(DIM, num_layers=1, combine="last").double().eval()
    first.layers[0].load_state_dict(last.layers[0].state_dict())
    h1 = first.forward_graph(g, feats)
    h2 = last.forward_graph(g, feats)
    got = mean.forward_graph(g, feats)
    for nt in ("user", "item"):
        expected = (feats[nt] + F.leaky_relu(h1[nt], 0.1) + h2[nt]) / 3
        torch.testing.assert_close(got[nt], expected, **TOL)


def test_dropout_per_layer_and_train_mode():
    gcn = GCN(DIM, num_layers=3, dropout=[0.5, 0.2])
    assert [d.p for d in gcn.dropouts] == [0.5, 0.2, 0.2]  # a short list repeats its last rate
    g = _toy_graph()
    feats = {nt: v.float() for nt, v in _features(g).items()}
    gcn.train()
    a, b = gcn.forward_graph(g, feats), gcn.forward_graph(g, feats)
    assert not torch.equal(a["user"], b["user"])
    gcn.eval()
    a, b = gcn.forward_graph(g, feats), gcn.forward_graph(g, feats)
    assert torch.equal(a["user"], b["user"])
    with pytest.raises(ValueError, match="2 blocks"):
        gcn(dgl.dataloading.NeighborSampler([-1, -1]).sample(g, {"user": torch.tensor([0])})[2], feats)


def _inv_sqrt_degree(g):
    return {"user": g.in_degrees(etype="iu").double().clamp(min=1).rsqrt(),
            "item": g.in_degrees(etype="ui").double().clamp(min=1).rsqrt()}


def test_light_gcn_is_the_symmetrically_normalised_propagation():
    """``kind="light"`` (LightGCN): h_i' = Σ_u h_u / sqrt(d_i d_u) in both directions, no weights or activation;
    checked against the dense normalised adjacency, layer by layer, with the layer-mean output."""
    g = _toy_graph()
    feats = _features(g)
    gcn = GCN(DIM, num_layers=2, dropout=[0.0], combine="mean", kind="light").double().eval()
    assert sum(p.numel() for p in gcn.parameters()) == 0
    u, i = g.edges(etype="ui")
    adj = torch.zeros(g.num_nodes("user"), g.num_nodes("item"), dtype=torch.float64)
    adj[u, i] = 1.0
    du, di = adj.sum(1).clamp(min=1), adj.sum(0).clamp(min=1)
    norm = adj / du.sqrt().unsqueeze(1) / di.sqrt().unsqueeze(0)
    hu, hi = feats["user"], feats["item"]
    layers_u, layers_i = [hu], [hi]
    for _ in range(2):
        hu, hi = norm @ hi, norm.T @ hu
        layers_u.append(hu)
        layers_i.append(hi)
    out = gcn.forward_graph(g, feats, _inv_sqrt_degree(g))
    torch.testing.assert_close(out["user"], torch.stack(layers_u).mean(0), **TOL)
    torch.testing.assert_close(out["item"], torch.stack(layers_i).mean(0), **TOL)
    with pytest.raises(ValueError, match="degrees"):
        gcn.forward_graph(g, feats)


def test_light_gcn_blocks_with_full_fanout_equal_the_full_graph():
    g = _toy_graph(seed=3)
    feats = _features(g)
    gcn = GCN(DIM, num_layers=2, dropout=[0.0], combine="mean", kind="light").double().eval()
    degree = _inv_sqrt_degree(g)
    full = gcn.forward_graph(g, feats, degree)
    inputs, outputs, blocks = dgl.dataloading.NeighborSampler([-1, -1]).sample(
        g, {"user": torch.tensor([0, 4]), "item": torch.tensor([2, 5, 1])})
    out = gcn(blocks, {nt: feats[nt][inputs[nt]] for nt in inputs}, {nt: degree[nt][inputs[nt]] for nt in inputs})
    for nt in ("user", "item"):
        torch.testing.assert_close(out[nt], full[nt][outputs[nt]], **TOL)
