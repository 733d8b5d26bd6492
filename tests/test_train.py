"""Training end to end, as users run it: real processes, real DeepSpeed (ZeRO 0 and 3), real torchrun.

Each run trains on a small synthetic catalog for 1-2 short epochs; the checks are exact equalities
(evaluation across process counts, resume vs straight run) and clear errors for bad input.
"""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from helpers import SMALL, close, last_json, run_cli, straight_and_resumed, train

from metammf_dist.train.checkpoint import tag_for


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [0, 3])
def test_two_ranks_train_and_evaluate_like_one_process(synth_ds, tmp_path, stage):
    run = tmp_path / f"run{stage}"
    metrics = last_json(train(synth_ds, run, nproc=2, stage=stage))
    assert metrics["recall@20"] > 0 and metrics["num_users"] > 0
    for name in ("config.yaml", "ds_config.json", "git.txt", "metrics.csv", "final_metrics.json",
                 "checkpoints/latest.json", "checkpoints/best.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage
    assert list((run / "tb").glob("events.*"))
    # the best checkpoint, evaluated by ONE process with no engine, gives the 2-rank test metrics
    single = last_json(run_cli("evaluate", str(run)))
    assert close(single, metrics, 1e-6), (single, metrics)


def test_resume_continues_exactly(synth_ds, tmp_path):
    straight = last_json(train(synth_ds, tmp_path / "straight", epochs=2))
    train(synth_ds, tmp_path / "resumed", epochs=1)
    resumed = last_json(train(synth_ds, tmp_path / "resumed", "--resume", epochs=2))
    assert close(straight, resumed, 1e-6), (straight, resumed)
    assert resumed["best_epoch"] == straight["best_epoch"]


def test_cosine_rate_is_logged_and_resumed(synth_ds, tmp_path):
    """``train.lr_schedule=cosine``: the logged rate falls from train.lr to lr * lr_min_ratio over the run, and a
    run resumed from its epoch-1 checkpoint (as if it had died there) ends like the straight run."""
    lr = ["train.lr_schedule=cosine", "train.lr_min_ratio=0.1", "train.log_every=1"]
    straight = last_json(train(synth_ds, tmp_path / "straight", *lr, epochs=2))
    rates = [float(r["value"]) for r in csv.DictReader(open(tmp_path / "straight" / "metrics.csv"))
             if r["split"] == "train" and r["metric"] == "lr"]
    assert len(rates) > 2 and rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"tag": tag_for(1, 0)}))
    (run / "checkpoints" / "best.json").unlink()
    resumed = last_json(train(synth_ds, run, "--resume", *lr, epochs=2))
    assert close(straight, resumed, 1e-6), (straight, resumed)
    rest = [float(r["value"]) for r in csv.DictReader(open(run / "metrics.csv"))
            if r["split"] == "train" and r["metric"] == "lr"]
    assert rest == pytest.approx(rates[-len(rest):]) and len(rest) < len(rates)


def test_summed_selection_metric_tracks_the_sum(synth_ds, tmp_path):
    """``eval.metric=recall@20+ndcg@20``: the best checkpoint records the sum of the valid Recall@20 and NDCG@20
    logged in metrics.csv for its epoch, that epoch has the largest sum, and it is the checkpoint tested."""
    run = tmp_path / "run"
    metrics = last_json(train(synth_ds, run, "eval.metric=recall@20+ndcg@20", epochs=3))
    sums = {}
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row["split"] == "valid" and row["metric"] in ("recall@20", "ndcg@20"):
                sums[int(row["epoch"])] = sums.get(int(row["epoch"]), 0.0) + float(row["value"])
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    epoch = best["metrics"]["epoch"]
    assert sorted(sums) == [1, 2, 3] and sums[epoch] == max(sums.values())
    assert best["metrics"]["recall@20+ndcg@20"] == pytest.approx(sums[epoch], abs=1e-12)
    assert metrics["best_epoch"] == epoch and metrics["checkpoint"] == best["tag"] == tag_for(epoch, 0)


