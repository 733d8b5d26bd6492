#!/usr/bin/env bash
# Issue 7: test Recall@20 at convergence (early stopping on valid Recall@20) without the fusion cache, with it
# (K = 10), with it plus sampled neighbour fusion gradients (K = 10, train.fusion_cache_grad_items = GRAD_ITEMS,
# default 2048; mode "cachegrad") and with GCN layer histories (K = 10), over several seeds, on a small synthetic catalog.
#   bash scripts/cache_quality_converged.sh [ITEMS] [SEEDS...]     (default 10000, seeds 1 2 3; ~25 min on 2 cores)
#   RUN_MODES="cache" bash scripts/cache_quality_converged.sh       (rerun some modes; the summary reads all results)
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS=${1:-10000}; SEEDS=("${@:2}"); [ ${#SEEDS[@]} -gt 0 ] || SEEDS=(1 2 3)
PY=${PY:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
DATA=bench_out/scale/data/synth-i${ITEMS}-u${ITEMS}-e$((ITEMS * 10))-image128-text256-s1
[ -f "$DATA/dataset.json" ] || $PY -m metammf_dist synth "$DATA" --users "$ITEMS" --items "$ITEMS" \
  --interactions $((ITEMS * 10)) --modality image:128 --modality text:256 --seed 1
OUT=runs/cache-quality-converged-i$ITEMS
mkdir -p "$OUT"
declare -A MODES=([nocache]="train.fusion_cache_refresh=0" [cache]="train.fusion_cache_refresh=10"
                  [cachegrad]="train.fusion_cache_refresh=10 train.fusion_cache_grad_items=${GRAD_ITEMS:-2048}"
                  [history]="train.fusion_cache_refresh=10 train.gcn_history=true")
for seed in "${SEEDS[@]}"; do
  for mode in ${RUN_MODES:-nocache cache cachegrad history}; do
    # shellcheck disable=SC2086
    $PY -m metammf_dist train configs/scale/base.yaml data.path="$DATA" run_dir="$OUT/$mode-s$seed" \
      train.seed="$seed" train.epochs=30 train.patience=3 eval.max_users=0 ${MODES[$mode]} | tail -1 > "$OUT/$mode-s$seed.json"
  done
done
$PY - "$OUT" <<'PYEOF'
import glob, json, statistics, sys
out = sys.argv[1]
res = {}
for path in sorted(glob.glob(f"{out}/*-s*.json")):
    mode = path.rsplit("/", 1)[1].rsplit("-s", 1)[0]
    m = json.load(open(path))
    t = json.load(open(path[:-5] + "/usage.json"))
    res.setdefault(mode, []).append((m["recall@20"], m["ndcg@20"], m["best_epoch"], t["train_seconds"]))
base = statistics.mean(r[0] for r in res["nocache"])
for mode, rows in res.items():
    r20 = statistics.mean(r[0] for r in rows)
    print(json.dumps({"mode": mode, "runs": len(rows), "recall@20": round(r20, 4),
                      "ndcg@20": round(statistics.mean(r[1] for r in rows), 4),
                      "recall@20_per_seed": [round(r[0], 4) for r in rows], "best_epochs": [r[2] for r in rows],
                      "train_seconds": round(statistics.mean(r[3] for r in rows), 1),
                      "relative_to_nocache": round(r20 / base - 1, 4)}))
PYEOF
