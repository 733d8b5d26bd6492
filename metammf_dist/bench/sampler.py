"""``metammf-dist bench sampler``: neighbour-sampling throughput, torch graph backend vs DGL backend.

One synthetic power-law user–item graph (``--users`` x ``--items``, ``--edges`` unique interactions; user
activity and item popularity both Zipf-like with exponent ``--power``, ids shuffled so hubs are spread),
then, in the same process and on the same graph, the batch pipeline the trainer runs for the GCN
(``NeighborBatches``: rank partition, negatives, relabelling, neighbour sampling with seed-edge
exclusion in both directions, ``--fanouts``, ``--batch`` positive edges per step, 1 negative) for:

    torch  train.graph_backend=torch: ``TorchNeighborSampler`` -> torch ``Block`` objects
           (``--device cuda`` puts its graph and draws on the GPU)
    dgl    train.graph_backend=dgl: the numpy sampler -> ``dgl.create_block``
    dgl_native  (reference) DGL's own ``as_edge_prediction_sampler(NeighborSampler(fanouts),
           exclude="reverse_types", negative_sampler=Uniform(1))`` on the same seed edges.  Not a backend
           of ours: its CPU draws are not reproducible (see ``sampler/neighbor.py``), and its exclusion
           drops seed edges after drawing (fewer than ``fanout`` neighbours at nodes touching a seed).

Threads: ``--threads 1`` by default, the same for all sides.  A sampler shares the cores with training (or
runs in the prefetch thread beside it), and on an oversubscribed machine OpenMP's spin-waiting makes every
multi-threaded side erratic (measured here on 2 shared cores at load 8: 2 threads cut the torch side and
DGL's own sampler 3-4x, while ``OMP_WAIT_POLICY=PASSIVE`` or 1 thread did not); ``--threads 2`` on an idle
machine measures the parallel case.

Each is timed over the same ``--steps`` steps (edge batches of epoch 0), best of ``--repeats`` passes, with
the sides interleaved pass by pass so that load from other processes hits all of them alike.  Without DGL
installed only the torch side runs.  Prints a table and ends with one JSON line: steps/s and sampled
block edges per step of each side, and ``torch_vs_dgl`` = torch steps/s ÷ dgl steps/s (target >= 0.7).
"""
from __future__ import annotations

import json
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

TARGET = 0.7


def add_arguments(parser) -> None:
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--edges", type=int, default=1_000_000, help="unique train interactions")
    parser.add_argument("--power", type=float, default=1.0, help="Zipf exponent of user activity and item popularity")
    parser.add_argument("--batch", type=int, default=3000, help="positive edges per step")
    parser.add_argument("--fanouts", type=str, default="10,10")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes per side (the best is reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/DGL CPU threads (0 = leave as is); see the module docstring")
    parser.add_argument("--device", default="cpu", help="device of the torch backend's graph (cpu | cuda)")
    parser.add_argument("--no-dgl-native", action="store_true", help="skip DGL's own sampler (reference column)")
    parser.add_argument("--seed", type=int, default=0)


def power_law_graph(users: int, items: int, edges: int, power: float, seed: int):
    """``edges`` unique (user, item) pairs, both endpoints drawn from shuffled Zipf(power) laws."""
    if edges > users * items:
        raise ValueError(f"{edges} unique edges do not fit in {users} x {items}")
    rng = np.random.default_rng(seed)

    def zipf(n: int) -> np.ndarray:
        p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** power
        return (p / p.sum())[rng.permutation(n)]

    pu, pi = zipf(users), zipf(items)
    keys = np.empty(0, dtype=np.int64)
    while keys.size < edges:
        need = int((edges - keys.size) * 1.3) + 1024
        u = rng.choice(users, need, p=pu)
        i = rng.choice(items, need, p=pi)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * items + i]))
    keys = keys[rng.permutation(keys.size)[:edges]]
    return keys // items, keys % items


