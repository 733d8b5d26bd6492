#!/usr/bin/env bash
# Test Recall@20 with and without the fusion cache, same seed and data (100k-item synthetic catalog,
# one epoch, every test user ranked).  bash experiments/cache_quality.sh [K] [ITEMS] [key=value ...]   (~8 min on 2 cores)
# Extra key=value overrides apply to the cached run only, e.g. train.gcn_history=true (layer histories);
# REUSE_NOCACHE=1 keeps an earlier no-cache run of the same catalog instead of training it again.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-50}; ITEMS=${2:-100000}; EXTRA=("${@:3}")
TAG=k$K; [ ${#EXTRA[@]} -eq 0 ] || TAG="k$K-$(echo "${EXTRA[*]}" | md5sum | cut -c1-6)"
PY=${PY:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
DATA=bench_out/scale/data/synth-i${ITEMS}-u${ITEMS}-e$((ITEMS * 10))-image128-text256-s1
[ -f "$DATA/dataset.json" ] || $PY -m metammf_dist synth "$DATA" --users "$ITEMS" --items "$ITEMS" \
  --interactions $((ITEMS * 10)) --modality image:128 --modality text:256 --seed 1
mkdir -p runs
$PY -m metammf_dist train configs/scale/base.yaml data.path="$DATA" run_dir="runs/cache-quality-$TAG" \
  train.fusion_cache_refresh="$K" eval.max_users=0 "${EXTRA[@]}" --overwrite | tail -1 > "runs/cache-quality-$TAG.json"
if [ -z "${REUSE_NOCACHE:-}" ] || [ ! -s runs/cache-quality-k0.json ]; then  # REUSE_NOCACHE=1: keep a finished one
  $PY -m metammf_dist train configs/scale/base.yaml data.path="$DATA" run_dir="runs/cache-quality-k0" \
    train.fusion_cache_refresh=0 eval.max_users=0 --overwrite | tail -1 > "runs/cache-quality-k0.json"
fi
$PY - "$TAG" "${EXTRA[*]}" <<'PYEOF'
import json, sys
tag = sys.argv[1]
on, off = (json.load(open(f"runs/cache-quality-{x}.json")) for x in (tag, "k0"))
t_on, t_off = (json.load(open(f"runs/cache-quality-{x}/usage.json"))["train_seconds"] for x in (tag, "k0"))
print(json.dumps({"cached_run": tag, "overrides": sys.argv[2], "cache_recall@20": on["recall@20"], "nocache_recall@20": off["recall@20"],
                  "relative_difference": on["recall@20"] / off["recall@20"] - 1,
                  "cache_ndcg@20": on["ndcg@20"], "nocache_ndcg@20": off["ndcg@20"],
                  "train_seconds_cache": round(t_on), "train_seconds_nocache": round(t_off)}))
PYEOF
