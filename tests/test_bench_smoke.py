"""Smoke runs of ``bench train`` and ``bench eval`` at tiny sizes: they run end to end and report their keys.

Not timed tests: the figures themselves come from the full benchmark commands (see README).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import REPO


def test_bench_train_quick_reports_its_json(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "metammf_dist", "bench", "train", "--quick", "--shapes", "kwai", "--steps", "1",
           "--warmup", "1", "--threads", "1", "--zero-stages", "0,3", "--zero-steps", "2", "--zero-log-every", "1",
           "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("kwai_epoch_speedup", "kwai_peak_mem_ratio", "kwai_sampled_item_fraction", "kwai_neighbor_s_per_step",
                "kwai_full_s_per_step", "kwai_neighbor_step_mem_mib", "kwai_full_items_per_step",
                "zero0_examples_per_s", "zero3_examples_per_s"):
        assert key in out, key
    assert out["kwai_full_items_per_step"] == 16_500  # the full-graph mode fuses every item
    assert 0 < out["kwai_sampled_item_fraction"] < 1
    assert out["kwai_full_step_mem_mib"] > out["kwai_neighbor_step_mem_mib"] > 0
    assert out["zero0_examples_per_s"] > 0 and out["zero3_examples_per_s"] > 0


def test_bench_eval_tiny_reports_its_json():
    from metammf_dist.bench.evaluation import run_benchmark

    out = run_benchmark(users=300, items=5_000, dim=16, user_chunk=128, rounds=1, threads=1)
    for key in ("eval_vs_bare", "ours_users_per_s", "bare_users_per_s", "evaluated_users"):
        assert key in out
    assert out["evaluated_users"] == 300 and out["eval_vs_bare"] > 0


def _run_fullstep(tmp_path, synth: dict, *args):
    """``bench fullstep`` on a tiny synthetic catalog (``synth``: SynthSpec fields), the tiny model, 1 thread."""
    from metammf_dist.data.synth import SynthSpec, generate

    generate(SynthSpec(modalities={"image": 8, "text": 8}, **synth), str(tmp_path / "ds"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "metammf_dist", "bench", "fullstep", "configs/scale/base.yaml",
           f"data.path={tmp_path / 'ds'}", "model.fusion_dims=[16,8]", "model.item_id_dim=8", "model.user_id_dim=16",
           *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_fullstep_tiny_reports_its_json(tmp_path):
    import math

    from metammf_dist.data.dataset import Dataset

    _, out = _run_fullstep(tmp_path, dict(num_users=500, num_items=800, num_interactions=6000, seed=2),
                           "train.batch_size=256", "--cached-steps", "2", "--chunk", "300")
    train_pairs = Dataset.open(str(tmp_path / "ds")).num_interactions("train")
    # an epoch of the generated catalog at batch 256, and the cache refreshed once per epoch by default
    assert out["num_items"] == 800 and out["steps_per_epoch"] == math.ceil(train_pairs / 256)
    assert out["refresh_every"] == out["steps_per_epoch"]
    assert out["full_fusion_s"] > 0 and out["full_gcn_s"] > 0 and out["cached_step_s"] > 0
