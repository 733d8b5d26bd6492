"""``metammf-dist bench fusion``: memory and time per item of the fusion MLP, naive vs ours.

Three variants, each a forward + backward pass (loss = sum of the outputs) of the full fusion network
(meta-learner + layers) at the paper's dims (2276 -> 1024 -> 512 -> 256 -> 32, s = 5, R = 16), float32 on
CPU with ``--threads`` threads:

    naive  per-item materialized weights W_i = M + Σ_k s_ik T_k (``naive_fusion.py``), at the largest
           batch whose W_i and their gradients fit in ``--naive-mem-gb`` (2 · Σ_l in_l·out_l floats/item)
    meta   the exact meta layers of ``model/fusion.py`` at ``--batch``
    cp     the CP-decomposed layers at ``--batch``

plus, for context, the meta-learner alone (``d -> d -> s`` MLP, shared by all three) at ``--batch``.

Peak memory: each variant runs in its own fresh Python subprocess.  After building the network and its
input it reads its resident set size (baseline), resets the kernel's peak-RSS mark (``echo 5 >
/proc/self/clear_refs``; where that is not allowed it falls back to ``ru_maxrss``), runs one forward +
backward and reports peak RSS (VmHWM) minus baseline: everything the pass allocates — activations, the
W_i, the parameter gradients — divided by the batch size.  That subprocess runs with glibc's
``MALLOC_MMAP_THRESHOLD_=65536``, so every block of 64 KiB or more is mmapped and leaves the RSS as soon
as it is freed; peak RSS then tracks peak live bytes instead of what the allocator happens to retain
(without it the figures vary by ±10 % run to run and overstate ours more than the naive one's).
Time: another fresh subprocess with the default allocator, one warm-up pass, then the best of
``--repeats`` passes (the minimum, as ``timeit`` advises: other load only ever adds time), divided by
the batch size.

Prints a results table and a parameter-count table (meta-learner + fusion layers, meta vs CP vs static),
and ends with one JSON line: ``meta_mem_ratio``, ``meta_time_ratio``, ``cp_mem_ratio``, ``cp_time_ratio``
(naive ÷ ours, per item) and the raw per-item figures.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from metammf_dist.bench import MEMORY_ENV
from metammf_dist.procmem import reset_peak_rss, status_bytes

PAPER_IN_DIM = 2276
PAPER_DIMS = (1024, 512, 256, 32)
VARIANTS = ("naive", "meta", "cp", "meta_learner")  # the last is context: the part all three share
FLOAT32_BYTES = 4
# naive ÷ ours per item that the project aims for: (memory, time)
TARGETS = {"meta": (100.0, 20.0), "cp": (300.0, 100.0)}


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=3000, help="items per pass for meta and cp")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--naive-mem-gb", type=float, default=4.0, help="GiB budget for the naive W_i and grads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant (the best is reported)")
    parser.add_argument("--in-dim", type=int, default=PAPER_IN_DIM, help="concatenated feature dim d")
    parser.add_argument("--dims", type=str, default=",".join(map(str, PAPER_DIMS)), help="fusion widths")
    parser.add_argument("--meta-dim", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16, help="CP rank R")


def naive_batch_size(in_dim: int, dims: Sequence[int], mem_gb: float) -> int:
    """Largest batch whose materialized W_i plus their gradients fit in ``mem_gb`` GiB (float32)."""
    from metammf_dist.bench.naive_fusion import materialized_floats_per_item

    per_item = 2 * materialized_floats_per_item(in_dim, dims) * FLOAT32_BYTES
    return max(1, int(mem_gb * 2**30 // per_item))


# ---- measurement inside one process --------------------------------------------------------------


def _peak_rss_fallback() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_step(variant: str, in_dim: int, dims: Sequence[int], meta_dim: int, rank: int, batch: int,
               threads: int, seed: int) -> Callable[[], None]:
    """Build the variant's network and input; return one forward + backward pass."""
    import torch

    from metammf_dist.bench.naive_fusion import naive_fusion_forward
    from metammf_dist.model.fusion import FusionNet

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = FusionNet(in_dim, dims, kind="cp" if variant == "cp" else "meta", meta_dim=meta_dim, cp_rank=rank)
    x = torch.randn(batch, in_dim)
    forward = {
        "naive": lambda: naive_fusion_forward(net, x),
        "meta": lambda: net(x),
        "cp": lambda: net(x),
        "meta_learner": lambda: net.meta_vectors(x),
    }[variant]

    def step() -> None:
        net.zero_grad(set_to_none=True)
        forward().sum().backward()

    return step


