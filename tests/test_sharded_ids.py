"""Row-sharded ID tables on TorchRec (``train.id_tables=sharded``, distributed/sharded_ids.py): real gloo ranks,
real TorchRec and FBGEMM (the latest lane; the DGL lane, which cannot run TorchRec, refuses in one line).

* sharded tables train exactly like the replicated sparse tables with the same optimizer (row-wise Adagrad):
  per-step losses within 1e-6 over 24 steps and the same test metrics, 2 ranks;
* a checkpoint written by 4 ranks resumes on 2 and evaluates in 1 process to the same metrics (each rank's
  rows are saved with their range and re-cut on load), and so does a sampled evaluation (``eval.max_users``);
* the fusion cache is cut like the item table, and the cached runs agree the same way;
* so do runs under a cosine learning-rate schedule (the fused optimizer takes each step's rate);
* a run stopped mid-epoch and resumed equals a straight run (2 ranks, ZeRO-3 for the dense parameters);
* ``model.id_init=blocks``: any row range is drawn alone, equal to the same rows of the whole table.
"""
from __future__ import annotations

import csv
import importlib.util

import pytest
import torch

from metammf_dist.data.synth import SynthSpec, generate

from helpers import close, last_json, run_cli, straight_and_resumed, train

HAVE_TORCHREC = importlib.util.find_spec("torchrec") is not None and importlib.util.find_spec("fbgemm_gpu") is not None
needs_torchrec = pytest.mark.skipif(not HAVE_TORCHREC, reason="TorchRec runs in the latest lane only")
SHARDED = ["model.id_init=blocks", "train.id_optimizer=rowwise_adagrad", "train.id_lr=0.05", "model.item_knn=0"]


def _losses(run) -> list:
    return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(open(run / "metrics.csv"))
            if r["split"] == "train" and r["metric"] == "lr"]


@needs_torchrec
@pytest.mark.multiproc
@pytest.mark.parametrize("cache", [[], ["train.fusion_cache_refresh=5"], ["train.lr_schedule=cosine"]],
                         ids=["no-cache", "fusion-cache", "cosine-lr"])
def test_sharded_tables_train_like_replicated_tables_with_the_same_optimizer(synth_ds, tmp_path, cache):
    """With the fusion cache the sharded run also shards the cache (each rank refreshes its own items; lookups
    and pushes go to the owners) and the replicated run keeps it whole on every rank."""
    runs = {}
    for mode in ("sharded", "sparse"):
        runs[mode] = last_json(train(synth_ds, tmp_path / mode, *SHARDED, *cache, f"train.id_tables={mode}",
                                     "train.log_every=1", nproc=2, epochs=3))
    sharded, sparse = _losses(tmp_path / "sharded"), _losses(tmp_path / "sparse")
    assert len(sharded) == len(sparse) >= 20
    assert [s for s, _ in sharded] == [s for s, _ in sparse]
    assert max(abs(a - b) for (_, a), (_, b) in zip(sharded, sparse)) <= 1e-6
    assert close(runs["sharded"], runs["sparse"], 1e-6), runs
    if cache == ["train.fusion_cache_refresh=5"]:
        tag = tmp_path / "sharded" / "checkpoints" / "epoch0003-step0000000"
        assert sorted(p.name for p in tag.glob("fusion_cache.*")) == [f"fusion_cache.rank0000{r}-of-00002.pt"
                                                                      for r in (0, 1)]
    elif not cache:  # and the tables did move: the same run with a tenth of the ID learning rate ends elsewhere
        slow = last_json(train(synth_ds, tmp_path / "slow", *SHARDED, "train.id_tables=sharded", "train.id_lr=0.005",
                               nproc=2, epochs=3))
        assert not close(slow, runs["sharded"], 1e-6)


