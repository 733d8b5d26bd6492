"""``metammf-dist bench shard``: replicated vs row-sharded catalog state on 1, 2 and 4 ranks, side by side.

One synthetic catalog (generated once under ``--workdir``), the big-catalog model (``configs/scale/base.yaml``:
meta fusion, GCN, fusion cache refreshed once per run, torch graph backend), the same seed and steps at every
point.  Per world size (``torchrun``, gloo, CPU ranks) and mode:

* ``replicated``: ``train.id_tables=sparse`` — every rank holds the whole ID tables, their optimizer state and
  the whole fusion cache;
* ``sharded``: ``train.id_tables=sharded`` — TorchRec row-shards the tables (and the cache is cut the same way);

both with row-wise Adagrad (the optimizer the sharded tables run on CPU) and ``model.id_init=blocks``, so the
two modes compute the same training: the largest difference of their per-step losses is printed
(``max_loss_diff``).  Per point, from the run's ``usage.json`` / ``metrics.csv``: catalog-state bytes per rank
(the ID tables + optimizer state + fusion cache a rank holds: ``Trainer.catalog_state_bytes``), peak RSS and
PSS per rank (PSS counts the node-shared graph once), median step time, and ``plan``'s per-rank peak for the
same run (the planner's error).  Ends with one JSON line: ``state_ratio_4v1`` (sharded catalog state per rank at
4 ranks ÷ at 1 rank; replicated: 1.0), ``step_ratio_2`` (sharded ÷ replicated step time at 2 ranks),
``max_loss_diff``, ``max_plan_error`` and the raw figures.
"""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
MODES = {"replicated": ["train.id_tables=sparse"], "sharded": ["train.id_tables=sharded"]}
COMMON = ["model.id_init=blocks", "train.id_optimizer=rowwise_adagrad", "train.id_lr=0.05", "train.graph_backend=torch",
          "train.epochs=1", "train.log_every=1", "train.num_workers=0", "train.keep_checkpoints=1"]


def add_arguments(parser) -> None:
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--feat-dim", type=int, default=64, help="one modality of this width")
    parser.add_argument("--steps", type=int, default=12, help="training steps per point")
    parser.add_argument("--world-sizes", default="1,2,4")
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--workdir", default="bench_out/shard")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")


def _env() -> dict:
    from metammf_dist.bench import MEMORY_ENV
    from metammf_dist.distributed.process_group import child_env

    return child_env(threads=1, TQDM_DISABLE="1", **MEMORY_ENV)


def run_point(data: str, workdir: Path, world: int, mode: str, args) -> Dict:
    from metammf_dist.distributed.process_group import train_command

    run_dir = workdir / "runs" / f"{mode}-w{world}"
    overrides = [f"data.path={data}", f"run_dir={run_dir}", f"train.max_steps_per_epoch={args.steps}",
                 f"eval.max_users={args.eval_users}", f"train.fusion_cache_refresh={args.steps + 1}",
                 *COMMON, *MODES[mode], *args.overrides]
    cmd = train_command(["configs/scale/base.yaml", *overrides, "--overwrite"], world)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench shard: {mode} on {world} rank(s) failed:\n{proc.stderr[-3000:]}")
    usage = json.loads((run_dir / "usage.json").read_text())
    with (run_dir / "metrics.csv").open() as fh:
        losses = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)
                  if r["split"] == "train" and r["metric"] == "lr" and r["loss"]}
    from metammf_dist.config import load_config
    from metammf_dist.planner import memory as mem

    cfg = load_config("configs/scale/base.yaml", overrides)
    plan = mem.plan_memory(cfg, mem.Workload.from_dataset(data), world, 0, baseline_bytes=args.baseline_bytes,
                           allocator="live")  # the runs' MEMORY_ENV: no retained heap
    peak = max(usage["peak_rss_bytes_per_rank"])
    return {"mode": mode, "world_size": world, "wall_s": time.perf_counter() - started,
            "catalog_state_bytes_per_rank": max(usage["catalog_state_bytes_per_rank"]),
            "peak_rss_bytes_per_rank": peak, "pss_bytes_per_rank": max(p or 0 for p in usage["pss_bytes_per_rank_at_end"]),
            "step_s": usage["train_seconds"] / max(usage["train_steps"], 1), "losses": losses,
            "plan_peak_bytes": plan.peak(), "plan_error": plan.peak() / peak - 1.0}


def run(args) -> int:
    from metammf_dist.data.synth import SynthSpec, ensure_generated

    workdir = Path(args.workdir)
    spec = SynthSpec(num_users=args.users, num_items=args.items, num_interactions=args.interactions,
                     modalities={"feat": args.feat_dim}, seed=1)
    data = str(ensure_generated(spec, str(workdir / "data")))
    from metammf_dist.planner import memory as mem

    args.baseline_bytes = mem.measure_runtime_baseline()  # this machine's runtime RSS, once (as `scale` does)
    worlds = [int(w) for w in args.world_sizes.split(",")]
    points: List[Dict] = []
    for world in worlds:
        for mode in MODES:
            point = run_point(data, workdir, world, mode, args)
            points.append(point)
            print(f"{mode:10s} {world} rank(s): catalog state {point['catalog_state_bytes_per_rank'] / 2**20:8.1f} MiB/rank"
                  f"  peak RSS {point['peak_rss_bytes_per_rank'] / 2**20:7.0f} MiB (plan {point['plan_error']:+.1%})"
                  f"  PSS {point['pss_bytes_per_rank'] / 2**20:6.0f} MiB  step {point['step_s']:.3f} s", flush=True)
    by = {(p["mode"], p["world_size"]): p for p in points}
    loss_diff = 0.0
    for world in worlds:
        a, b = by[("replicated", world)]["losses"], by[("sharded", world)]["losses"]
        loss_diff = max([loss_diff] + [abs(a[s] - b[s]) for s in a if s in b])
    summary = {"max_loss_diff": loss_diff, "max_plan_error": max(abs(p["plan_error"]) for p in points),
               "points": [{k: v for k, v in p.items() if k != "losses"} for p in points]}
    first, last = min(worlds), max(worlds)
    summary[f"state_ratio_{last}v{first}"] = (by[("sharded", last)]["catalog_state_bytes_per_rank"]
                                             / by[("sharded", first)]["catalog_state_bytes_per_rank"])
    summary[f"replicated_state_ratio_{last}v{first}"] = (by[("replicated", last)]["catalog_state_bytes_per_rank"]
                                                        / by[("replicated", first)]["catalog_state_bytes_per_rank"])
    if 2 in worlds:
        summary["step_ratio_2"] = by[("sharded", 2)]["step_s"] / by[("replicated", 2)]["step_s"]
    print(json.dumps(summary, sort_keys=True))
    return 0