@pytest.mark.parametrize("option,without,extra", [
    ("model.item_knn=5", "model.item_knn=0", ["train.id_tables=dense", "model.item_knn_at=output"]),
    ("model.item_knn=5", "model.item_knn=0", ["train.id_tables=sparse", "model.item_knn_at=input"]),
    ("model.gcn_type=light", "model.gcn_type=sage", ["model.item_knn=0"]),
])
def test_model_options_train_and_evaluate_from_their_checkpoint(synth_ds, tmp_path, option, without, extra):
    """``model.item_knn`` (the kNN index) and ``model.gcn_type=light`` (the degree buffers): built from the data,
    trained with, saved, and restored by ``evaluate`` to the same metrics; the option changes the model."""
    run = tmp_path / "run"
    metrics = last_json(train(synth_ds, run, *extra, option, epochs=1))
    assert metrics["recall@20"] > 0
    assert close(last_json(run_cli("evaluate", str(run))), metrics, 1e-6)
    plain = last_json(train(synth_ds, tmp_path / "plain", *extra, without, epochs=1))
    assert not close(plain, metrics, 1e-6)


@pytest.mark.multiproc
def test_resume_mid_epoch_two_ranks_zero3(synth_ds, tmp_path):
    """Checkpoints every 2 steps; a second run resumed from a mid-epoch checkpoint ends like a straight run."""
    straight, resumed, _ = straight_and_resumed(synth_ds, tmp_path)
    assert close(straight, resumed, 1e-6), (straight, resumed)


def test_evaluate_rejects_a_mismatched_dataset(synth_ds, tmp_path):
    from metammf_dist.data.synth import SynthSpec, generate

    train(synth_ds, tmp_path / "run", epochs=1)
    other = tmp_path / "other"
    generate(SynthSpec(num_users=300, num_items=150, num_interactions=3000, modalities={"image": 16, "text": 8},
                       seed=4), str(other))
    proc = run_cli("evaluate", str(tmp_path / "run"), "--data", str(other), check=False)
    assert proc.returncode == 2
    assert "does not match checkpoint" in proc.stderr and "item_emb.weight" in proc.stderr, proc.stderr[-2000:]


def test_unknown_config_key_is_named(synth_ds, tmp_path):
    proc = train(synth_ds, tmp_path / "run", "train.learning_rate=0.1", check=False)
    assert proc.returncode == 2
    assert "unknown config key 'train.learning_rate'" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_non_finite_loss_stops_and_names_the_step(synth_ds, tmp_path):
    run = tmp_path / "run"
    proc = train(synth_ds, run, "train.lr=1e20", "train.checkpoint_every_steps=1", epochs=3, check=False)
    assert proc.returncode != 0
    assert "non-finite loss at epoch" in proc.stderr and "last good checkpoint" in proc.stderr, proc.stderr[-3000:]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["tag"]
    assert (run / "checkpoints" / latest / "COMPLETE.json").exists()


def test_full_graph_sampler_and_export(synth_ds, tmp_path):
    """`--sampler full` (every node recomputed each step) trains; export writes vectors and top-K lists."""
    import numpy as np
    import pyarrow.parquet as pq

    from metammf_dist.data.dataset import Dataset

    run = tmp_path / "run"
    metrics = last_json(run_cli("train", "configs/tiktok.yaml", "--sampler", "full", f"data.path={synth_ds}",
                                f"run_dir={run}", "train.epochs=1", *SMALL))
    assert metrics["recall@20"] > 0
    run_cli("export", str(run), "--k", "5")
    ds = Dataset.open(str(synth_ds))
    users = pq.read_table(run / "export" / "users.parquet")
    items = pq.read_table(run / "export" / "items.parquet")
    top = pq.read_table(run / "export" / "topk.parquet").to_pandas()
    assert users.num_rows == ds.num_users and items.num_rows == ds.num_items
    assert len(top) == ds.num_users * 5
    seen = set()
    for split in ("train", "valid"):
        u, i = ds.interactions(split)
        seen |= set(zip(u.tolist(), i.tolist()))
    assert not any((u, i) in seen for u, i in zip(top.user.tolist(), top.item.tolist()))
    # scores are the dot products of the exported vectors, in descending order per user
    uv = np.stack(users.column("vector").to_numpy(zero_copy_only=False))
    iv = np.stack(items.column("vector").to_numpy(zero_copy_only=False))
    row = top[top.user == 0]
    assert np.allclose(row.score.to_numpy(), uv[0] @ iv[row.item.to_numpy()].T, atol=1e-4)
    assert (np.diff(row.score.to_numpy()) <= 1e-6).all()
