"""Tests of metammf_dist.evaluation (single process): metrics and ranking against plain-Python
oracles, tie-breaking, chunk/rank-count invariance, and the popularity reference on real TikTok data.

Random score vectors are small integers so that every score is exact in float32 (any summation
order gives the same bits) and ties are frequent, which exercises the lower-item-id tie-break.
"""
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SHARED_DATA

from metammf_dist.evaluation import (
    build_csr,
    evaluate_full_ranking,
    evaluate_popularity,
    evaluate_scores,
    hit_matrix,
    item_popularity,
    local_ranking_sums,
    merge_csr,
    metric_keys,
    per_user_metrics,
    popularity_score_fn,
    topk_lowest_id,
)

TIKTOK = SHARED_DATA / "tiktok" / "tiktok.inter"


# ---------------------------------------------------------------- plain-Python oracle
def oracle_user_metrics(ranked, truth, ks):
    """Metrics of one user from a ranked item list (best first; may be shorter than K)."""
    out = {}
    for k in ks:
        top = ranked[:k]
        hit_ranks = [r for r, item in enumerate(top) if item in truth]
        ideal = sum(1.0 / math.log2(r + 2) for r in range(min(len(truth), k)))
        out[f"precision@{k}"] = len(hit_ranks) / k
        out[f"recall@{k}"] = len(hit_ranks) / len(truth)
        out[f"hit@{k}"] = 1.0 if hit_ranks else 0.0
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 2) for r in hit_ranks) / ideal
    return out


def oracle_rank(scores, excluded, k):
    """Non-excluded items sorted by (score desc, item id asc), first k."""
    candidates = [i for i in range(len(scores)) if i not in excluded]
    return sorted(candidates, key=lambda i: (-scores[i], i))[:k]


def oracle_evaluate(user_vecs, item_vecs, exclude_sets, truth_sets, users, ks):
    """Averaged metrics over the users with a truth item, all in Python floats."""
    users = sorted({u for u in users if truth_sets.get(u)})
    sums = {key: 0.0 for key in metric_keys(ks)}
    for u in users:
        scores = [sum(a * b for a, b in zip(user_vecs[u], item)) for item in item_vecs]
        ranked = oracle_rank(scores, exclude_sets.get(u, set()), max(ks))
        for key, v in oracle_user_metrics(ranked, truth_sets[u], ks).items():
            sums[key] += v
    return {key: s / len(users) for key, s in sums.items()}, len(users)


# ---------------------------------------------------------------- random cases
def random_sets(rng, num_users, num_items, max_size, p_empty=0.2):
    sets = {}
    for u in range(num_users):
        if rng.random() < p_empty:
            continue
        sets[u] = set(rng.sample(range(num_items), rng.randint(1, max_size)))
    return sets


def sets_to_csr(sets, num_users):
    pairs = [(u, i) for u, items in sets.items() for i in items]
    users = [p[0] for p in pairs]
    items = [p[1] for p in pairs]
    return build_csr(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), num_users)


def random_case(seed, num_users=40, num_items=25, dim=3, max_excluded=23):
    """Integer-valued vectors (exact float32 scores, many ties) plus exclusion/truth sets."""
    rng = random.Random(seed)
    user_vecs = [[rng.randint(-2, 2) for _ in range(dim)] for _ in range(num_users)]
    item_vecs = [[rng.randint(-2, 2) for _ in range(dim)] for _ in range(num_items)]
    exclude = random_sets(rng, num_users, num_items, max_excluded)
    truth = random_sets(rng, num_users, num_items, 6)
    return user_vecs, item_vecs, exclude, truth


# ---------------------------------------------------------------- metrics
def test_hit_matrix_and_per_user_metrics_match_oracle():
    rng = random.Random(0)
    num_items, kmax, ks = 30, 12, (1, 5, 12)
    ranked, truths = [], []
    for _ in range(60):
        ranked.append(rng.sample(range(num_items), kmax))
        truths.append(set(rng.sample(range(num_items), rng.randint(1, 15))))  # some > K
    truth_csr = sets_to_csr(dict(enumerate(truths)), len(truths))
    hits = hit_matrix(torch.tensor(ranked), truth_csr.indptr, truth_csr.indices)
    assert hits.tolist() == [[item in t for item in row] for row, t in zip(ranked, truths)]
    got = per_user_metrics(hits, truth_csr.row_lengths(), ks)
    assert list(got) == metric_keys(ks)
    for u, (row, t) in enumerate(zip(ranked, truths)):
        for key, v in oracle_user_metrics(row, t, ks).items():
            assert got[key][u].item() == pytest.approx(v, abs=1e-12), (u, key)
            assert got[key].dtype == torch.float64


