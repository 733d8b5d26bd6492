"""``metammf-dist plan CONFIG [key=value ...]``: predicted per-rank memory of a training run, and the largest
catalog that fits a memory budget per rank.

    metammf-dist plan configs/tiktok.yaml --world-size 2 --zero-stage 3 --dataset data/tiktok
    metammf-dist plan configs/tiktok.yaml --world-size 64 --zero-stage 3 --device cuda \\
        --users 100000000 --items 100000000 --interactions 1000000000 --feat-dim 384 --mem-per-rank-gb 80

The catalog is ``--dataset`` (exact degree histograms), or ``--users/--items/--interactions/--feat-dim``
(synthetic-like degrees: Zipf items, log-normal users), or the config's ``data.path``.  ``--probe-steps K``
runs the real sampler for K steps to measure the block sizes instead of estimating them.  ``--measure-steps
K`` also runs the real training (``metammf-dist train``, ``torchrun`` for N > 1 ranks, K steps, one epoch with
its evaluation) and prints the measured peak RSS per rank next to the prediction (CPU only).

The model is ``planner.memory``; this module parses arguments, prints the table and the advice, and runs
the optional measurement.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

from metammf_dist.distributed.process_group import child_env, train_command
from metammf_dist.planner import memory as mem

GIB = 2**30
MIB = 2**20
SHARD_FRACTION = 0.10  # a tensor whose unsharded per-rank bytes exceed this share of the budget must be row-sharded


def add_arguments(parser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--world-size", type=int, default=1, help="ranks (processes / GPUs)")
    parser.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2, 3),
                        help="ZeRO stage (default: the config's train.ds_config)")
    parser.add_argument("--offload", action="store_true", default=None,
                        help="optimizer states (and stage-3 params) offloaded to host (default: from train.ds_config)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")
    parser.add_argument("--dataset", default=None, help="canonical dataset to plan for (default: data.path)")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--interactions", type=int, default=None, help="all splits")
    parser.add_argument("--feat-dim", type=int, default=None, help="concatenated feature width")
    parser.add_argument("--mem-per-rank-gb", type=float, default=None,
                        help="budget per rank for the largest-catalog search (default: host RAM / world size; "
                             "80 for --device cuda)")
    parser.add_argument("--probe-steps", type=int, default=0, help="measure block sizes with the real sampler")
    parser.add_argument("--baseline-mb", type=float, default=None,
                        help=f"runtime RSS per process (default {mem.RUNTIME_BASELINE_BYTES / MIB:.0f})")
    parser.add_argument("--measure-baseline", action="store_true", help="measure the runtime RSS here first")
    parser.add_argument("--measure-steps", type=int, default=0,
                        help="also train K steps for real and compare the measured peak RSS (CPU)")
    parser.add_argument("--allocator", default="glibc", choices=("glibc", "live"),
                        help="glibc: the default malloc (adds the heap it retains); live: RSS tracks live bytes "
                             "(MALLOC_MMAP_THRESHOLD_=65536 or jemalloc)")
    parser.add_argument("--ranks-per-node", type=int, default=None,
                        help="ranks sharing a machine's memory-mapped train graph (default: all on CPU, 8 on GPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


# ---- inputs ----------------------------------------------------------------------------------------------
def load_plan_inputs(args):
    from metammf_dist.config import ConfigError, load_config
    from metammf_dist.distributed.deepspeed_engine import load_ds_config
    from metammf_dist.distributed.process_group import DistInfo

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.path={args.dataset}")
    cfg = load_config(args.config, overrides)
    if args.world_size < 1:
        raise ConfigError(f"--world-size must be >= 1, got {args.world_size}")
    ds_config = {}
    try:
        ds_config = load_ds_config(cfg, DistInfo(rank=0, world_size=args.world_size))
    except ConfigError:
        if args.zero_stage is None:
            raise
    stage = args.zero_stage if args.zero_stage is not None else mem.zero_stage_of(ds_config)
    offload = args.offload if args.offload is not None else mem.offload_of(ds_config)
    sizes = (args.users, args.items, args.interactions, args.feat_dim)
    if any(v is not None for v in sizes):
        if any(v is None for v in sizes):
            raise ConfigError("give all of --users --items --interactions --feat-dim (or --dataset)")
        workload = mem.Workload(args.users, args.items, args.interactions, args.feat_dim)
    else:
        if not cfg.data.path:
            raise ConfigError("no catalog: give --dataset, set data.path, or --users/--items/--interactions/--feat-dim")
        workload = mem.Workload.from_dataset(cfg.data.path, storage_options=cfg.data.storage_options or None)
    return cfg, ds_config, stage, offload, workload


# ---- output ----------------------------------------------------------------------------------------------
def _size(nbytes: float) -> str:
    return f"{nbytes / GIB:,.2f} GiB" if nbytes >= GIB else f"{nbytes / MIB:,.1f} MiB"


def format_plan(plan: mem.Plan) -> str:
    rows = [(c.phase, c.name, c.where, _size(c.bytes), c.note) for c in plan.components]
    for phase in mem.PHASES:
        total = plan.phase_total(phase)
        if total:
            rows.append((phase, "= total", "", _size(total), ""))
    header = ("phase", "component", "where", "bytes / rank", "note")
    order = {p: k for k, p in enumerate(mem.PHASES)}
    rows.sort(key=lambda r: (order[r[0]], r[1] == "= total"))
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(str(v).rjust(w) if c == 3 else str(v).ljust(w)
                       for c, (v, w) in enumerate(zip(r, widths))).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shard_advice(plan: mem.Plan, budget: float) -> List[str]:
    """For a plan over budget: tensors and structures whose unsharded per-rank bytes exceed ``SHARD_FRACTION``
    of the budget (what has to be split across ranks for the run to fit)."""
    cfg_counts = plan.params["counts"]
    out = []
    per_elem = 8 if plan.zero_stage == 3 else (16 if plan.zero_stage == 0 else 8)
    what = {0: "params + grads + Adam, replicated", 1: "params + grads, replicated", 2: "params + grads, replicated",
            3: "gathered whole for its forward + its full gradient"}[plan.zero_stage]
    tables, adam = plan.params.get("id_tables"), plan.params.get("id_optimizer", "adam") == "adam"
    state = "lazy Adam m, v" if adam else "row-wise Adagrad (one float per row)"
    if tables == "sparse":
        per_elem, what = (12 if adam else 4), f"outside ZeRO: weights + {state}, replicated"
    if tables == "sharded":
        per_elem, what = (12 if adam else 4) / plan.world_size, f"row-sharded: 1/{plan.world_size} of the rows per rank"
    remedy = ("already row-sharded: more ranks" if tables == "sharded" else
              "must be row-sharded (train.id_tables=sharded: each rank owns rows, a step gathers only the rows its "
              "batch touches)")
    for name, numel in (("user ID table", cfg_counts["user_id"]), ("item ID table", cfg_counts["item_id"])):
        nbytes = per_elem * numel
        if nbytes > SHARD_FRACTION * budget:
            out.append(f"{name}: {numel:,} parameters -> {_size(nbytes)} per rank ({what}) > "
                       f"{SHARD_FRACTION:.0%} of {_size(budget)}: {remedy}")
    chunk = [c for c in plan.components if c.name == "ranking: score chunks"]
    if chunk and chunk[0].bytes > SHARD_FRACTION * budget:
        per_user = chunk[0].bytes / max(1, min(plan.workload.num_users, _user_chunk(plan)))
        ok = max(1, int(SHARD_FRACTION * budget // per_user))
        out.append(f"evaluation scores: {_size(chunk[0].bytes)} per chunk ({chunk[0].note}): lower eval.user_chunk "
                   f"to <= {ok:,} (or shard the items across ranks for ranking)")
    pass_ = [c for c in plan.components if c.name == "inference: vectors + full-graph pass"]
    if pass_ and pass_[0].bytes > SHARD_FRACTION * budget:
        out.append(f"evaluation's full-graph pass: {_size(pass_[0].bytes)} per rank ({pass_[0].note}, every rank "
                   f"computes every vector): split the vectors and the GCN pass across ranks")
    graph = sum(c.bytes for c in plan.components if c.phase in ("persistent", "training") and
                any(k in c.name for k in ("interactions", "graph", "sampler", "epoch", "CSC", "blocks")))
    if graph > SHARD_FRACTION * budget:
        out.append(f"interactions + graph structures: {_size(graph)} per rank (the graph shared per machine, the rest per rank) > "
                   f"{SHARD_FRACTION:.0%} of the budget: partition the graph across ranks (e.g. DistDGL)")
    return out


def _user_chunk(plan: mem.Plan) -> int:
    return int(plan.params.get("eval_user_chunk", 1024))


def run(args) -> int:
    cfg, ds_config, stage, offload, workload = load_plan_inputs(args)
    baseline = mem.RUNTIME_BASELINE_BYTES
    if args.measure_baseline:
        baseline = mem.measure_runtime_baseline()
    elif args.baseline_mb is not None:
        baseline = args.baseline_mb * MIB
    blocks = None
    if args.probe_steps > 0:
        blocks = mem.probe_blocks(cfg, args.probe_steps, args.world_size)
    per_node = _ranks_per_node(args)  # the search for a world size keeps this many ranks per machine
    same = dict(baseline_bytes=baseline, ds_config=ds_config, allocator=args.allocator, ranks_per_node=per_node)
    plan = mem.plan_memory(cfg, workload, args.world_size, stage, offload, args.device, blocks=blocks, **same)
    where = "device" if args.device != "cpu" else None
    budget = _budget(args)
    fit = mem.largest_catalog(cfg, workload, budget, args.world_size, stage, offload, args.device, where=where, **same)
    result = {
        "world_size": args.world_size, "zero_stage": stage, "offload": offload, "device": args.device,
        "num_users": workload.num_users, "num_items": workload.num_items,
        "num_interactions": workload.num_interactions, "feat_dim": workload.feat_dim,
        "peak_bytes_per_rank": plan.peak(), "peak_phase": plan.peak_phase(), "train_peak_bytes": plan.train_peak(),
        "device_peak_bytes": plan.peak("device"), "host_peak_bytes": plan.peak("host"),
        "phases": {p: plan.phase_total(p) for p in mem.PHASES},
        "input_items_per_step": plan.blocks.input_items, "input_users_per_step": plan.blocks.input_users,
        "blocks_source": plan.blocks.source, "parameters": plan.params["counts"], "budget_bytes": budget,
        "largest_items": fit.num_items if fit else 0,
        "largest_users": fit.num_users if fit else 0,
        "largest_interactions": fit.num_interactions if fit else 0,
        "fits": plan.peak(where) <= budget,
        "must_shard": [] if plan.peak(where) <= budget else shard_advice(plan, budget),
        "smallest_world_size": mem.smallest_world_size(cfg, workload, budget, stage, offload, args.device,
                                                       where=where, **same),
    }
    if args.measure_steps > 0:
        measured = measure_training_peak(args.config, _measure_overrides(args), args.world_size, args.measure_steps,
                                         stage, offload)
        result["measured_peak_bytes"] = measured
        result["plan_error"] = plan.peak() / measured - 1.0
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"plan: {workload.num_users:,} users, {workload.num_items:,} items, {workload.num_interactions:,} "
          f"interactions, {workload.feat_dim}-d ({workload.source}); {args.world_size} rank(s), ZeRO-{stage}"
          f"{' + offload' if offload else ''}, {args.device}; model {cfg.model.fusion}/{cfg.model.scorer}, "
          f"{plan.params['counts']['total']:,} parameters")
    print(f"step: {plan.blocks.input_items:,.0f} input items, {plan.blocks.input_users:,.0f} input users, "
          f"{plan.blocks.edges:,.0f} sampled edges per rank ({plan.blocks.source})")
    print(format_plan(plan))
    print(f"peak per rank: {_size(plan.peak())} (persistent {_size(plan.phase_total('persistent'))} + "
          f"{plan.peak_phase()} {_size(plan.alive(plan.peak_phase()))}); "
          f"training alone {_size(plan.train_peak())}")
    if args.device != "cpu":
        print(f"  device {_size(plan.peak('device'))}, host {_size(plan.peak('host'))} per rank")
    print(f"  host per machine ({per_node} rank(s) on it, the train graph mapped once): "
          f"{_size(per_node * plan.peak('host'))}")
    if fit is None:
        print(f"largest catalog within {_size(budget)} per rank: none (the runtime and the model alone exceed it)")
    else:
        print(f"largest catalog within {_size(budget)} per rank{' (device memory)' if where else ''}: "
              f"{fit.num_items:,} items, {fit.num_users:,} users, {fit.num_interactions:,} interactions "
              f"(users and interactions scaled with the items)")
    if result["fits"]:
        print(f"this run fits {_size(budget)} per rank")
    for line in result["must_shard"]:
        print(f"must shard: {line}")
    if "measured_peak_bytes" in result:
        print(f"measured peak RSS per rank ({args.measure_steps} steps + evaluation): "
              f"{_size(result['measured_peak_bytes'])}; plan {result['plan_error']:+.1%}")
    smallest = result["smallest_world_size"]
    print(f"smallest world size within {_size(budget)} per rank{' (device memory)' if where else ''}: "
          f"{smallest if smallest else 'none up to 65,536 ranks'}")
    line = summary_line(plan, result, where)
    line["host_gib_per_node"] = round(per_node * plan.peak("host") / GIB, 3)
    print(json.dumps(line))
    return 0


def _ranks_per_node(args) -> int:
    return args.ranks_per_node or (args.world_size if args.device == "cpu" else min(args.world_size, 8))


def summary_line(plan: mem.Plan, result: dict, where) -> dict:
    """The one JSON line ``plan`` ends with: the verdict, the peaks and every component's GiB (its largest phase)."""
    components = {}
    for c in plan.components:
        key = f"{c.name} [{c.where}]"
        components[key] = max(components.get(key, 0.0), round(c.bytes / GIB, 4))
    return {"fits": result["fits"], "peak_gib_per_rank": round(plan.peak(where) / GIB, 3),
            "device_peak_gib_per_rank": round(plan.peak("device") / GIB, 3),
            "host_peak_gib_per_rank": round(plan.peak("host") / GIB, 3), "budget_gib": round(result["budget_bytes"] / GIB, 3),
            "largest_items_that_fit": result["largest_items"], "smallest_world_size": result["smallest_world_size"],
            "world_size": result["world_size"], "components_gib": components}


