"""Parallel TikTok hyper-parameter sweep with a hard deadline; selection on the VALID split only.

Each config is one ``python -m metammf_dist.cli train CONFIG overrides...`` process (own process group,
OMP_NUM_THREADS=1, wrapped in ``timeout``).  At the deadline every process still running is killed; runs
killed before their final test evaluation are evaluated from their best (valid-selected) checkpoint with
``metammf_dist.cli evaluate`` if time allows.  The summary is written in every case.

Usage: python experiments/gpu/sweep.py --deadline EPOCH_SECONDS --out DIR [--runs-root runs/sweep]
       [--device cuda|cpu] [--epochs 40] [--only N] [--extra key=value ...]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE = "configs/tiktok.yaml"
COMMON = ["train.graph_backend=torch"]
SEEDS = [2023, 7]
VARIANTS = {  # name -> overrides (configs/tiktok.yaml: lr 1e-3, wd 1e-4, neg 1, fanouts [20,20], patience 10)
    "base": [],
    "wd3e-4": ["train.weight_decay=3e-4"],
    "wd1e-3": ["train.weight_decay=1e-3"],
    "neg4": ["train.num_negatives=4"],
    "lr5e-4_p15": ["train.lr=5e-4", "train.patience=15"],
    "wd3e-4_neg4": ["train.weight_decay=3e-4", "train.num_negatives=4"],
}


def configs(epochs: int, extra, seeds=None, variants=None):
    out = []
    for seed in seeds or SEEDS:
        for name, ov in (variants or VARIANTS).items():
            out.append({"name": f"{name}_s{seed}", "variant": name, "seed": seed,
                        "overrides": COMMON + [f"train.seed={seed}", f"train.epochs={epochs}"] + ov + list(extra)})
    return out


def read_metrics(run: Path):
    """valid recall@20 / ndcg@20 per epoch and the logged test metrics from metrics.csv."""
    valid, test = {}, {}
    path = run / "metrics.csv"
    if not path.is_file():
        return valid, test
    with path.open() as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "valid" and row["metric"] in ("recall@20", "ndcg@20"):
                valid.setdefault(int(row["epoch"]), {})[row["metric"]] = float(row["value"])
            elif row["split"] == "test" and row["metric"]:
                test[row["metric"]] = float(row["value"])
    return valid, test


def last_json(path: Path):
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deadline", type=float, required=True, help="absolute time.time() by which all is written")
    p.add_argument("--out", required=True)
    p.add_argument("--runs-root", default="runs/sweep")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--only", type=int, default=0, help="first N configs only (logic checks)")
    p.add_argument("--eval-reserve", type=float, default=40.0, help="seconds kept for fallback evals + summary")
    p.add_argument("--extra", nargs="*", default=[])
    p.add_argument("--seeds", type=str, default="", help="comma list, e.g. 2023,7,11,13,17 (default: SEEDS)")
    p.add_argument("--variants", type=str, default="",
                   help='JSON {name: [overrides]} (default: VARIANTS), e.g. \'{"base": [], "neg4": ["train.num_negatives=4"]}\'')
    p.add_argument("--max-parallel", type=int, default=0, help="at most this many runs at once (0 = all)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(a.runs_root)
    root.mkdir(parents=True, exist_ok=True)
    cfgs = configs(a.epochs, a.extra, [int(x) for x in a.seeds.split(",") if x] or None,
                   json.loads(a.variants) if a.variants else None)
    if a.only:
        cfgs = cfgs[: a.only]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1",
               PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    train_deadline = a.deadline - a.eval_reserve
    procs = {}
    t0 = time.time()
    limit = a.max_parallel or len(cfgs)
    print(f"[sweep] {len(cfgs)} runs on {a.device}, {limit} at a time, training deadline in "
          f"{train_deadline - t0:.0f}s", flush=True)
    queue = list(cfgs)

    def launch(c):
        run = root / c["name"]
        budget = max(5, int(train_deadline - time.time()))
        cmd = ["timeout", "-k", "5", str(budget), sys.executable, "-m", "metammf_dist.cli", "train", BASE,
               f"run_dir={run}"] + c["overrides"]
        log = open(root / f"{c['name']}.log", "w")
        procs[c["name"]] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True), log, time.time())

    ended = {}
    while True:
        now = time.time()
        while queue and len(procs) - len(ended) < limit and now < train_deadline - 20:
            launch(queue.pop(0))
        for n, (pr, _, start) in procs.items():
            if n not in ended and pr.poll() is not None:
                ended[n] = now - start
                print(f"[sweep] {n} exited rc={pr.returncode} after {ended[n]:.0f}s", flush=True)
        if (len(ended) == len(procs) and (not queue or now >= train_deadline - 20)) or now >= train_deadline:
            break
        time.sleep(1)
    for c in queue:  # never started: no time left
        print(f"[sweep] {c['name']} not started (deadline)", flush=True)
    cfgs = [c for c in cfgs if c["name"] in procs]
    for c in cfgs:
        pr, log, start = procs[c["name"]]
        if pr.poll() is None:
            kill_group(pr)
            c["status"] = "killed_at_deadline"
        else:
            c["status"] = {0: "ok", 124: "timeout", 137: "timeout"}.get(pr.returncode, f"rc={pr.returncode}")
        c["seconds"] = round(ended.get(c["name"], time.time() - start), 1)
        log.close()
    # fallback: evaluate best checkpoints of runs without test metrics
    pending = []
    for c in cfgs:
        run = root / c["name"]
        valid, test = read_metrics(run)
        c["valid"], c["test"] = valid, test
        if not test and valid and time.time() < a.deadline - 15:
            left = max(5, int(a.deadline - time.time() - 10))
            cmd = ["timeout", "-k", "3", str(left), sys.executable, "-m", "metammf_dist.cli", "evaluate", str(run)]
            f = open(root / f"{c['name']}.eval.log", "w")
            pending.append((c, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True), f))
    for c, pr, f in pending:
        try:
            pr.wait(max(1, a.deadline - time.time() - 8))
        except subprocess.TimeoutExpired:
            kill_group(pr)
        f.close()
        js = last_json(root / f"{c['name']}.eval.log")
        if js:
            c["test"] = {k: v for k, v in js.items() if isinstance(v, float)}
            c["test_from"] = f"evaluate {js.get('checkpoint')}"
    rows = []
    for c in cfgs:
        valid, test = c["valid"], c["test"]
        r20 = {e: m.get("recall@20", float("nan")) for e, m in valid.items()}
        best_e = max(r20, key=lambda e: r20[e]) if r20 else None
        top3 = sorted(r20.values(), reverse=True)[:3]
        rows.append({
            "name": c["name"], "variant": c["variant"], "seed": c["seed"], "status": c["status"],
            "epochs_done": max(valid) if valid else 0, "best_epoch": best_e,
            "valid_r20_best": round(r20[best_e], 5) if best_e else None,
            "valid_ndcg20_at_best": round(valid[best_e].get("ndcg@20", float("nan")), 5) if best_e else None,
            "valid_r20_top3_mean": round(statistics.mean(top3), 5) if top3 else None,
            "test_r20": round(test["recall@20"], 5) if "recall@20" in test else None,
            "test_ndcg20": round(test["ndcg@20"], 5) if "ndcg@20" in test else None,
            "test_r10": round(test["recall@10"], 5) if "recall@10" in test else None,
            "test_from": c.get("test_from", "train" if test else ""),
            "seconds": c["seconds"], "overrides": " ".join(o for o in c["overrides"] if o not in COMMON),
        })
    rows.sort(key=lambda r: -(r["valid_r20_best"] or -1))
    fields = list(rows[0]) if rows else ["name", "variant", "seed", "status"]
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    agg = {}
    for r in rows:
        agg.setdefault(r["variant"], []).append(r)

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return round(statistics.mean(vals), 5) if vals else None

    variants = sorted(
        ({"variant": v, "n": len(rs), "valid_r20_best_mean": mean([r["valid_r20_best"] for r in rs]),
          "valid_r20_top3_mean": mean([r["valid_r20_top3_mean"] for r in rs]),
          "test_r20_mean": mean([r["test_r20"] for r in rs]), "test_ndcg20_mean": mean([r["test_ndcg20"] for r in rs])}
         for v, rs in agg.items()),
        key=lambda d: -(d["valid_r20_best_mean"] or -1))
    (out / "sweep_summary.json").write_text(json.dumps({"runs": rows, "variants": variants,
                                                        "device": a.device}, indent=1))
    cols = ["name", "status", "epochs_done", "best_epoch", "valid_r20_best", "valid_r20_top3_mean",
            "valid_ndcg20_at_best", "test_r20", "test_ndcg20", "seconds"]
    print("\t".join(cols))
    for r in rows:
        print("\t".join(str(r[k]) for k in cols))
    print("[sweep] per variant (mean over seeds), sorted by valid R@20:")
    for v in variants:
        print(json.dumps(v))
    for c in cfgs:  # a failing run: show the end of its log
        if c["status"] not in ("ok", "killed_at_deadline", "timeout"):
            print(f"[sweep] {c['name']} {c['status']} log tail:")
            print((root / f"{c['name']}.log").read_text()[-2000:])
    print(f"[sweep] done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
