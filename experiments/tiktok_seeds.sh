#!/usr/bin/env bash
# Seed spread of one TikTok config: trains configs/tiktok.yaml + OVERRIDES once per seed (two runs at a time,
# one thread each: OMP_NUM_THREADS=1 makes every run bit-reproducible), then prints each seed's best valid
# eval.metric and test Recall@20 / NDCG@20, and their means (95 % interval, minimum).  What docs/results/tiktok.md's
# tables were made with.  Run folders: runs/seeds/NAME-sSEED (checkpoints removed afterwards).
#   bash experiments/tiktok_seeds.sh NAME [key=value ...]          SEEDS="2023 7 11 13" by default
#   e.g. SEEDS="1 2 3 4" bash experiments/tiktok_seeds.sh config   /   bash experiments/tiktok_seeds.sh sage model.gcn_type=sage \
#        model.item_knn=0 train.epochs=40 train.patience=10
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: tiktok_seeds.sh NAME [key=value ...]}; shift
read -r -a seeds <<< "${SEEDS:-2023 7 11 13}"
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions" OMP_NUM_THREADS=1
out=runs/seeds; mkdir -p "$out"
for ((k = 0; k < ${#seeds[@]}; k += 2)); do
  for seed in "${seeds[@]:k:2}"; do
    .venv/bin/python -m metammf_dist train configs/tiktok.yaml "train.seed=$seed" "run_dir=$out/$name-s$seed" "$@" --overwrite \
      > "$out/$name-s$seed.log" 2>&1 &
  done
  wait
done
rm -rf "$out/$name"-s*/checkpoints
.venv/bin/python - "$out" "$name" "${seeds[@]}" <<'PY'
import json, re, statistics, sys
out, name, seeds = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = []
for seed in seeds:
    text = open(f"{out}/{name}-s{seed}.log").read()
    try:
        test = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sys.exit(f"seed {seed}: no final metrics, see {out}/{name}-s{seed}.log")
    valid = max(float(v) for v in re.findall(r"valid \S+=([0-9.]+)", text))  # eval.metric at its best epoch
    rows.append((seed, valid, test["recall@20"], test["ndcg@20"], test["best_epoch"]))
    print(f"{name} seed {seed}: best valid {valid:.4f}  test R@20 {rows[-1][2]:.4f}  NDCG@20 {rows[-1][3]:.4f}  (epoch {rows[-1][4]})")
from metammf_dist.ablation.stats import interval
mean = lambda i: statistics.mean(r[i] for r in rows)
low = lambda i: min(r[i] for r in rows)
half = lambda i: (interval([r[i] for r in rows]).high - mean(i)) if len(rows) > 1 else float("nan")
print(f"{name} mean over {len(rows)} seeds (± 95 % Student-t half-width, lowest): best valid {mean(1):.4f}  "
      f"test R@20 {mean(2):.4f} ± {half(2):.4f} ({low(2):.4f})  NDCG@20 {mean(3):.4f} ± {half(3):.4f} ({low(3):.4f})")
PY
