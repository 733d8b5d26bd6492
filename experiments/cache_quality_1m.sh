#!/usr/bin/env bash
# Test Recall@20 at 1M items (1M users, 10M interactions, 384-d float16 features) after the same number of
# training steps without the fusion cache, with it (K = 400) and with GCN layer histories; same seed, same 20,000
# test users (experiments/scale_1m.sh's setup).  Prints one JSON line per mode and a summary.
#   bash experiments/cache_quality_1m.sh [STEPS]     (default 600; the uncached run is ~5 s/step on 2 cores)
#   RUN_MODES="history cache" bash experiments/cache_quality_1m.sh 0    (0 = one whole epoch, 2,479 steps; the
#   uncached epoch would take ~4 h here, so leave it out; the summary compares the modes that ran)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}
OUT=runs/cache-quality-1m-s$STEPS
export TQDM_DISABLE=1
mkdir -p "$OUT"
declare -A MODES=([nocache]="train.fusion_cache_refresh=0" [cache]="" [history]="train.gcn_history=true")
for mode in ${RUN_MODES:-history cache nocache}; do
  if [ ! -f "$OUT/$mode/summary.json" ]; then
    # shellcheck disable=SC2086
    bash experiments/scale_1m.sh "$OUT/$mode" train.max_steps_per_epoch="$STEPS" ${MODES[$mode]} | tail -1 > "$OUT/$mode.summary.tmp"
    mv "$OUT/$mode.summary.tmp" "$OUT/$mode/summary.json"
  fi
done
python3 - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
modes = ("nocache", "cache", "history")  # slowest first
res = {mode: json.load(open(f"{out}/{mode}/summary.json")) for mode in modes if os.path.exists(f"{out}/{mode}/summary.json")}
base_mode = next(mode for mode in modes if mode in res)  # the slowest mode that ran
base = res[base_mode]["recall@20"]
for mode, r in res.items():
    print(json.dumps({"mode": mode, **r}))
print(json.dumps({"steps": res[base_mode]["train_steps"],
                  **{f"{mode}_recall@20": round(r["recall@20"], 4) for mode, r in res.items()},
                  **{f"{mode}_vs_{base_mode}": round(r["recall@20"] / base - 1, 4) for mode, r in res.items()
                     if mode != base_mode},
                  **{f"{mode}_train_seconds": r["train_seconds"] for mode, r in res.items()}}))
PYEOF