def test_metrics_edge_cases_perfect_ranking_and_empty_truth():
    # User 0 ranks its 3 truth items first -> NDCG 1; user 1 has no truth item -> all zeros.
    hits = torch.tensor([[True, True, True, False], [False, False, False, False]])
    got = per_user_metrics(hits, torch.tensor([3, 0]), ks=(2, 4))
    assert got["ndcg@2"].tolist() == [1.0, 0.0] and got["ndcg@4"].tolist() == [1.0, 0.0]
    assert got["recall@2"].tolist() == [2 / 3, 0.0] and got["precision@4"].tolist() == [0.75, 0.0]
    with pytest.raises(ValueError):
        per_user_metrics(hits, torch.tensor([3, 0]), ks=(5,))  # more cut-off than ranks
    with pytest.raises(ValueError):
        per_user_metrics(hits, torch.tensor([3, 0]), ks=(0,))


# ---------------------------------------------------------------- top-k tie-breaking
def test_topk_lowest_id_matches_sorted_oracle_with_heavy_ties():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (200, 17), generator=gen).to(torch.float32)
    scores[::7, ::2] = float("-inf")  # excluded items, also tied
    for k in (1, 3, 8, 17):
        values, indices = topk_lowest_id(scores, k)
        for row, vals, idx in zip(scores.tolist(), values.tolist(), indices.tolist()):
            expected = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
            assert idx == expected
            assert vals == [row[i] for i in expected]


