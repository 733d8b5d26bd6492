"""GPU counterpart of ``metammf-dist bench fusion`` (which is CPU-only): naive vs meta vs CP fusion on CUDA.

Same networks as the CPU benchmark (``FusionNet`` at the paper's dims 2276 -> 1024 -> 512 -> 256 -> 32,
s = 5, R = 16, float32) and the same naive baseline (``bench/naive_fusion.py``, per-item materialized W_i).
Per variant: one forward + backward (loss = sum of outputs); time = median of ``--repeats`` passes timed
with CUDA events after warm-ups; memory = ``torch.cuda.max_memory_allocated`` during one pass minus the
allocation before it (network + input), per item.  Run twice: TF32 matmuls off (exact fp32) and on.

Usage: python experiments/gpu/gpu_fusion_bench.py [--batch 3000] [--naive-mem-gb 8] [--repeats 20] [--json OUT]
Runs on CPU too (for a logic check); then memory figures are 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from metammf_dist.bench.fusion import PAPER_DIMS, PAPER_IN_DIM, naive_batch_size
from metammf_dist.bench.naive_fusion import naive_fusion_forward
from metammf_dist.model.fusion import FusionNet


def measure(variant, batch, in_dim, dims, meta_dim, rank, repeats, device):
    torch.manual_seed(0)
    net = FusionNet(in_dim, dims, kind="cp" if variant == "cp" else "meta", meta_dim=meta_dim, cp_rank=rank).to(device)
    x = torch.randn(batch, in_dim, device=device)
    fwd = {
        "naive": lambda: naive_fusion_forward(net, x),
        "meta": lambda: net(x),
        "cp": lambda: net(x),
        "meta_learner": lambda: net.meta_vectors(x),
    }[variant]

    def step():
        net.zero_grad(set_to_none=True)
        fwd().sum().backward()

    cuda = device.type == "cuda"
    for _ in range(3):  # warm-up (cuBLAS handles, allocator)
        step()
    if cuda:
        torch.cuda.synchronize()
        net.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = 0
    times = []
    for _ in range(repeats):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    net = x = None  # free before empty_cache (the closures above are done)
    if cuda:
        torch.cuda.empty_cache()
    return {"variant": variant, "batch": batch, "seconds": sec, "min_seconds": min(times),
            "ms_per_item": 1e3 * sec / batch, "us_per_item": 1e6 * sec / batch,
            "peak_bytes": peak, "bytes_per_item": peak / batch}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=3000)
    p.add_argument("--naive-mem-gb", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--in-dim", type=int, default=PAPER_IN_DIM)
    p.add_argument("--dims", type=str, default=",".join(map(str, PAPER_DIMS)))
    p.add_argument("--meta-dim", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--json", type=str, default="")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dims = [int(d) for d in a.dims.split(",")]
    nb = naive_batch_size(a.in_dim, dims, a.naive_mem_gb)
    print(f"device={device} {torch.cuda.get_device_name() if device.type == 'cuda' else ''} torch={torch.__version__} "
          f"dims={[a.in_dim] + dims} batch={a.batch} naive_batch={nb}", flush=True)
    out = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
           "torch": torch.__version__, "dims": [a.in_dim] + dims, "runs": {}}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        key = "tf32" if tf32 else "fp32"
        res = {}
        for v in ("naive", "meta", "cp", "meta_learner"):
            try:
                res[v] = measure(v, nb if v == "naive" else a.batch, a.in_dim, dims, a.meta_dim, a.rank, a.repeats,
                                 device)
            except Exception as exc:  # noqa: BLE001 - report and go on
                res[v] = {"variant": v, "error": repr(exc)}
        print(f"--- {key} ---")
        print(f"{'variant':<13}{'batch':>7}{'ms/pass':>10}{'us/item':>10}{'peak MiB':>10}{'KiB/item':>10}")
        for r in res.values():
            if "error" in r:
                print(f"{r['variant']:<13} ERROR {r['error']}")
                continue
            print(f"{r['variant']:<13}{r['batch']:>7}{1e3 * r['seconds']:>10.3f}{r['us_per_item']:>10.3f}"
                  f"{r['peak_bytes'] / 2**20:>10.1f}{r['bytes_per_item'] / 1024:>10.1f}")
        if all("error" not in res[v] for v in ("naive", "meta", "cp")):
            n = res["naive"]
            for v in ("meta", "cp"):
                t = n["ms_per_item"] / res[v]["ms_per_item"]
                m = n["bytes_per_item"] / res[v]["bytes_per_item"] if res[v]["bytes_per_item"] else float("nan")
                res[f"{v}_time_ratio"], res[f"{v}_mem_ratio"] = t, m
                print(f"naive/{v}: time x{t:.1f}  memory x{m:.1f}")
        out["runs"][key] = res
        if device.type != "cuda":
            break
    print(json.dumps(out, sort_keys=True, default=str))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, sort_keys=True, default=str)


if __name__ == "__main__":
    main()