def _time_pass(make_iter: Callable[[], object], steps: int, sync: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    it = make_iter()
    for _, _ in zip(range(steps), it):
        pass
    sync()
    return time.perf_counter() - t0


def run_benchmark(users: int, items: int, edges: int, power: float, batch: int, fanouts: List[int], steps: int,
                  repeats: int, device: str = "cpu", dgl_native: bool = True, seed: int = 0) -> dict:
    from metammf_dist.model.gcn import dgl_available
    from metammf_dist.sampler import build_train_graph, make_batches

    u, i = power_law_graph(users, items, edges, power, seed)
    has_dgl = dgl_available()
    sides: Dict[str, dict] = {}
    t0 = time.perf_counter()
    tgraph = build_train_graph(u, i, users, items, backend="torch").to(device)
    build = {"torch": time.perf_counter() - t0}
    common = dict(fanouts=fanouts, batch_size=batch, num_negatives=1, seed=seed, rank=0, world_size=1)
    torch_batches = make_batches("neighbor", tgraph, **common)
    steps = min(steps, torch_batches.num_batches())
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sides["torch"] = {"iter": lambda: torch_batches.epoch(0), "sync": sync, "sample": next(iter(torch_batches.epoch(0)))}
    if has_dgl:
        import dgl

        t0 = time.perf_counter()
        dgraph = build_train_graph(u, i, users, items, backend="dgl")
        build["dgl"] = time.perf_counter() - t0
        dgl_batches = make_batches("neighbor", dgraph, **common)
        sides["dgl"] = {"iter": lambda: dgl_batches.epoch(0), "sync": lambda: None,
                        "sample": next(iter(dgl_batches.epoch(0)))}
        if dgl_native:
            ref = dgl.dataloading.as_edge_prediction_sampler(
                dgl.dataloading.NeighborSampler(fanouts), exclude="reverse_types",
                reverse_etypes={"ui": "iu", "iu": "ui"},
                negative_sampler=dgl.dataloading.negative_sampler.Uniform(1))
            eid_batches = torch_batches.partition.batches(0)[:steps]

            def native():
                for eids in eid_batches:
                    yield ref.sample(dgraph, {"ui": eids})

            sides["dgl_native"] = {"iter": native, "sync": lambda: None, "sample": next(native())}

    for side in sides.values():  # warm-up (allocator, DGL's lazy formats), untimed
        _time_pass(side["iter"], min(2, steps), side["sync"])
    best = {name: float("inf") for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            best[name] = min(best[name], _time_pass(side["iter"], steps, side["sync"]))

    results = {}
    for name, side in sides.items():
        sample = side["sample"]
        blocks = sample[-1] if isinstance(sample, tuple) else sample.blocks
        results[name] = {
            "steps_per_s": steps / best[name],
            "ms_per_step": 1000.0 * best[name] / steps,
            "block_edges_per_step": [int(b.num_edges()) for b in blocks],
        }
    summary = {
        "benchmark": "sampler", "users": users, "items": items, "edges": int(u.size), "power": power, "batch": batch,
        "fanouts": fanouts, "steps": steps, "repeats": repeats, "threads": torch.get_num_threads(), "device": device,
        "torch_version": torch.__version__, "dgl": has_dgl, "graph_build_s": build,
        **{f"{name}_steps_per_s": r["steps_per_s"] for name, r in results.items()},
        "torch_vs_dgl": results["torch"]["steps_per_s"] / results["dgl"]["steps_per_s"] if "dgl" in results else None,
        "torch_vs_dgl_native": (results["torch"]["steps_per_s"] / results["dgl_native"]["steps_per_s"]
                                if "dgl_native" in results else None),
        "target": TARGET,
    }
    return {"results": results, "summary": summary}


def format_results(results: Dict[str, dict]) -> str:
    rows = [f"{'side':<12} {'steps/s':>9} {'ms/step':>9}  block edges per step (input -> output)"]
    for name, r in results.items():
        rows.append(f"{name:<12} {r['steps_per_s']:>9.2f} {r['ms_per_step']:>9.1f}  {r['block_edges_per_step']}")
    return "\n".join(rows)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    fanouts = [int(f) for f in str(args.fanouts).split(",") if f.strip()]
    out = run_benchmark(args.users, args.items, args.edges, args.power, args.batch, fanouts, args.steps, args.repeats,
                        device=args.device, dgl_native=not args.no_dgl_native, seed=args.seed)
    s = out["summary"]
    print(f"neighbour sampling, power-law graph {s['users']} users x {s['items']} items, {s['edges']} edges "
          f"(Zipf {s['power']}), batch {s['batch']}, fanouts {s['fanouts']}, 1 negative, {s['threads']} threads, "
          f"torch backend on {s['device']}; best of {s['repeats']} interleaved passes of {s['steps']} steps")
    print(format_results(out["results"]))
    ratio: Optional[float] = s["torch_vs_dgl"]
    if ratio is not None:
        print(f"torch backend / DGL backend: {ratio:.2f}x the steps/s (target >= {TARGET})")
    else:
        print("DGL not installed: torch backend only")
    print(json.dumps(s))
    return 0
