"""The item–item kNN graph (``model.item_knn``): building it from the shard store, and the model's use of it.

Oracles: brute-force similarities in float64 numpy; the item vectors checked row by row against the mean of
the neighbours' ID rows; the blocks path against the full-graph path; gradients reaching the neighbours.
"""
import dgl
import numpy as np
import pytest
import torch
from helpers import N_ITEMS, N_USERS, toy_graph

from metammf_dist.config import ConfigError, ModelConfig, load_config
from metammf_dist.data.item_knn import feature_knn
from metammf_dist.model import build_model
from metammf_dist.train.inference import compute_vectors
from sharding import FeatureStore, write_store

MODS = {"image": 5, "audio": 3}
FEAT = sum(MODS.values())
TOL = dict(rtol=0.0, atol=1e-10)


def _store(tmp_path, feats: np.ndarray, rows_per_group: int = 16):
    url = str(tmp_path / "features")
    write_store(url, {"image": feats[:, :5], "audio": feats[:, 5:]}, dtype="float32", shard_size=32,
                row_group_size=rows_per_group)
    return FeatureStore(url)


def _oracle(feats: np.ndarray, k: int) -> np.ndarray:
    """Similarity = mean over modalities of the cosine of mean-centred features; top-k per row."""
    x = feats.astype(np.float64)
    sims = np.zeros((len(x), len(x)))
    for lo, hi in ((0, 5), (5, 8)):
        part = x[:, lo:hi] - x[:, lo:hi].mean(0)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        sims += part @ part.T / 2
    np.fill_diagonal(sims, np.inf)
    return sims, np.argsort(-sims, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("chunk", [7, 4096])
def test_feature_knn_matches_brute_force(tmp_path, chunk):
    gen = np.random.default_rng(0)
    feats = (gen.normal(size=(50, FEAT)) + np.array([3.0] * 5 + [0.0] * 3)).astype(np.float32)  # an offset, as TikTok's
    store = _store(tmp_path, feats)
    index = feature_knn(store, MODS, k=6, chunk=chunk).numpy()
    sims, expected = _oracle(feats, 6)
    assert index.shape == (50, 6) and (index[:, 0] == np.arange(50)).all()  # each item its own nearest
    # same neighbour sets; and the k-th similarity equals the oracle's (ties may pick either item)
    picked = np.take_along_axis(sims, index, 1)
    want = np.take_along_axis(sims, expected, 1)
    np.testing.assert_allclose(np.sort(picked[:, 1:], 1), np.sort(want[:, 1:], 1), atol=1e-5)


def test_feature_knn_rejects_bad_k(tmp_path):
    store = _store(tmp_path, np.random.default_rng(1).normal(size=(10, FEAT)).astype(np.float32))
    with pytest.raises(ValueError, match="model.item_knn"):
        feature_knn(store, MODS, k=11)
    with pytest.raises(ConfigError, match="model.item_knn"):
        load_config("configs/tiktok.yaml", ["model.item_knn=-1"])
    with pytest.raises(ConfigError, match="model.item_knn_at"):
        load_config("configs/tiktok.yaml", ["model.item_knn_at=middle"])
    with pytest.raises(ConfigError, match="gcn_type"):
        load_config("configs/tiktok.yaml", ["model.gcn_type=light", "train.gcn_history=true",
                                            "train.fusion_cache_refresh=5"])


def _model(scorer: str, at: str = "output"):
    torch.manual_seed(0)
    cfg = ModelConfig(fusion_dims=[8, 4], item_id_dim=3, user_id_dim=7, meta_dim=3, cp_rank=2, scorer=scorer,
                      item_knn=3, item_knn_at=at)
    model = build_model(cfg, N_USERS, N_ITEMS, FEAT).double().eval()
    gen = torch.Generator().manual_seed(4)
    model.set_item_graph(torch.stack([torch.arange(N_ITEMS)] + [torch.randint(0, N_ITEMS, (N_ITEMS,), generator=gen)
                                                                 for _ in range(2)], 1))
    return model


def test_mf_item_vector_adds_the_mean_id_row_of_the_neighbours():
    model = _model("mf")
    feats = torch.randn(N_ITEMS, FEAT, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    items = torch.tensor([1, 8, 3, N_ITEMS + 2])  # the last one: cold start, no neighbours
    out = model.forward_blocks(None, torch.tensor([0, 1, 2, 3]), items, torch.cat([feats[[1, 8, 3]], feats[:1]]))
    table = model.item_emb.weight
    for row, item in enumerate(items.tolist()):
        plain = model.item_vectors(items[row:row + 1], feats[[item if item < N_ITEMS else 0]])[0]
        extra = table[model.knn_index[item]].mean(0) if item < N_ITEMS else torch.zeros(3, dtype=torch.float64)
        torch.testing.assert_close(out["item"][row], plain + torch.cat([torch.zeros(4, dtype=torch.float64), extra]),
                                   **TOL)
    # the neighbours' ID rows get gradients through the term
    model.item_emb.weight.grad = None
    out["item"][0].sum().backward()
    touched = set(torch.nonzero(model.item_emb.weight.grad.abs().sum(1)).flatten().tolist())
    assert touched == {1} | set(model.knn_index[1].tolist())


def test_input_mode_adds_the_neighbours_mean_to_the_layer0_id_part():
    """``model.item_knn_at=input``: layer-0 item vectors = fusion ⊕ (ID row + neighbours' mean ID row); the
    scorer's output gets nothing more."""
    model = _model("mf", at="input")
    feats = torch.randn(4, FEAT, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    items = torch.tensor([1, 8, 3, N_ITEMS + 2])
    vecs = model.item_vectors(items, feats)
    table = model.item_emb.weight
    for row, item in enumerate(items.tolist()[:3]):
        torch.testing.assert_close(vecs[row, 4:], table[item] + table[model.knn_index[item]].mean(0), **TOL)
    torch.testing.assert_close(vecs[3, 4:], table.mean(0), **TOL)  # cold start: mean row, no neighbours
    out = model.forward_blocks(None, torch.tensor([0, 1, 2, 3]), items, feats)
    torch.testing.assert_close(out["item"], vecs, **TOL)


@pytest.mark.parametrize("at", ["output", "input"])
@pytest.mark.parametrize("scorer", ["mf", "gcn"])
def test_blocks_path_equals_full_graph_and_inference(scorer, at, tmp_path):
    model = _model(scorer, at)
    feats = np.random.default_rng(3).normal(size=(N_ITEMS, FEAT))
    g, all_feats = toy_graph(), torch.from_numpy(feats)
    full = model.forward_graph(g, all_feats, chunk_size=4)
    plain = _model(scorer, at)
    plain.knn_index.copy_(torch.zeros_like(plain.knn_index))  # every item's neighbours: item 0 only
    assert not torch.allclose(plain.forward_graph(g, all_feats)["item"], full["item"])
    input_nodes, output_nodes, blocks = dgl.dataloading.NeighborSampler([-1, -1]).sample(
        g, {"user": torch.tensor([0, 2]), "item": torch.tensor([5, 1, 7])})
    if scorer == "mf":
        blocks = [blocks[-1]]
    out = model(blocks, input_nodes["user"], input_nodes["item"], all_feats[input_nodes["item"]])
    for nt in ("user", "item"):
        torch.testing.assert_close(out[nt], full[nt][output_nodes[nt]], **TOL)
    # evaluation's inference (features streamed from a store) gives the same item vectors
    model.float()
    store = _store(tmp_path, feats.astype(np.float32), rows_per_group=4)
    _, item_vecs = compute_vectors(model, store, g, N_USERS, N_ITEMS, item_chunk=4)
    torch.testing.assert_close(item_vecs, model.forward_graph(g, all_feats.float())["item"], rtol=0, atol=1e-5)


def test_set_item_graph_checks_shape_and_ids():
    model = _model("mf")
    with pytest.raises(ValueError, match="shape"):
        model.set_item_graph(torch.zeros(N_ITEMS, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        model.set_item_graph(torch.full((N_ITEMS, 3), N_ITEMS))