@needs_torchrec
@pytest.mark.multiproc
def test_a_checkpoint_from_four_ranks_resumes_on_two_and_evaluates_in_one(synth_ds, tmp_path):
    run = tmp_path / "run"
    four = last_json(train(synth_ds, run, *SHARDED, "train.id_tables=sharded", nproc=4, epochs=1))
    tag = next(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    shards = sorted(p.name for p in tag.glob("id_shard.*"))
    assert shards == [f"id_shard.rank{r:05d}-of-00004.pt" for r in range(4)]
    # resumed on 2 ranks with the evaluation's GCN layers cut into chunks of 16 users and 16 items (10 and 7
    # chunks per rank; the 4-rank run: one): the same metrics exactly
    two = last_json(train(synth_ds, run, *SHARDED, "train.id_tables=sharded", "eval.item_chunk=16", "--resume",
                          nproc=2, epochs=1))
    one = last_json(run_cli("evaluate", str(run)))
    assert close(two, four, 0.0) and close(one, four, 1e-6), (four, two, one)
    # a sampled evaluation (eval.max_users; the ranked users' final rows alone are made, the items' layer-1
    # table never exists): the metrics of one process ranking the same users over the whole catalog
    sampled = last_json(train(synth_ds, run, *SHARDED, "train.id_tables=sharded", "eval.item_chunk=16",
                              "eval.max_users=40", "--resume", nproc=2, epochs=1))
    one_sampled = last_json(run_cli("evaluate", str(run)))
    assert close(sampled, one_sampled, 1e-6) and not close(sampled, one, 1e-3), (sampled, one_sampled, one)
    # resumed on another catalog (same feature widths, 50 more items): one line naming the checkpoint and a tensor
    other = tmp_path / "other"
    generate(SynthSpec(num_users=300, num_items=250, num_interactions=5000, modalities={"image": 16, "text": 8},
                       seed=3), str(other))
    proc = train(other, run, *SHARDED, "train.id_tables=sharded", "--resume", nproc=2, epochs=1, check=False)
    # every rank exits 2 with one line (torchrun then prints its own report and exits 1); no traceback of ours
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr and "metammf_dist/" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("metammf-dist train: error:"))
    assert f"checkpoint {run / 'checkpoints'}" in line and "does not match this run's dataset" in line, line
    assert "torch.Size([200])" in line and "torch.Size([250])" in line, line


@needs_torchrec
@pytest.mark.multiproc
def test_sharded_training_resumes_mid_epoch_like_a_straight_run(synth_ds, tmp_path):
    """With the sharded fusion cache (K = 3): the ID rows, their optimizer state and each rank's cache rows are
    restored."""
    straight, resumed, straight_run = straight_and_resumed(synth_ds, tmp_path, *SHARDED, "train.id_tables=sharded",
                                                           "train.fusion_cache_refresh=3")
    tag = straight_run / "checkpoints" / "epoch0001-step0000000"
    assert (tag / "id_shard.rank00001-of-00002.pt").exists() and (tag / "fusion_cache.rank00001-of-00002.pt").exists()
    assert close(straight, resumed, 1e-6), (straight, resumed)


