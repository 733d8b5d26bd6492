"""The cold-item protocol: held-out items (seeded, recorded, no train interaction), the mean-trained-row rule for
their ID part, no cold negatives, warm/cold metrics against a brute-force oracle, and the ID-only model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import toy_cfg, toy_feats
from metammf_dist.cli import main
from metammf_dist.data.dataset import Dataset
from metammf_dist.data.splits import SPLIT_CODES, hold_out_items
from metammf_dist.evaluation.item_groups import cold_item_mask, evaluate_item_groups
from metammf_dist.evaluation.ranking import build_csr, evaluate_full_ranking


# ---------------------------------------------------------------------------- the split
def _toy_split(n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), 6)
    items = np.concatenate([rng.choice(n_items, 6, replace=False) for _ in range(n_users)])
    splits = rng.choice([0, 0, 0, 1, 2], size=users.size).astype(np.int8)
    return users, items, splits


def test_hold_out_items_moves_every_train_pair_of_a_cold_item_and_is_seeded():
    users, items, splits = _toy_split()
    new, cold = hold_out_items(items, splits, 30, 0.2, 0.25, np.random.default_rng([7, 1]))
    assert cold.sum() == 6
    assert not (cold[items] & (new == SPLIT_CODES["train"])).any()  # no train interaction of a cold item
    np.testing.assert_array_equal(new[~cold[items]], splits[~cold[items]])  # warm items untouched
    moved = cold[items] & (splits == SPLIT_CODES["train"])
    assert moved.sum() > 0 and set(new[moved]) <= {SPLIT_CODES["valid"], SPLIT_CODES["test"]}
    again, cold2 = hold_out_items(items, splits, 30, 0.2, 0.25, np.random.default_rng([7, 1]))
    np.testing.assert_array_equal(again, new)
    np.testing.assert_array_equal(cold2, cold)
    _, other = hold_out_items(items, splits, 30, 0.2, 0.25, np.random.default_rng([8, 1]))
    assert not np.array_equal(other, cold)


def _mmrec(root, n_users=30, n_items=20, seed=0):
    root.mkdir(parents=True)
    users, items, splits = _toy_split(n_users, n_items, seed)
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{s}" for u, i, s in zip(users, items, splits)]
    (root / "toy.inter").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(seed)
    np.save(root / "image_feat.npy", rng.standard_normal((n_items, 4)).astype(np.float32))
    return root


def test_prepare_cold_items_is_recorded_and_leaves_cold_items_without_train(tmp_path):
    src = _mmrec(tmp_path / "src")
    assert main(["prepare", "mmrec", str(src), str(tmp_path / "a"), "--cold-items", "0.25", "--split-seed", "5"]) == 0
    assert main(["prepare", "mmrec", str(src), str(tmp_path / "b"), "--cold-items", "0.25", "--split-seed", "5"]) == 0
    assert main(["prepare", "mmrec", str(src), str(tmp_path / "plain")]) == 0
    ds, plain = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "plain")
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert meta["source"]["cold_items"] == 5 and meta["source"]["cold_frac"] == 0.25 and meta["split_seed"] == 5
    assert "cold_items" not in plain.meta["source"] and plain.meta["split_seed"] is None
    assert (tmp_path / "a" / "interactions.parquet").read_bytes() == (tmp_path / "b" / "interactions.parquet").read_bytes()
    assert ds.num_interactions() == plain.num_interactions()
    trained = set(ds.interactions("train")[1].tolist())
    held = set(ds.interactions("valid")[1].tolist()) | set(ds.interactions("test")[1].tolist())
    cold = cold_item_mask(ds.interactions("train")[1], ds.num_items).numpy()
    assert cold.sum() >= 5 and not trained & set(np.flatnonzero(cold).tolist()) and held & set(np.flatnonzero(cold))


def test_synth_cold_items_option(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--users", "60", "--items", "40", "--interactions", "600",
                 "--modality", "image:4", "--cold-items", "0.25", "--seed", "2"]) == 0
    ds = Dataset.open(tmp_path / "s")
    assert ds.meta["source"]["cold_items"] == 10 and ds.meta["source"]["cold_frac"] == 0.25
    assert cold_item_mask(ds.interactions("train")[1], 40).sum() >= 10


# ---------------------------------------------------------------------------- the model
def _model(**cfg):
    from metammf_dist.model.recommender import MetaMMFRecommender

    torch.manual_seed(0)
    return MetaMMFRecommender(toy_cfg(scorer="mf", **cfg), 6, 9, 11).double()


def test_cold_items_get_the_mean_trained_id_row_without_gradient():
    model = _model()
    model.set_train_items([0, 2, 2, 5, 7])
    table = model.item_emb.weight
    ids = torch.tensor([0, 1, 5, 8, 9 + 3])  # warm, cold, warm, cold, new (>= num_items)
    vecs = model.item_vectors(ids, toy_feats(5))
    mean = table[[0, 2, 5, 7]].mean(0)
    fusion_out = model.fusion_out_dim
    torch.testing.assert_close(vecs[0, fusion_out:], table[0])
    torch.testing.assert_close(vecs[2, fusion_out:], table[5])
    for row in (1, 3, 4):
        torch.testing.assert_close(vecs[row, fusion_out:], mean.detach())
    torch.testing.assert_close(vecs[:, :fusion_out], model.fuse(toy_feats(5)))  # cold items keep their fusion part
    vecs[:, fusion_out:].sum().backward()
    assert table.grad[[1, 3, 4, 6, 8]].abs().sum() == 0  # no gradient into untrained rows (nor via the mean)
    assert table.grad[[0, 5]].abs().sum() > 0


def test_id_rows_are_the_same_for_every_fusion_kind_of_a_seed():
    rows = {}
    for kind in ("meta", "static", "cp"):
        model = _model(fusion=kind)
        model.reset_id_rows(torch.Generator().manual_seed(4))
        rows[kind] = (model.user_emb.weight.clone(), model.item_emb.weight.clone())
    for kind in ("static", "cp"):
        torch.testing.assert_close(rows[kind], rows["meta"], rtol=0, atol=0)


def test_id_only_model_has_no_fusion():
    model = _model(fusion="none", item_id_dim=7)
    assert model.fusion is None and model.meta_learner is None and model.fusion_out_dim == 0
    vecs = model.item_vectors(torch.tensor([1, 3]), toy_feats(2))
    torch.testing.assert_close(vecs, model.item_emb.weight[[1, 3]])
    from metammf_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="item_id_dim"):
        load_config("configs/tiktok.yaml", ["model.fusion=none"])
    assert load_config("configs/tiktok.yaml", ["model.fusion=none", "model.item_id_dim=64"]).model.fusion == "none"


def test_negatives_never_cold_and_unchanged_when_every_item_is_trained():
    from metammf_dist.sampler.negatives import draw_epoch_negatives, negative_pool

    assert negative_pool(torch.arange(10).repeat(2), 10) is None
    pool = negative_pool(torch.tensor([4, 1, 1, 7, 9]), 12)
    torch.testing.assert_close(pool, torch.tensor([1, 4, 7, 9]))
    neg = draw_epoch_negatives(500, 12, 2, seed=3, epoch=1, pool=pool)
    assert set(neg.unique().tolist()) == {1, 4, 7, 9}
    full = draw_epoch_negatives(50, 12, 2, seed=3, epoch=1, pool=torch.arange(12))
    torch.testing.assert_close(full, draw_epoch_negatives(50, 12, 2, seed=3, epoch=1))


# ---------------------------------------------------------------------------- warm / cold metrics
def _oracle(scores, exclude_pairs, truth_pairs, keep, candidates, k):
    """Recall@k and NDCG@k by brute force: per user, its truth items in ``keep``, ranked among ``candidates``."""
    n_users, n_items = scores.shape
    recalls, ndcgs = [], []
    for u in range(n_users):
        truth = {i for uu, i in truth_pairs if uu == u and keep[i]}
        if not truth:
            continue
        excluded = {i for uu, i in exclude_pairs if uu == u}
        ranked = sorted((i for i in range(n_items) if i not in excluded and candidates[i]),
                        key=lambda i: (-scores[u, i], i))[:k]
        hits = [r for r, i in enumerate(ranked) if i in truth]
        recalls.append(len(hits) / len(truth))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
        ndcgs.append(sum(1 / math.log2(r + 2) for r in hits) / ideal)
    return np.mean(recalls), np.mean(ndcgs), len(recalls)


def test_warm_cold_metrics_match_a_brute_force_oracle():
    gen = torch.Generator().manual_seed(5)
    n_users, n_items, dim = 25, 40, 6
    user_vecs = torch.randn(n_users, dim, generator=gen, dtype=torch.float64)
    item_vecs = torch.randn(n_items, dim, generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(2)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 300), rng.integers(0, n_items, 300))}
    pairs = sorted(pairs)
    which = rng.choice(3, size=len(pairs), p=[0.6, 0.1, 0.3])
    train = [p for p, w in zip(pairs, which) if w == 0]
    cold = np.ones(n_items, dtype=bool)
    cold[[i for _, i in train]] = False
    cold[:3] = True  # cold items must have no train pair: drop theirs
    train = [p for p in train if not cold[p[1]]]
    exclude_pairs = train + [p for p, w in zip(pairs, which) if w == 1]
    test = [p for p, w in zip(pairs, which) if w == 2]
    assert cold.sum() >= 3 and any(cold[i] for _, i in test)
    excl = build_csr([u for u, _ in exclude_pairs], [i for _, i in exclude_pairs], n_users)
    truth = build_csr([u for u, _ in test], [i for _, i in test], n_users)
    mask = cold_item_mask(torch.tensor([i for _, i in train]), n_items)
    torch.testing.assert_close(mask, torch.from_numpy(cold))
    got = evaluate_item_groups(user_vecs, item_vecs, excl, truth, torch.arange(n_users), mask, ks=(5,), user_chunk=7)
    overall = evaluate_full_ranking(user_vecs, item_vecs, excl, truth, torch.arange(n_users), ks=(5,), user_chunk=7)
    assert {k: v for k, v in got.items() if not k.startswith(("warm_", "cold_"))} == overall  # one pass, same
    scores = (user_vecs @ item_vecs.T).numpy()
    everything = np.ones(n_items, dtype=bool)
    for group, keep, candidates in (("warm", ~cold, ~cold), ("cold", cold, cold), ("cold_all", cold, everything),
                                    ("", everything, everything)):
        recall, ndcg, n = _oracle(scores, exclude_pairs, test, keep, candidates, 5)
        prefix = f"{group}_" if group else ""
        assert got[f"{prefix}num_users"] == n
        assert got[f"{prefix}recall@5"] == pytest.approx(recall, abs=1e-9)
        assert got[f"{prefix}ndcg@5"] == pytest.approx(ndcg, abs=1e-9)
