"""`metammf-dist synth`: deterministic bytes, exact counts, no duplicate pairs, power-law popularity,
cold items, and planted feature signal strong enough that a trivial feature scorer beats popularity."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from metammf_dist.cli import main
from metammf_dist.data.dataset import Dataset
from metammf_dist.data.splits import held_out_counts
from metammf_dist.data.synth import SynthSpec, generate, plant, user_chunks
from metammf_dist.errors import DataError

USERS, ITEMS, INTERACTIONS = 2000, 1000, 20000
SMALL = ["--users", USERS, "--items", ITEMS, "--interactions", INTERACTIONS,
         "--modality", "image:32", "--modality", "text:48", "--seed", 11]
SPEC = SynthSpec(num_users=USERS, num_items=ITEMS, num_interactions=INTERACTIONS,
                 modalities={"image": 32, "text": 48}, seed=11)


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def all_pairs(ds: Dataset):
    parts = [ds.interactions(s) for s in ("train", "valid", "test")]
    users = np.concatenate([u for u, _ in parts])
    items = np.concatenate([i for _, i in parts])
    splits = np.concatenate([np.full(len(u), code) for code, (u, _) in enumerate(parts)])
    return users, items, splits


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    assert main(["synth", str(out), *map(str, SMALL)]) == 0
    return out


def test_same_seed_same_bytes(small, tmp_path, capsys):
    assert main(["synth", str(tmp_path / "b"), *map(str, SMALL)]) == 0
    first, second = tree_digest(small), tree_digest(tmp_path / "b")
    assert set(first) == {"dataset.json", "interactions.parquet", "features/manifest.json",
                          "features/shard-00000.parquet"}
    assert first == second
    other = [str(a) for a in SMALL[:-1]] + ["12"]
    assert main(["synth", str(tmp_path / "c"), *other]) == 0
    assert tree_digest(tmp_path / "c")["interactions.parquet"] != first["interactions.parquet"]
    assert "2,000 users" in capsys.readouterr().out


def test_counts_dedupe_and_split_rule(small):
    ds = Dataset.open(small)
    assert (ds.num_users, ds.num_items, ds.modalities) == (USERS, ITEMS, {"image": 32, "text": 48})
    users, items, splits = all_pairs(ds)
    assert len(users) == INTERACTIONS == ds.num_interactions()
    assert np.unique(users * ITEMS + items).size == INTERACTIONS  # no duplicate (user, item) pairs
    per_user = np.bincount(users, minlength=USERS)
    assert per_user.min() >= 3
    n_valid, n_test = held_out_counts(per_user, 0.1, 0.1)
    np.testing.assert_array_equal(np.bincount(users[splits == 1], minlength=USERS), n_valid)
    np.testing.assert_array_equal(np.bincount(users[splits == 2], minlength=USERS), n_test)


def test_power_law_popularity(small):
    _, items, _ = all_pairs(Dataset.open(small))
    counts = np.sort(np.bincount(items, minlength=ITEMS))[::-1]
    assert counts[: ITEMS // 10].sum() / counts.sum() > 0.30
    assert counts[0] > 10 * np.median(counts)


def test_features_reveal_planted_clusters(small):
    clusters = plant(SPEC).item_cluster
    x = Dataset.open(small).feature_store().gather_concat(np.arange(ITEMS))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    same = clusters[:, None] == clusters[None, :]
    off_diag = ~np.eye(ITEMS, dtype=bool)
    assert sim[same & off_diag].mean() > sim[off_diag].mean() + 0.2


def recall_at_20(scores, train, test) -> float:
    scores = np.where(train, -np.inf, scores)
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    hits = np.take_along_axis(test, top, axis=1).sum(axis=1)
    n = test.sum(axis=1)
    has = n > 0
    return float((hits[has] / np.minimum(n[has], 20)).mean())


def test_feature_scorer_beats_popularity(small):
    ds = Dataset.open(small)
    tu, ti = ds.interactions("train")
    su, si = ds.interactions("test")
    train = np.zeros((USERS, ITEMS), bool)
    train[tu, ti] = True
    test = np.zeros((USERS, ITEMS), bool)
    test[su, si] = True
    x = ds.feature_store().gather_concat(np.arange(ITEMS)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    profile = np.zeros((USERS, x.shape[1]))
    np.add.at(profile, tu, x[ti])  # mean direction of the user's train items
    popularity = np.bincount(ti, minlength=ITEMS).astype(float)
    pop = recall_at_20(np.broadcast_to(popularity, (USERS, ITEMS)), train, test)
    feat = recall_at_20(profile @ x.T, train, test)
    assert pop > 0.05  # popularity is a real baseline here...
    assert feat > 1.25 * pop, (feat, pop)  # ...and the features beat it clearly


def test_cold_items_only_in_valid_test(tmp_path):
    spec = SynthSpec(num_users=500, num_items=400, num_interactions=5000, modalities={"f": 8}, seed=3,
                     cold_frac=0.2, item_chunk=64, draw_chunk=700)  # many small chunks
    assert len(user_chunks(spec, plant(spec))) > 5
    meta = generate(spec, tmp_path / "cold", shard_size=100)
    cold = plant(spec).cold
    assert cold.sum() == 80 == meta["source"]["cold_items"]
    ds = Dataset.open(tmp_path / "cold")
    train_items = ds.interactions("train")[1]
    held_items = np.concatenate([ds.interactions("valid")[1], ds.interactions("test")[1]])
    assert not cold[train_items].any()
    assert cold[held_items].sum() > 0
    assert ds.num_interactions() == 5000
    assert ds.feature_store().manifest.num_shards == 4


def test_chunking_does_not_change_pairs_per_user_rule(tmp_path):
    """Every user range is covered exactly once, whatever the chunk size."""
    spec = SynthSpec(num_users=300, num_items=200, num_interactions=3000, modalities={"f": 4}, draw_chunk=257)
    chunks = user_chunks(spec, plant(spec))
    assert chunks[0][0] == 0 and chunks[-1][1] == 300
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


@pytest.mark.parametrize("argv, needle", [
    (["--users", "10", "--items", "10", "--interactions", "60", "--modality", "f:4"], "do not fit"),
    (["--users", "10", "--items", "10", "--interactions", "20", "--modality", "f4"], "NAME:DIM"),
    (["--users", "10", "--items", "10", "--interactions", "20"], "--modality"),
    (["--users", "10", "--items", "10", "--interactions", "20", "--modality", "f:4", "--valid-frac", "0.6",
      "--test-frac", "0.5"], "valid_frac + test_frac"),
])
def test_bad_synth_arguments(argv, needle, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["synth", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_spec_validation_names_the_field():
    with pytest.raises(DataError, match="cold_frac"):
        SynthSpec(num_users=5, num_items=5, num_interactions=5, cold_frac=1.5).validate()


def test_planted_fusion_gate_is_readable_from_the_features_and_decides_the_cluster(tmp_path):
    from metammf_dist.ablation.probe import cross_fitted_r2, planted_gate

    spec = SynthSpec(num_users=600, num_items=1500, num_interactions=6000, modalities={"image": 24, "text": 16},
                     clusters=8, seed=4, planted_fusion=True, dtype="float32")
    planted = plant(spec)
    assert planted.gate.shape == (1500, 2) and np.allclose(planted.gate.sum(1), 1.0)
    dominant = planted.gate.argmax(1)
    np.testing.assert_array_equal(planted.item_cluster, planted.modality_cluster[np.arange(1500), dominant])
    assert 0.2 < (dominant == 0).mean() < 0.8  # both modalities dominate some items
    assert (planted.modality_cluster[:, 0] != planted.modality_cluster[:, 1]).mean() > 0.7  # modalities disagree
    meta = generate(spec, tmp_path / "p")
    assert meta["source"]["planted_fusion"] is True
    np.testing.assert_array_equal(planted_gate(Dataset.open(tmp_path / "p").meta), planted.gate)
    feats = Dataset.open(tmp_path / "p").feature_store().gather_concat(np.arange(1500))
    # each modality's gate logit is a linear readout of that modality's features; the gate (a softmax of them)
    # mostly so
    assert cross_fitted_r2(feats[:, :24], planted.gate_logits[:, 0]) > 0.8
    assert cross_fitted_r2(feats[:, 24:], planted.gate_logits[:, 1]) > 0.8
    assert cross_fitted_r2(feats, planted.gate) > 0.7
    # off by default: no gate (and the default catalog draws exactly what it drew before the option existed)
    assert plant(SPEC).gate is None and planted_gate(Dataset.open(tmp_path / "p").meta | {"source": {}}) is None
