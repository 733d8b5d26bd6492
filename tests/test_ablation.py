"""The ablation runner and its statistics: paired Student-t intervals against a hand computation, the probe's
R² on cases with a known answer, and a 2-seed x 2-variant run on a tiny catalog (bit-identical rerun with
OMP_NUM_THREADS=1, tables regenerated from the CSV alone)."""
from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from helpers import GRAPH_BACKEND, run_cli
from metammf_dist.ablation.probe import cross_fitted_r2
from metammf_dist.ablation.stats import incomplete_beta, paired_difference, t_quantile


def test_t_quantiles_match_the_tables():
    # two-sided 95 % critical values of Student's t (any statistics table)
    for df, value in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (7, 2.3646), (9, 2.2622), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-5)
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7))
    assert incomplete_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)  # I_x(1, 1) = x
    assert incomplete_beta(2.0, 1.0, 0.5) == pytest.approx(0.25)  # I_x(a, 1) = x^a


def test_t_quantiles_match_scipy():  # the DGL lane has scipy
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 4, 7, 15, 60):
        assert t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)


def test_paired_difference_by_hand():
    variant = {1: 0.100, 2: 0.090, 3: 0.120, 4: 0.095, 5: 0.300}
    reference = {1: 0.090, 2: 0.085, 3: 0.100, 4: 0.100}  # seed 5 has no reference: left out
    diff = paired_difference(variant, reference)
    d = [0.010, 0.005, 0.020, -0.005]
    mean = sum(d) / 4  # 0.0075
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)  # 0.0104083
    half = 3.182446305284 * sd / 2  # t_{0.975, 3} * sd / sqrt(4)
    assert diff.n == 4 and diff.mean == pytest.approx(mean) and diff.sd == pytest.approx(sd)
    assert (diff.low, diff.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert not diff.excludes_zero and paired_difference({1: 1.0}, {2: 1.0}) is None
    assert paired_difference({1: 0.3, 2: 0.31, 3: 0.32}, {1: 0.1, 2: 0.1, 3: 0.1}).excludes_zero


def test_probe_r2_known_answers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 5))
    exact = 2 * x[:, 0] - x[:, 3] + 0.5
    assert cross_fitted_r2(x, exact) == pytest.approx(1.0, abs=1e-12)
    # y = x0 + noise of the same variance: half the variance is explained
    half = x[:, 0] + rng.standard_normal(4000)
    assert cross_fitted_r2(x, half) == pytest.approx(0.5, abs=0.03)
    assert abs(cross_fitted_r2(x, rng.standard_normal(4000))) < 0.01  # unrelated: ~0 (slightly below, cross-fitted)
    two = np.stack([x[:, 1], x[:, 2] ** 2], 1)  # multi-output: the linear column is explained, the square is not
    assert cross_fitted_r2(x, two) == pytest.approx(1 / 3, abs=0.05)  # var(x1) = 1, var(x2²) = 2


SMALL_RUN = [f"train.graph_backend={GRAPH_BACKEND}", "model.scorer=mf", "model.fusion_dims=[16,8]",
             "model.item_id_dim=8", "model.user_id_dim=16", "model.meta_hidden=16", "train.batch_size=512",
             "model.item_knn=3", "data.cache_mb=16", "train.epochs=2"]


def _rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(fh)]


def test_ablate_tiny_catalog_rerun_is_bit_identical(tmp_path):
    data = tmp_path / "planted"
    run_cli("synth", str(data), "--users", "300", "--items", "200", "--interactions", "3000", "--modality", "image:16",
            "--modality", "text:16", "--seed", "3", "--cold-items", "0.2", "--planted-fusion", "--clusters", "6")
    out = tmp_path / "ab"
    args = ["ablate", "configs/tiktok.yaml", "--out", str(out), "--seeds", "2", "--variants", "meta,static",
            f"data.path={data}", *SMALL_RUN]
    first = run_cli(*args, timeout=600)
    rows = _rows(out / "results.csv")
    assert [(r["variant"], r["seed"]) for r in rows] == [("meta", "1"), ("meta", "2"), ("static", "1"), ("static", "2")]
    for key in ("recall@20", "ndcg@20", "warm_recall@20", "cold_recall@20", "cold_all_recall@20"):
        assert all(r[key] for r in rows), key
    assert rows[0]["probe_gate_r2"] and not rows[2].get("probe_gate_r2")  # static has no meta-learner
    assert sorted(p.name for p in (out / "runs" / "meta-s1" / "checkpoints").iterdir() if p.is_dir()) == \
        [json.loads((out / "runs" / "meta-s1" / "checkpoints" / "best.json").read_text())["tag"]]
    assert "| recall@20 | meta | 2 |" in first.stdout
    # the table from the CSV alone
    report = run_cli("ablate", "--report", str(out / "results.csv"))
    assert report.stdout == (out / "results.md").read_text()
    # a finished (variant, seed) is skipped; removed ones are trained again, to the same bits (one thread each),
    # also two at a time
    shutil.rmtree(out / "runs" / "meta-s2")
    shutil.rmtree(out / "runs" / "static-s1")
    again = run_cli(*args, "--jobs", "2", timeout=600)
    assert "meta seed 2" in again.stdout and "static seed 1" in again.stdout
    assert "meta seed 1" not in again.stdout and "static seed 2" not in again.stdout
    assert _rows(out / "results.csv") == rows


def test_wide_table_quotes_means_and_paired_intervals():
    from metammf_dist.ablation.report import wide

    rows = [{"variant": v, "seed": s, "recall@20": base + 0.01 * s + (0.002 * s if v == "meta" else 0)}
            for v, base in (("meta", 0.11), ("static", 0.10)) for s in (1, 2, 3)]
    table = wide(rows, "static", ["recall@20"]).splitlines()
    assert table[0] == "| variant | seeds | recall@20 | Δ recall@20 vs static |"
    diff = paired_difference({1: 0.122, 2: 0.134, 3: 0.146}, {1: 0.11, 2: 0.12, 3: 0.13})
    assert table[2] == (f"| meta | 3 | 0.1340 | +{diff.mean:.4f} [+{diff.low:.4f}, +{diff.high:.4f}] * |")
    assert table[3] == "| static | 3 | 0.1200 | – |"


def test_static_wide_matches_the_meta_parameter_count():
    from dataclasses import replace

    from metammf_dist.ablation.runner import wide_static_dims
    from metammf_dist.config import load_config
    from metammf_dist.model.summary import count_parameters

    model = load_config("configs/tiktok.yaml").model  # fusion 256 -> 256 -> 32
    dims = wide_static_dims(model, 256)
    fusion = lambda cfg: sum(count_parameters(cfg, 1, 1, 256)[k] for k in ("fusion_layers", "meta_learner"))  # noqa: E731
    assert dims[-1] == 32 and dims[0] > 256
    assert abs(fusion(replace(model, fusion="static", fusion_dims=dims)) / fusion(replace(model, fusion="meta")) - 1) < 0.01