def test_topk_lowest_id_rejects_nan():
    scores = torch.tensor([[1.0, float("nan"), 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        topk_lowest_id(scores, 2)


# ---------------------------------------------------------------- CSR
def test_build_csr_sorts_dedups_and_merges():
    csr = build_csr(np.array([2, 0, 2, 2, 0]), np.array([5, 1, 3, 5, 1]), num_users=4)
    assert csr.indptr.tolist() == [0, 1, 1, 3, 3]
    assert csr.indices.tolist() == [1, 3, 5]
    other = build_csr(torch.tensor([3, 2]), torch.tensor([0, 4]), num_users=4)
    merged = merge_csr(csr, other)
    assert merged.indptr.tolist() == [0, 1, 1, 4, 5]
    assert merged.indices.tolist() == [1, 3, 4, 5, 0]
    indptr, items, local_row = merged.gather(torch.tensor([3, 2]))
    assert indptr.tolist() == [0, 1, 4] and items.tolist() == [0, 3, 4, 5] and local_row.tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError):
        build_csr(np.array([4]), np.array([0]), num_users=4)
    with pytest.raises(ValueError):
        build_csr(np.array([0.5]), np.array([0]), num_users=4)


# ---------------------------------------------------------------- end-to-end ranking
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_full_ranking_matches_python_oracle(seed):
    user_vecs, item_vecs, exclude, truth, = random_case(seed)
    num_users, ks = len(user_vecs), (5, 30)  # 30 > 25 items: K larger than the candidates
    expected, count = oracle_evaluate(user_vecs, item_vecs, exclude, truth, range(num_users), ks)
    got = evaluate_full_ranking(
        torch.tensor(user_vecs, dtype=torch.float32), torch.tensor(item_vecs, dtype=torch.float32),
        sets_to_csr(exclude, num_users), sets_to_csr(truth, num_users), torch.arange(num_users), ks=ks,
        user_chunk=9,
    )
    assert got["num_users"] == count
    for key, v in expected.items():
        assert got[key] == pytest.approx(v, abs=1e-9), key


def test_chunking_invariance_is_exact():
    user_vecs, item_vecs, exclude, truth = random_case(3, num_users=60, num_items=40, max_excluded=10)
    args = (torch.tensor(item_vecs, dtype=torch.float32), sets_to_csr(exclude, 60), sets_to_csr(truth, 60))
    uv = torch.tensor(user_vecs, dtype=torch.float32)
    results = [evaluate_full_ranking(uv, *args, users=np.arange(60), user_chunk=c) for c in (1, 7, 60, 1000)]
    assert all(r == results[0] for r in results[1:])
    # Continuous random vectors too (no ties): still identical across chunk sizes.
    gen = torch.Generator().manual_seed(4)
    uv, iv = torch.randn(60, 8, generator=gen, dtype=torch.float64), torch.randn(40, 8, generator=gen, dtype=torch.float64)
    results = [evaluate_full_ranking(uv, iv, *args[1:], users=np.arange(60), user_chunk=c) for c in (1, 7, 60)]
    assert all(r == results[0] for r in results[1:])


def test_rank_shares_sum_exactly_to_single_rank_result():
    user_vecs, item_vecs, exclude, truth = random_case(5, num_users=50, num_items=30)
    uv, iv = torch.tensor(user_vecs, dtype=torch.float32), torch.tensor(item_vecs, dtype=torch.float32)

    def score_fn(ids):
        return uv[ids] @ iv.t()

    common = (score_fn, 30, sets_to_csr(exclude, 50), sets_to_csr(truth, 50), torch.arange(50), (3, 10), 4)
    single = local_ranking_sums(*common, rank=0, world_size=1)
    for world in (2, 3, 5, 16):  # 16 ranks > 10 chunks: some ranks get nothing
        shares = [local_ranking_sums(*common, rank=r, world_size=world) for r in range(world)]
        assert torch.equal(torch.stack(shares).sum(0), single)


def test_tensor_and_callable_user_vectors_agree_and_users_are_filtered():
    user_vecs, item_vecs, exclude, truth = random_case(6)
    uv, iv = torch.tensor(user_vecs, dtype=torch.float32), torch.tensor(item_vecs, dtype=torch.float32)
    ex, tr = sets_to_csr(exclude, 40), sets_to_csr(truth, 40)
    calls = []

    def lazy(ids):
        calls.append(ids.numel())
        return uv[ids]

    users = torch.tensor([5, 3, 3, 7, 5] + list(range(40)))  # duplicates are evaluated once
    a = evaluate_full_ranking(uv, iv, ex, tr, users, user_chunk=8)
    b = evaluate_full_ranking(lazy, iv, ex, tr, users, user_chunk=8)
    assert a == b
    assert a["num_users"] == len(truth) == sum(calls)  # users without truth are skipped
    assert max(calls) <= 8


def test_input_errors_name_the_problem():
    user_vecs, item_vecs, exclude, truth = random_case(7)
    uv, iv = torch.tensor(user_vecs, dtype=torch.float32), torch.tensor(item_vecs, dtype=torch.float32)
    ex, tr = sets_to_csr(exclude, 40), sets_to_csr(truth, 40)
    no_truth_user = next(u for u in range(40) if u not in truth)
    with pytest.raises(ValueError, match="no user to evaluate"):
        evaluate_full_ranking(uv, iv, ex, tr, [no_truth_user])
    with pytest.raises(ValueError, match="num_items"):
        evaluate_full_ranking(uv, iv[:3], ex, tr, range(40))
    with pytest.raises(ValueError, match="ks"):
        evaluate_full_ranking(uv, iv, ex, tr, range(40), ks=(10, 10))
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda ids: torch.zeros(len(ids), 3), 25, ex, tr, range(40))


# ---------------------------------------------------------------- real data: popularity on TikTok
@pytest.fixture(scope="module")
def tiktok():
    df = pd.read_csv(TIKTOK, sep="\t")
    num_users, num_items = 9308, 6710
    split = {name: df[df["x_label"] == label] for label, name in enumerate(("train", "valid", "test"))}
    csr = {name: build_csr(d["userID"].to_numpy(), d["itemID"].to_numpy(), num_users) for name, d in split.items()}
    return split, csr, num_users, num_items


def test_popularity_reproduces_tiktok_reference(tiktok):
    """Reference: full ranking over non-train items; popularity = train-interaction count.

    Exclusion train+valid (what testing uses) and train-only give the same figures to 4 decimals;
    no tie at the top-20 boundary changes a hit, so the tie rule does not move them either.
    Not excluding anything gives different figures, showing the check is sensitive to exclusion.
    """
    split, csr, num_users, num_items = tiktok
    train_items = split["train"]["itemID"].to_numpy()
    test_users = np.unique(split["test"]["userID"].to_numpy())
    reference = {"recall@10": 0.0467, "ndcg@10": 0.0222, "recall@20": 0.0597, "ndcg@20": 0.0255}
    for exclude in (merge_csr(csr["train"], csr["valid"]), csr["train"]):
        got = evaluate_popularity(train_items, num_items, exclude, csr["test"], test_users)
        assert got["num_users"] == 6130
        for key, v in reference.items():
            assert got[key] == pytest.approx(v, abs=1e-3), key
            assert round(got[key], 4) == v, key
        # One test item per user: recall == hit rate == K * precision.
        assert got["hit@20"] == got["recall@20"] == pytest.approx(20 * got["precision@20"], abs=1e-9)
    nothing = build_csr(np.zeros(0, np.int64), np.zeros(0, np.int64), num_users)
    unexcluded = evaluate_popularity(train_items, num_items, nothing, csr["test"], test_users)
    assert abs(unexcluded["ndcg@20"] - reference["ndcg@20"]) > 5e-4


@pytest.mark.parametrize("num_items,seed", [(50, 0), (400, 1), (15, 2)])
def test_popularity_prefix_ranking_equals_scoring_every_item(num_items, seed):
    """``evaluate_popularity`` ranks a prefix of the catalog's popularity order; scoring every item for every
    user (``evaluate_scores`` + ``popularity_score_fn``) must give the same metrics, with many tied counts,
    users who exclude most of the catalog, and a catalog smaller than the largest cut-off (15 < 20)."""
    from metammf_dist.evaluation.ranking import evaluate_scores

    gen = np.random.default_rng(seed)
    num_users = 60
    train_items = gen.integers(0, num_items // 3 + 1, size=300)  # a third of the catalog: ties, many zeros
    ex_u, ex_i, tr_u, tr_i = [], [], [], []
    for u in range(num_users):
        excluded = gen.choice(num_items, size=int(gen.integers(0, num_items - 2)), replace=False)
        rest = np.setdiff1d(np.arange(num_items), excluded)
        truth = gen.choice(rest, size=min(3, rest.size), replace=False)
        ex_u += [u] * excluded.size
        ex_i += excluded.tolist()
        tr_u += [u] * truth.size
        tr_i += truth.tolist()
    exclude = build_csr(np.array(ex_u, np.int64), np.array(ex_i, np.int64), num_users)
    truth = build_csr(np.array(tr_u, np.int64), np.array(tr_i, np.int64), num_users)
    users = np.arange(num_users)
    want = evaluate_scores(popularity_score_fn(item_popularity(train_items, num_items)), num_items, exclude,
                           truth, users, ks=(5, 20), user_chunk=7)
    got = evaluate_popularity(train_items, num_items, exclude, truth, users, ks=(5, 20), user_chunk=7)
    assert got == want and got["num_users"] == num_users


def test_popularity_score_fn_is_the_train_count_row(tiktok):
    split, _, _, num_items = tiktok
    pop = item_popularity(split["train"]["itemID"].to_numpy(), num_items)
    assert pop.sum().item() == 59541 and pop.dtype == torch.float64
    scores = popularity_score_fn(pop)(torch.tensor([0, 9307]))
    assert scores.shape == (2, num_items) and torch.equal(scores[0], pop) and torch.equal(scores[1], pop)
    scores[0, 0] = -1.0  # a fresh tensor: filling exclusions must not corrupt the counts
    assert pop[0].item() >= 0


def test_read_only_ids_are_copied_not_shared():
    """Ids from read-only buffers (Arrow/pandas hand those out) are copied: torch would otherwise wrap memory
    it must not write, with a UserWarning; the CSR is the same as from a writable copy."""
    import warnings

    users, items = np.array([2, 0, 2, 1]), np.array([5, 3, 1, 4])
    ro_users, ro_items = users.copy(), items.copy()
    ro_users.flags.writeable = ro_items.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        csr = build_csr(ro_users, ro_items, 3)
    want = build_csr(users, items, 3)
    assert torch.equal(csr.indptr, want.indptr) and torch.equal(csr.indices, want.indices)


def test_split_csr_with_sampled_users_keeps_only_their_rows(tiktok_dataset):
    """``eval.max_users``: the truth and exclusion CSRs hold the ranked users' rows only (identical to the full
    CSRs' rows), and the metrics of those users are the same as ranked with the full CSRs."""
    from metammf_dist.data.dataset import Dataset
    from metammf_dist.train.inference import split_csr

    ds = Dataset.open(str(tiktok_dataset))
    full_truth, full_excl, all_users = split_csr(ds, "test", ["train", "valid"])
    truth, excl, users = split_csr(ds, "test", ["train", "valid"], max_users=500)
    assert all_users.numel() == 6130 and users.numel() == 500
    assert set(users.tolist()) <= set(all_users.tolist())
    for full, part in ((full_truth, truth), (full_excl, excl)):
        assert part.num_rows == full.num_rows == ds.num_users
        lengths = part.row_lengths()
        assert int(lengths.sum()) == int(full.row_lengths()[users].sum()) > 0
        assert int((lengths > 0).sum()) <= 500 and bool((lengths[users] == full.row_lengths()[users]).all())
        _, got, _ = part.gather(users)
        _, want, _ = full.gather(users)
        assert torch.equal(got, want)
    train_items = ds.interactions("train")[1]
    assert evaluate_popularity(train_items, ds.num_items, excl, truth, users) == \
        evaluate_popularity(train_items, ds.num_items, full_excl, full_truth, users)
