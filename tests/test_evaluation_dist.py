"""Distributed evaluation: 2 real processes (gloo, CPU) must return exactly the 1-process metrics.

Each rank builds the same inputs, evaluates its share of the users, and all-reduces; both ranks
save their result dicts, which the parent compares (exact equality) with a plain 1-process run.
Cases: random integer vectors (heavy ties) with several chunk sizes -- including one chunk only,
so rank 1 has no work -- an explicit process group, and popularity on the real TikTok test split.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gloo_ranks import init_rank, leave, run_ranks
from helpers import SHARED_DATA
import torch
import torch.distributed as dist

from metammf_dist.evaluation import build_csr, evaluate_full_ranking, evaluate_popularity, merge_csr
from metammf_dist.evaluation.ranking import evaluate_item_sharded

TIKTOK = SHARED_DATA / "tiktok" / "tiktok.inter"
WORLD_SIZE = 2
JOIN_TIMEOUT_S = 120
CHUNKS = (1, 7, 64, 10**6)  # 10**6: a single chunk, so rank 1 evaluates nobody


def random_inputs(num_users=150, num_items=90, dim=4, seed=0):
    """Integer-valued vectors (exact float32 scores, many ties), exclusion and truth CSRs."""
    gen = torch.Generator().manual_seed(seed)
    user_vecs = torch.randint(-2, 3, (num_users, dim), generator=gen).to(torch.float32)
    item_vecs = torch.randint(-2, 3, (num_items, dim), generator=gen).to(torch.float32)
    ex_pairs = torch.randint(0, num_users * num_items, (num_users * 10,), generator=gen)
    tr_pairs = torch.randint(0, num_users * num_items, (num_users * 2,), generator=gen)
    exclude = build_csr(ex_pairs // num_items, ex_pairs % num_items, num_users)
    truth = build_csr(tr_pairs // num_items, tr_pairs % num_items, num_users)
    return user_vecs, item_vecs, exclude, truth


def run_cases(group=None):
    """Every case's metrics dict, in a fixed order (same code for the 1-process reference)."""
    user_vecs, item_vecs, exclude, truth = random_inputs()
    users = torch.arange(user_vecs.shape[0])
    results = [
        evaluate_full_ranking(user_vecs, item_vecs, exclude, truth, users, ks=(5, 20), user_chunk=c, group=group)
        for c in CHUNKS
    ]
    df = pd.read_csv(TIKTOK, sep="\t")
    num_users, num_items = 9308, 6710
    csr = [build_csr(df.userID[df.x_label == s].to_numpy(), df.itemID[df.x_label == s].to_numpy(), num_users)
           for s in (0, 1, 2)]
    train_items = df.itemID[df.x_label == 0].to_numpy()
    test_users = np.unique(df.userID[df.x_label == 2].to_numpy())
    results.append(evaluate_popularity(train_items, num_items, merge_csr(csr[0], csr[1]), csr[2], test_users,
                                       user_chunk=1000, group=group))
    return results


def item_sharded_cases(rank: int = 0, world_size: int = 1):
    """``evaluate_item_sharded`` on the same inputs, this rank holding items [lo, hi) of the row-wise split."""
    from metammf_dist.distributed.sharded_ids import row_range

    user_vecs, item_vecs, exclude, truth = random_inputs()
    lo, hi = row_range(item_vecs.shape[0], rank, world_size)
    return [evaluate_item_sharded(lambda ids: user_vecs[ids], item_vecs[lo:hi], lo, item_vecs.shape[0], exclude,
                                  truth, torch.arange(user_vecs.shape[0]), ks=(5, 20), user_chunk=c)
            for c in CHUNKS]


def worker(rank, out_dir):
    torch.set_num_threads(1)
    init_rank(rank, WORLD_SIZE, out_dir)
    default_group = run_cases()
    group = dist.new_group(ranks=list(range(WORLD_SIZE)))
    explicit_group = run_cases(group=group)
    sharded = item_sharded_cases(rank, WORLD_SIZE)
    torch.save({"default": default_group, "explicit": explicit_group, "items": sharded},
               Path(out_dir) / f"rank{rank}.pt")
    leave()


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_two_ranks_match_one_rank_exactly(tmp_path):
    run_ranks(worker, str(tmp_path), WORLD_SIZE, JOIN_TIMEOUT_S)

    expected = run_cases()  # this process is not distributed: plain 1-rank evaluation
    assert expected[-1]["num_users"] == 6130 and round(expected[-1]["recall@20"], 4) == 0.0597
    for rank in range(WORLD_SIZE):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["default"] == expected, f"rank {rank} (default group) differs from 1 rank"
        assert saved["explicit"] == expected, f"rank {rank} (explicit group) differs from 1 rank"
        # items cut across the ranks, per-user top-K merged: the same ranked lists, so the same metrics
        assert saved["items"] == expected[:len(CHUNKS)], f"rank {rank} (item-sharded) differs from 1 rank"
    assert item_sharded_cases() == expected[:len(CHUNKS)]  # one rank holding every item
