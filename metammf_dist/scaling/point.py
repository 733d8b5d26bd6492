"""One sweep point: the synthetic catalog, a real ``train`` run (one process or torchrun), its figures.

The run is ``metammf-dist train BASE overrides... train.epochs=1 train.max_steps_per_epoch=STEPS``: a
partial epoch, then the trainer's own valid and test evaluations (``eval.max_users`` caps the ranked users
on big catalogs).  The figures come from the run folder the trainer writes:

* ``ms_per_1k_examples``: from ``metrics.csv``'s examples/s windows (every ``log_every`` steps, all ranks'
  examples), the first window dropped (warm-up, first cache refresh), plus the fusion-cache refresh
  amortised over its period (refresh seconds / (K steps x global batch));
* ``peak_rss_mb``: the largest rank's peak RSS (``usage.json``, VmHWM of each rank);
* ``eval_seconds``: the test evaluation (item vectors for the whole catalog + full ranking of the users);
* ``input_items_per_step`` / ``fused_items_per_step``: unique items a step reaches / fuses with gradient;
* ``plan_peak_mb``: ``metammf-dist plan``'s prediction for the same config, catalog and ranks, with the
  runtime baseline (RSS after the imports) measured once per sweep (``plan --measure-baseline``).
"""
from __future__ import annotations

import csv
import functools
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, List

from metammf_dist.distributed.process_group import child_env, train_command
from metammf_dist.scaling.sweep import Catalog, Series, Sweep

REPO = Path(__file__).resolve().parents[2]


def ensure_catalog(cat: Catalog, data_dir: str) -> str:
    """The synthetic catalog's folder under ``data_dir`` (generated once, then reused)."""
    from metammf_dist.data.synth import SynthSpec, ensure_generated

    return ensure_generated(SynthSpec(num_users=cat.users, num_items=cat.items, num_interactions=cat.interactions,
                                      modalities=dict(cat.modalities), seed=cat.seed),
                            Path(data_dir) / cat.folder_name())


def steps_per_epoch(data_path: str, batch_size: int) -> int:
    """One process's steps per epoch on the dataset at ``data_path``."""
    from metammf_dist.data.dataset import Dataset
    from metammf_dist.sampler.partition import epoch_steps

    return epoch_steps(Dataset.open(data_path).num_interactions("train"), batch_size)


def series_config(sweep: Sweep, series: Series):
    """The series' config on the sweep's base, validated (a cached series' refresh interval, set per catalog at
    run time, is 1 here)."""
    from metammf_dist.config import load_config

    cached = [] if series.fusion_cache == "off" else ["train.fusion_cache_refresh=1"]  # (validation only)
    return load_config(sweep.base_config, list(sweep.overrides) + list(series.overrides) + cached)


def point_overrides(sweep: Sweep, series: Series, data_path: str, run_dir: str) -> List[str]:
    base = series_config(sweep, series)
    refresh = 0
    if series.fusion_cache == "epoch":
        refresh = steps_per_epoch(data_path, base.train.batch_size)
    elif series.fusion_cache != "off":
        refresh = int(series.fusion_cache)
    stage = f"zero{series.zero_stage}{'_offload' if series.offload else ''}.json"
    return [*sweep.overrides, *series.overrides, f"data.path={data_path}", f"run_dir={run_dir}", "train.epochs=1",
            f"train.max_steps_per_epoch={sweep.steps}", f"train.log_every={sweep.log_every}",
            f"train.fusion_cache_refresh={refresh}", f"train.ds_config={REPO / 'configs' / 'ds' / stage}"]