def measure_memory(variant: str, in_dim: int, dims: Sequence[int], meta_dim: int, rank: int, batch: int,
                   threads: int, seed: int = 0) -> Dict:
    """Peak RSS growth of one pass; meaningful only in a fresh process (see the module docstring)."""
    step = _make_step(variant, in_dim, dims, meta_dim, rank, batch, threads, seed)
    baseline = status_bytes("VmRSS") or 0
    method = "vmhwm_reset" if reset_peak_rss() else "ru_maxrss"
    step()
    peak = status_bytes("VmHWM") if method == "vmhwm_reset" else _peak_rss_fallback()
    peak_bytes = max(0, (peak or 0) - baseline)
    return {"variant": variant, "batch": batch, "peak_bytes": peak_bytes, "bytes_per_item": peak_bytes / batch,
            "memory_method": method}


def measure_time(variant: str, in_dim: int, dims: Sequence[int], meta_dim: int, rank: int, batch: int,
                 threads: int, repeats: int = 3, seed: int = 0) -> Dict:
    """Best (minimum) seconds of ``repeats`` passes after one warm-up pass."""
    step = _make_step(variant, in_dim, dims, meta_dim, rank, batch, threads, seed)
    step()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    return {"variant": variant, "batch": batch, "seconds": seconds, "ms_per_item": 1e3 * seconds / batch}


_TASKS = {"memory": measure_memory, "time": measure_time}


