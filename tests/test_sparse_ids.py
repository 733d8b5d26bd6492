"""Sparse ID tables (distributed/id_tables.py, ``train.id_tables=sparse``): the row-wise update against torch's
own optimizers, the tables leaving DeepSpeed's view, and 2-rank training whose checkpoint one process
evaluates to the same metrics.
"""
from __future__ import annotations

import pytest
import torch
from helpers import close, last_json, run_cli, train

from metammf_dist.config import ModelConfig
from metammf_dist.distributed.id_tables import SparseIdTables
from metammf_dist.model import build_model


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(fusion_dims=[4], item_id_dim=3, user_id_dim=7, meta_dim=2, meta_hidden=4, scorer="mf")
    return build_model(cfg, 20, 30, 5).double()


def _loss(model, users, items):
    return (model.user_emb(users)[:, :3] * model.item_emb(items)).sum().pow(2) / 100


def _step_both(ours, tables, ref, opt, users, items) -> bool:
    """One step of our row-wise update and of torch's optimizer on the same batch; our gradient was sparse?"""
    _loss(ours, users, items).backward()
    sparse = ours.user_emb.weight.grad.is_sparse
    tables.step()
    opt.zero_grad()
    _loss(ref, users, items).backward()
    opt.step()
    return sparse


def test_all_rows_touched_equals_dense_adam_with_weight_decay():
    ours, ref = _model(), _model()
    tables = SparseIdTables(ours, lr=0.01, weight_decay=0.1)
    opt = torch.optim.Adam([ref.user_emb.weight, ref.item_emb.weight], lr=0.01, weight_decay=0.1)
    users, items = torch.arange(20).repeat(3)[:30], torch.arange(30)  # every row of both tables, users twice
    for _ in range(4):
        assert _step_both(ours, tables, ref, opt, users, items)
    torch.testing.assert_close(ours.user_emb.weight, ref.user_emb.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.item_emb.weight, ref.item_emb.weight, rtol=0, atol=1e-12)


def test_partial_rows_equal_torch_sparse_adam_and_untouched_rows_stay():
    ours, ref = _model(), _model()
    before = ours.item_emb.weight.detach().clone()
    # SparseAdam adds eps to sqrt(v) before the bias correction (dense Adam, and we, after it): eps ~ 0 here
    tables = SparseIdTables(ours, lr=0.01, eps=1e-30)
    ref.user_emb.sparse = ref.item_emb.sparse = True
    opt = torch.optim.SparseAdam([ref.user_emb.weight, ref.item_emb.weight], lr=0.01, eps=1e-30)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        users, items = torch.randint(0, 20, (12,), generator=gen), torch.randint(0, 10, (12,), generator=gen)
        _step_both(ours, tables, ref, opt, users, items)
    torch.testing.assert_close(ours.item_emb.weight, ref.item_emb.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.user_emb.weight, ref.user_emb.weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.item_emb.weight[10:], before[10:], rtol=0, atol=0)  # never looked up


def test_tables_leave_the_module_tree_but_stay_reachable():
    model = _model()
    SparseIdTables(model, lr=0.01)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("user_emb", "item_emb")) for n in names) and names
    assert model.item_emb.weight.shape == (30, 3) and "item_emb.weight" not in model.state_dict()


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [0, 3])
def test_two_ranks_sparse_ids_evaluate_like_one_process(synth_ds, tmp_path, stage):
    run = tmp_path / "run"
    metrics = last_json(train(synth_ds, run, "train.id_tables=sparse", nproc=2, stage=stage))
    best = (run / "checkpoints" / "best.json").read_text()
    assert metrics["recall@20"] > 0 and "epoch" in best
    single = last_json(run_cli("evaluate", str(run)))  # module states + id_tables.pt, no engine
    assert close(single, metrics, 1e-6), (single, metrics)