def _budget(args) -> float:
    if args.mem_per_rank_gb is not None:
        return args.mem_per_rank_gb * GIB
    if args.device != "cpu":
        return 80.0 * GIB
    import psutil

    return psutil.virtual_memory().total / max(1, args.world_size)


def _measure_overrides(args) -> List[str]:
    out = list(args.overrides)
    if args.dataset:
        out.append(f"data.path={args.dataset}")
    return out


# ---- measurement -----------------------------------------------------------------------------------------
def measure_training_peak(config: str, overrides: List[str], world_size: int, steps: int, zero_stage: int,
                          offload: bool = False, env: Optional[dict] = None) -> int:
    """Peak RSS (bytes) of the largest rank of a real ``train`` run: ``steps`` steps, one epoch, evaluation.

    Runs ``python -m metammf_dist train`` (``torch.distributed.run`` for several ranks) and reads the
    peak from ``wait4``'s resource usage, which covers the launcher and every rank it waited for."""
    repo = Path(__file__).resolve().parents[2]
    stage_json = repo / "configs" / "ds" / f"zero{zero_stage}{'_offload' if offload else ''}.json"
    with tempfile.TemporaryDirectory(prefix="plan-measure-") as tmp:
        args = [config, *overrides, f"run_dir={tmp}/run", f"train.max_steps_per_epoch={steps}", "train.epochs=1",
                f"train.ds_config={stage_json}"]
        cmd = train_command(args, world_size)
        with open(Path(tmp) / "log.txt", "w+") as log:
            proc = subprocess.Popen(cmd, cwd=repo, env=child_env(env), stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                log.seek(0)
                raise RuntimeError(f"measured training failed ({proc.returncode}): {' '.join(cmd)}\n"
                                   f"{log.read()[-4000:]}")
    return int(usage.ru_maxrss) * 1024