def measure_in_subprocess(task: str, variant: str, **kwargs) -> Dict:
    """``measure_memory`` / ``measure_time`` in a fresh interpreter (memory: with ``MEMORY_ENV``)."""
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(_TASKS)})")
    spec = json.dumps({"task": task, "variant": variant, **kwargs})
    env = dict(os.environ, **(MEMORY_ENV if task == "memory" else {}))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "metammf_dist.bench.fusion", spec], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fusion benchmark {task} worker for {variant!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_variant(variant: str, in_dim: int, dims: Sequence[int], meta_dim: int, rank: int, batch: int,
                    threads: int, repeats: int = 3, isolate: bool = True) -> Dict:
    """Memory and time of one variant: two fresh subprocesses (``isolate``), or here (smoke tests only)."""
    common = dict(variant=variant, in_dim=in_dim, dims=list(dims), meta_dim=meta_dim, rank=rank, batch=batch,
                  threads=threads)
    if isolate:
        memory = measure_in_subprocess("memory", **common)
        timing = measure_in_subprocess("time", repeats=repeats, **common)
    else:
        memory, timing = measure_memory(**common), measure_time(repeats=repeats, **common)
    return {**memory, **timing}


# ---- the whole benchmark -------------------------------------------------------------------------
def fusion_parameter_counts(in_dim: int, dims: Sequence[int], meta_dim: int, rank: int) -> Dict[str, Dict[str, int]]:
    """Meta-learner + fusion-layer parameters for each fusion kind (no allocation)."""
    from metammf_dist.model.summary import fusion_layer_parameters

    widths = [in_dim] + list(dims)
    meta_learner = in_dim * in_dim + in_dim + in_dim * meta_dim + meta_dim
    table = {}
    for kind in ("meta", "cp", "static"):
        layers = sum(fusion_layer_parameters(kind, a, b, meta_dim, rank) for a, b in zip(widths[:-1], widths[1:]))
        learner = 0 if kind == "static" else meta_learner
        table[kind] = {"meta_learner": learner, "fusion_layers": layers, "total": learner + layers}
    return table


def run_benchmark(in_dim: int = PAPER_IN_DIM, dims: Sequence[int] = PAPER_DIMS, meta_dim: int = 5, rank: int = 16,
                  batch: int = 3000, threads: int = 2, naive_mem_gb: float = 4.0, repeats: int = 3,
                  isolate: bool = True) -> Dict:
    """Measure every variant and return per-variant results, the ratios and parameter counts.

    ``isolate=True`` (the benchmark) runs each measurement in its own subprocess; ``False`` runs them here,
    which is quicker for smoke tests but makes the memory figures meaningless.
    """
    dims = [int(d) for d in dims]
    common = dict(in_dim=in_dim, dims=dims, meta_dim=meta_dim, rank=rank, threads=threads, repeats=repeats)
    naive_batch = naive_batch_size(in_dim, dims, naive_mem_gb)
    results = {
        variant: measure_variant(variant, batch=naive_batch if variant == "naive" else batch, isolate=isolate,
                                 **common)
        for variant in VARIANTS
    }
    naive = results["naive"]

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else float("inf")

    summary = {
        "meta_mem_ratio": ratio(naive["bytes_per_item"], results["meta"]["bytes_per_item"]),
        "meta_time_ratio": ratio(naive["ms_per_item"], results["meta"]["ms_per_item"]),
        "cp_mem_ratio": ratio(naive["bytes_per_item"], results["cp"]["bytes_per_item"]),
        "cp_time_ratio": ratio(naive["ms_per_item"], results["cp"]["ms_per_item"]),
    }
    for name, res in results.items():
        summary[f"{name}_bytes_per_item"] = res["bytes_per_item"]
        summary[f"{name}_ms_per_item"] = res["ms_per_item"]
        summary[f"{name}_batch"] = res["batch"]
    summary.update(threads=threads, memory_method=naive["memory_method"], dims=[in_dim] + dims, meta_dim=meta_dim,
                   rank=rank, repeats=repeats)
    summary["targets_met"] = all(
        summary[f"{kind}_mem_ratio"] >= mem and summary[f"{kind}_time_ratio"] >= tim
        for kind, (mem, tim) in TARGETS.items()
    )
    return {"results": results, "summary": summary, "parameters": fusion_parameter_counts(in_dim, dims, meta_dim, rank)}


def format_results(results: Dict[str, Dict]) -> str:
    header = ("variant", "batch", "peak MiB", "KiB/item", "ms/pass", "ms/item")
    rows = [
        (r["variant"], str(r["batch"]), f"{r['peak_bytes'] / 2**20:.1f}", f"{r['bytes_per_item'] / 1024:.1f}",
         f"{1e3 * r['seconds']:.1f}", f"{r['ms_per_item']:.4f}")
        for r in results.values()
    ]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> int:
    from metammf_dist.model.summary import format_parameter_table

    dims = [int(d) for d in str(args.dims).split(",") if d.strip()]
    out = run_benchmark(in_dim=args.in_dim, dims=dims, meta_dim=args.meta_dim, rank=args.rank, batch=args.batch,
                        threads=args.threads, naive_mem_gb=args.naive_mem_gb, repeats=args.repeats)
    s = out["summary"]
    print(f"fusion forward+backward (loss = sum of outputs), dims {s['dims']}, s={s['meta_dim']}, R={s['rank']}, "
          f"float32, {s['threads']} CPU threads")
    print(f"memory: peak RSS - baseline ({s['memory_method']}, {MEMORY_ENV}), fresh process per variant; "
          f"time: best of {s['repeats']} passes after a warm-up, another fresh process")
    print(format_results(out["results"]))
    print()
    print("parameters (meta-learner + fusion layers):")
    print(format_parameter_table(out["parameters"]))
    print()
    for kind, (mem, tim) in TARGETS.items():
        print(f"naive / {kind}: {s[f'{kind}_mem_ratio']:.0f}x less memory (target {mem:.0f}x), "
              f"{s[f'{kind}_time_ratio']:.1f}x faster (target {tim:.0f}x) per item")
    print(json.dumps(s))
    return 0


def _worker(argv: List[str]) -> None:
    spec = json.loads(argv[0])
    print(json.dumps(_TASKS[spec.pop("task")](**spec)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