def run_point(sweep: Sweep, cat: Catalog, series: Series, log=print) -> Dict:
    data_path = ensure_catalog(cat, sweep.data_dir)
    run_dir = Path(sweep.out) / "runs" / f"{series.name}-i{cat.items}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = point_overrides(sweep, series, data_path, str(run_dir))
    cmd = train_command([sweep.base_config, *overrides], series.world_size)
    env = child_env(threads=sweep.threads, TQDM_DISABLE="1")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(str(run_dir) + ".log", "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = Path(str(run_dir) + ".log").read_text()[-3000:]
        raise RuntimeError(f"sweep point {series.name} @ {cat.items:,} items failed ({proc.returncode}); log "
                           f"{run_dir}.log:\n{tail}")
    row = collect(run_dir, cat, series, wall)
    row.update(plan_point(sweep, series, overrides))
    row["plan_error"] = row["plan_peak_mb"] / row["peak_rss_mb"] - 1.0
    log(f"  {series.name:24s} {cat.items:>10,} items: {row['ms_per_1k_examples']:8.1f} ms/1k examples, "
        f"peak RSS {row['peak_rss_mb']:8,.0f} MiB (plan {row['plan_error']:+.1%}), eval {row['eval_seconds']:6.1f} s, "
        f"R@20 {row['recall@20']:.4f}, {wall:.0f} s wall")
    return row


def collect(run_dir: Path, cat: Catalog, series: Series, wall: float) -> Dict:
    usage = json.loads((run_dir / "usage.json").read_text())
    final = json.loads((run_dir / "final_metrics.json").read_text())
    with (run_dir / "metrics.csv").open() as fh:
        rates = [float(r["examples_per_s"]) for r in csv.DictReader(fh)
                 if r["split"] == "train" and r.get("examples_per_s")]
    kept = rates[1:] or rates
    ms = 1e6 / statistics.mean(kept) if kept else float("nan")  # ms per 1,000 examples
    cfg_batch = None
    try:
        import yaml

        cfg_batch = int(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["batch_size"])
    except (OSError, KeyError, TypeError, ValueError):
        pass
    refresh_ms = 0.0
    if usage.get("refreshes") and usage.get("refresh_every") and cfg_batch:
        per_refresh = usage["refresh_seconds"] / usage["refreshes"]
        refresh_ms = 1e6 * per_refresh / (usage["refresh_every"] * cfg_batch)
    steps = max(int(usage["train_steps"]), 1)
    return {
        "series": series.name, "items": cat.items, "users": cat.users, "interactions": cat.interactions,
        "feat_dim": cat.feat_dim, "world_size": series.world_size, "zero_stage": series.zero_stage,
        "fusion_cache": str(series.fusion_cache), "refresh_every": usage.get("refresh_every", 0),
        "ms_per_1k_examples": ms + refresh_ms, "ms_per_1k_examples_steps_only": ms,
        "refresh_ms_per_1k_examples": refresh_ms, "refresh_seconds": usage.get("refresh_seconds", 0.0),
        "peak_rss_mb": max(usage["peak_rss_bytes_per_rank"]) / 2**20,
        "eval_seconds": usage["test_eval_seconds"], "eval_users": int(final.get("num_users", 0)),
        "input_items_per_step": usage["input_items"] / steps, "fused_items_per_step": usage["fused_items"] / steps,
        "train_steps": steps, "recall@20": final.get("recall@20", float("nan")),
        "ndcg@20": final.get("ndcg@20", float("nan")), "wall_seconds": wall, "run_dir": str(run_dir),
    }


def plan_point(sweep: Sweep, series: Series, overrides: List[str]) -> Dict:
    """``plan``'s peak per rank for the point (same config and catalog), next to the measured one."""
    return _plan_with_baseline(sweep, series, overrides, runtime_baseline())


@functools.lru_cache(maxsize=1)
def runtime_baseline() -> int:
    """``plan --measure-baseline``'s figure, measured once per sweep (the imports' RSS on this machine)."""
    from metammf_dist.planner import memory as mem

    return mem.measure_runtime_baseline()


def replan_row(sweep: Sweep, series: Series, row: Dict) -> Dict:
    """A finished point's plan again, with the current planner and the runtime baseline it was planned with
    (``scale --resume --replan``: check a planner change against measured peaks without training)."""
    import yaml

    data_path = yaml.safe_load(Path(row["run_dir"], "config.yaml").read_text())["data"]["path"]
    overrides = point_overrides(sweep, series, data_path, row["run_dir"])
    baseline = row.get("plan_baseline_mb")
    if baseline:
        planned = _plan_with_baseline(sweep, series, overrides, int(float(baseline) * 2**20))
    else:
        planned = plan_point(sweep, series, overrides)
    return {**row, **planned, "plan_error": planned["plan_peak_mb"] / float(row["peak_rss_mb"]) - 1.0}


def _plan_with_baseline(sweep: Sweep, series: Series, overrides: List[str], baseline: int) -> Dict:
    from metammf_dist.config import load_config
    from metammf_dist.distributed.deepspeed_engine import load_ds_config
    from metammf_dist.distributed.process_group import DistInfo
    from metammf_dist.planner import memory as mem

    cfg = load_config(sweep.base_config, overrides)
    ds_config = load_ds_config(cfg, DistInfo(rank=0, world_size=series.world_size))
    plan = mem.plan_memory(cfg, mem.Workload.from_dataset(cfg.data.path), series.world_size, series.zero_stage,
                           series.offload, "cpu", ds_config=ds_config, baseline_bytes=baseline)
    return {"plan_peak_mb": plan.peak() / 2**20, "plan_baseline_mb": baseline / 2**20}
