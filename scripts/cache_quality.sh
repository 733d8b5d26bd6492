#!/usr/bin/env bash
# Issue 7: test Recall@20 with and without the fusion cache, same seed and data (100k-item synthetic catalog,
# one epoch, every test user ranked).  bash scripts/cache_quality.sh [K] [ITEMS]   (~8 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-50}; ITEMS=${2:-100000}
PY=${PY:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
DATA=bench_out/scale/data/synth-i${ITEMS}-u${ITEMS}-e$((ITEMS * 10))-image128-text256-s1
[ -f "$DATA/dataset.json" ] || $PY -m metammf_dist synth "$DATA" --users "$ITEMS" --items "$ITEMS" \
  --interactions $((ITEMS * 10)) --modality image:128 --modality text:256 --seed 1
for cache in "$K" 0; do
  $PY -m metammf_dist train configs/scale/base.yaml data.path="$DATA" run_dir="runs/cache-quality-k$cache" \
    train.fusion_cache_refresh="$cache" eval.max_users=0 | tail -1 > "runs/cache-quality-k$cache.json"
done
$PY - "$K" <<'PYEOF'
import json, sys
k = sys.argv[1]
on, off = (json.load(open(f"runs/cache-quality-k{x}.json")) for x in (k, "0"))
t_on, t_off = (json.load(open(f"runs/cache-quality-k{x}/usage.json"))["train_seconds"] for x in (k, "0"))
print(json.dumps({"cache_recall@20": on["recall@20"], "nocache_recall@20": off["recall@20"],
                  "relative_difference": on["recall@20"] / off["recall@20"] - 1,
                  "cache_ndcg@20": on["ndcg@20"], "nocache_ndcg@20": off["ndcg@20"],
                  "train_seconds_cache": round(t_on), "train_seconds_nocache": round(t_off)}))
PYEOF