@pytest.mark.skipif(HAVE_TORCHREC, reason="the refusal is for environments without TorchRec (the DGL lane)")
def test_without_torchrec_sharded_tables_are_refused_in_one_line(synth_ds, tmp_path):
    proc = train(synth_ds, tmp_path / "run", *SHARDED, "train.id_tables=sharded", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "config key 'train.id_tables'" in line and "latest lane" in line and "torchrec" in line, line
    assert not (tmp_path / "run").exists()


def test_block_init_draws_any_range_alone():
    from metammf_dist.model.recommender import ID_INIT_BLOCK, init_id_rows

    rows = 2 * ID_INIT_BLOCK + 17
    whole = init_id_rows(0, rows, 4, seed=11, table=1, std=0.1)
    for lo, hi in ((0, 5), (ID_INIT_BLOCK - 3, ID_INIT_BLOCK + 4), (rows - 9, rows), (100, 2 * ID_INIT_BLOCK)):
        assert torch.equal(init_id_rows(lo, hi, 4, seed=11, table=1, std=0.1), whole[lo:hi])
    assert abs(float(whole.std()) - 0.1) < 0.005
    assert not torch.equal(init_id_rows(0, 5, 4, seed=11, table=0, std=0.1), whole[:5])  # tables differ
    assert not torch.equal(init_id_rows(0, 5, 4, seed=12, table=1, std=0.1), whole[:5])  # seeds differ


def test_block_init_leaves_the_other_parameters_alone():
    """With ``blocks`` the ID tables draw nothing from torch's generator: the other parameters come out the same
    whether the tables are materialised or left on the meta device (as the sharded placement builds them)."""
    from metammf_dist.config import ModelConfig
    from metammf_dist.model import build_model

    cfg = ModelConfig(fusion_dims=[8, 4], item_id_dim=3, user_id_dim=7, meta_hidden=6, id_init="blocks")
    torch.manual_seed(5)
    real = build_model(cfg, 40, 30, 10)
    torch.manual_seed(5)
    meta = build_model(cfg, 40, 30, 10, id_device="meta")
    assert meta.item_emb.weight.is_meta and not real.item_emb.weight.is_meta
    for (name, a), (_, b) in zip(real.named_parameters(), meta.named_parameters()):
        if "_emb" not in name:
            assert torch.equal(a, b), name
    assert torch.equal(real.item_emb.weight, real.init_id_rows("item_emb", 0, 30))


def test_sharded_config_rules():
    from metammf_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.id_init"):
        load_config("configs/tiktok.yaml", ["train.id_tables=sharded"])
    with pytest.raises(ConfigError, match="train.gcn_history"):
        load_config("configs/tiktok.yaml", ["train.id_tables=sharded", "model.id_init=blocks", "model.gcn_type=sage",
                                            "train.fusion_cache_refresh=5", "train.gcn_history=true"])
    with pytest.raises(ConfigError, match="model.item_knn"):  # the TikTok config's item kNN graph
        load_config("configs/tiktok.yaml", ["train.id_tables=sharded", "model.id_init=blocks"])
    assert load_config("configs/tiktok.yaml", ["train.id_tables=sharded", "model.id_init=blocks", "model.item_knn=0"])


def test_rowwise_adagrad_matches_its_formula():
    """The replicated tables' row-wise Adagrad (FBGEMM's exact row-wise Adagrad, which the sharded tables run):
    ``G_r += mean(g_r^2)``, ``w_r -= lr g_r / (sqrt(G_r) + eps)``, written out by hand for two steps."""
    from metammf_dist.distributed.id_tables import EPS, rowwise_adagrad

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    expected, acc = w.clone(), torch.zeros(6, dtype=torch.float64)
    momentum = torch.zeros(6, dtype=torch.float64)
    for rows in (torch.tensor([1, 4]), torch.tensor([4, 5])):
        g = torch.randn(2, 3, generator=gen, dtype=torch.float64)
        rowwise_adagrad(w, momentum, rows, g, lr=0.1)
        for k, r in enumerate(rows.tolist()):
            acc[r] += float((g[k] ** 2).mean())
            expected[r] -= 0.1 * g[k] / (acc[r].sqrt() + EPS)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(momentum, acc, rtol=0, atol=1e-12)


@needs_torchrec
@pytest.mark.multiproc
def test_bench_shard_reports_its_ratios(tmp_path):
    """``bench shard`` at a tiny size, 1 and 2 ranks: the figures it is run for, checked against what they must
    be (a half share of the catalog state per rank at 2 ranks, the same losses in both modes)."""
    import json
    import subprocess

    from helpers import PY, REPO, run_env

    cmd = [PY, "-m", "metammf_dist", "bench", "shard", "--users", "3000", "--items", "2000", "--interactions",
           "30000", "--feat-dim", "16", "--steps", "3", "--world-sizes", "1,2", "--eval-users", "200",
           "--workdir", str(tmp_path), "model.fusion_dims=[16,8]", "model.item_id_dim=8", "model.user_id_dim=16",
           "train.batch_size=1024"]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["max_loss_diff"] <= 1e-6
    # the sharded tables and cache: ceil(rows / 2) of each per rank; replicated: everything on every rank
    assert out["replicated_state_ratio_2v1"] == 1.0 and 0.49 < out["state_ratio_2v1"] <= 0.51
    assert out["step_ratio_2"] > 0 and len(out["points"]) == 4
