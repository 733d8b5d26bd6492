"""fp32 / TF32 / bf16 side by side: examples/s, peak memory and test Recall@20 after the same number of steps.

For each dataset (TikTok, and a synthetic 1M × 1M × 10M catalog with 384-d features) and each precision, one real
``metammf-dist train`` run in its own process, the same seed and steps:

* ``fp32``: ``train.tf32=false`` (full fp32 matmuls);
* ``tf32``: ``train.tf32=true`` (TF32 tensor cores for fp32 matmuls; on CPU the same as fp32);
* ``bf16``: ``train.ds_config=configs/ds/zero1_bf16.json`` (DeepSpeed bf16: bf16 parameters, fp32 masters;
  ZeRO-1 is ZeRO-0 for one rank, and DeepSpeed 0.18.2 cannot train bf16 at stage 0).

Examples/s and the peak come from the run's ``usage.json`` (``peak_device_bytes`` on CUDA: torch's peak allocated
memory; the peak RSS on CPU), Recall@20 from ``final_metrics.json`` (TikTok: every test user; 1M: a fixed random
``--eval-users`` users).  ``train.num_workers=1`` (sampling, feature gather and, on CUDA, the pinned, asynchronous
host-to-device copy run one batch ahead); ``--no-prefetch`` runs the same with ``train.num_workers=0``, whose
examples/s against the default measure what the overlap buys.  Ends with one JSON line of ratios
(``<dataset>_bf16_vs_fp32_examples_per_s``, ``<dataset>_bf16_vs_fp32_peak_mem``, ``<dataset>_bf16_recall_rel``, the
same for tf32).

    python experiments/gpu/precision_bench.py --tiktok data/tiktok --synth bench_out/synth-1m [--steps 300]
    python experiments/gpu/precision_bench.py --tiktok data/tiktok --steps 20 --device-check cpu   (logic check)

Datasets: ``metammf-dist prepare mmrec ../shared/data/tiktok data/tiktok`` and ``metammf-dist synth
bench_out/synth-1m --users 1000000 --items 1000000 --interactions 10000000 --modality image:128 --modality
text:256 --seed 1``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRECISIONS = {
    "fp32": ["train.tf32=false"],
    "tf32": ["train.tf32=true"],
    "bf16": ["train.tf32=true", "train.ds_config=configs/ds/zero1_bf16.json"],
}


def run(config: str, overrides, run_dir: Path, timeout: int) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "metammf_dist", "train", config, f"run_dir={run_dir}", *overrides, "--overwrite"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    usage = json.loads((run_dir / "usage.json").read_text())
    final = json.loads((run_dir / "final_metrics.json").read_text())
    peak = usage.get("peak_device_bytes") or max(usage["peak_rss_bytes_per_rank"])
    return {"examples_per_s": usage["train_examples"] / max(usage["train_seconds"], 1e-9), "peak_bytes": peak,
            "peak_is_device": bool(usage.get("peak_device_bytes")), "recall@20": final["recall@20"],
            "ndcg@20": final["ndcg@20"], "wall_s": time.perf_counter() - started, "steps": usage["train_steps"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiktok", default="data/tiktok", help="TikTok dataset folder ('' to skip)")
    parser.add_argument("--synth", default="", help="1M synthetic catalog folder ('' to skip)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--eval-users", type=int, default=20000, help="ranked users on the synthetic catalog")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--no-prefetch", action="store_true", help="also run each with train.num_workers=0")
    parser.add_argument("--out", default="bench_out/precision", help="run folders")
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--device-check", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: refuse to run without a GPU (default); cpu: run anyway (logic check)")
    args = parser.parse_args(argv)
    import torch

    if args.device_check == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine (--device-check cpu runs it on CPU)")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    datasets = {}
    if args.tiktok:
        datasets["tiktok"] = ("configs/tiktok.yaml", [f"data.path={args.tiktok}", "train.epochs=1",
                                                      f"train.max_steps_per_epoch={args.steps}", "train.num_workers=1"])
    if args.synth:
        datasets["synth1m"] = ("configs/scale/base.yaml", [f"data.path={args.synth}", "train.epochs=1",
                                                           f"train.max_steps_per_epoch={args.steps}",
                                                           f"eval.max_users={args.eval_users}",
                                                           "train.fusion_cache_refresh=400"])
    out, summary = Path(args.out), {"device": device, "steps": args.steps}
    for name, (config, base) in datasets.items():
        results = {}
        for precision in args.precisions.split(","):
            variants = {"": []} | ({"_sync": ["train.num_workers=0"]} if args.no_prefetch else {})
            for suffix, extra in variants.items():
                key = precision + suffix
                results[key] = r = run(config, [*base, *PRECISIONS[precision], *extra], out / f"{name}-{key}",
                                       args.timeout)
                print(f"{name:8s} {key:10s} {r['examples_per_s']:>12,.0f} ex/s  peak {r['peak_bytes'] / 2**20:>9,.0f} "
                      f"MiB{' (device)' if r['peak_is_device'] else ' (RSS)'}  R@20 {r['recall@20']:.4f}  "
                      f"NDCG@20 {r['ndcg@20']:.4f}  ({r['steps']} steps, {r['wall_s']:.0f} s)", flush=True)
        base_r = results.get("fp32")
        for key, r in results.items():
            summary[f"{name}_{key}_examples_per_s"] = r["examples_per_s"]
            summary[f"{name}_{key}_recall@20"] = r["recall@20"]
            if base_r and key != "fp32":
                summary[f"{name}_{key}_vs_fp32_examples_per_s"] = r["examples_per_s"] / base_r["examples_per_s"]
                summary[f"{name}_{key}_vs_fp32_peak_mem"] = r["peak_bytes"] / base_r["peak_bytes"]
                summary[f"{name}_{key}_recall_rel"] = r["recall@20"] / base_r["recall@20"] - 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
