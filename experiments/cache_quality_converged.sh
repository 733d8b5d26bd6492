#!/usr/bin/env bash
# Test Recall@20 at convergence (early stopping on valid Recall@20) without the fusion cache, with it (K = 10) and
# with GCN layer histories (K = 10), over several seeds, on a small synthetic catalog.  Diagnostic mode
# (RUN_MODES=...): cachek1 (K = 1: every neighbour's fusion exact in the forward).
#   bash experiments/cache_quality_converged.sh [ITEMS] [SEEDS...]     (default 10000, seeds 1 2 3; ~25 min on 2 cores)
#   RUN_MODES="cache" bash experiments/cache_quality_converged.sh       (rerun some modes; the summary reads all results)
#   OMP_NUM_THREADS=1 RUN_MODES=nocache bash experiments/cache_quality_converged.sh 10000 7 8   (two such in parallel)
#   EPOCHS=30 PATIENCE=30 bash experiments/cache_quality_converged.sh ...   (fixed length: every run trains all EPOCHS and
#   is tested at its best valid epoch; results in a folder of their own, ...-e30-p30)
# Runs are not bit-reproducible (float sums in threads; trajectories drift apart within ~50 steps), so a run is one
# draw: single runs of one configuration spread by about +-0.007 here, hence several seeds and the 95 % interval.
set -euo pipefail
cd "$(dirname "$0")/.."
ITEMS=${1:-10000}; SEEDS=("${@:2}"); [ ${#SEEDS[@]} -gt 0 ] || SEEDS=(1 2 3)
PY=${PY:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TQDM_DISABLE=1
DATA=bench_out/scale/data/synth-i${ITEMS}-u${ITEMS}-e$((ITEMS * 10))-image128-text256-s1
[ -f "$DATA/dataset.json" ] || $PY -m metammf_dist synth "$DATA" --users "$ITEMS" --items "$ITEMS" \
  --interactions $((ITEMS * 10)) --modality image:128 --modality text:256 --seed 1
EPOCHS=${EPOCHS:-30} PATIENCE=${PATIENCE:-3}  # early stopping on valid Recall@20 with this patience
OUT=runs/cache-quality-converged-i$ITEMS
[ "$EPOCHS/$PATIENCE" = 30/3 ] || OUT=$OUT-e$EPOCHS-p$PATIENCE
mkdir -p "$OUT"
declare -A MODES=([nocache]="train.fusion_cache_refresh=0" [cache]="train.fusion_cache_refresh=10"
                  [cachek1]="train.fusion_cache_refresh=1" [history]="train.fusion_cache_refresh=10 train.gcn_history=true")
for seed in "${SEEDS[@]}"; do
  for mode in ${RUN_MODES:-nocache cache history}; do
    # shellcheck disable=SC2086
    $PY -m metammf_dist train configs/scale/base.yaml data.path="$DATA" run_dir="$OUT/$mode-s$seed" \
      train.seed="$seed" train.epochs="$EPOCHS" train.patience="$PATIENCE" eval.max_users=0 ${MODES[$mode]} --overwrite \
      | tail -1 > "$OUT/$mode-s$seed.json"
  done
done
$PY - "$OUT" <<'PYEOF'
import glob, json, math, os, statistics, sys
out = sys.argv[1]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093}
res, by_seed = {}, {}
for path in sorted(glob.glob(f"{out}/*-s*.json")):
    mode, seed = path.rsplit("/", 1)[1][:-5].rsplit("-s", 1)
    if os.path.getsize(path) == 0:  # a run still going (or one that failed): left out
        continue
    m = json.load(open(path))
    by_seed.setdefault(mode, {})[seed] = m["recall@20"]
    t = json.load(open(path[:-5] + "/usage.json"))
    res.setdefault(mode, []).append((m["recall@20"], m["ndcg@20"], m["best_epoch"], t["train_seconds"]))
base_runs = [r[0] for r in res["nocache"]]
base = statistics.mean(base_runs)
for mode, rows in res.items():
    runs = [r[0] for r in rows]
    r20 = statistics.mean(runs)
    line = {"mode": mode, "runs": len(rows), "recall@20": round(r20, 4),
            "ndcg@20": round(statistics.mean(r[1] for r in rows), 4),
            "recall@20_per_seed": [round(r, 4) for r in runs], "best_epochs": [r[2] for r in rows],
            "train_seconds": round(statistics.mean(r[3] for r in rows), 1),
            "relative_to_nocache": round(r20 / base - 1, 4)}
    if mode != "nocache" and len(runs) > 1 and len(base_runs) > 1:
        # runs are not bit-reproducible (2 threads): treat each as an independent draw; normal 95 % interval
        se = math.sqrt(statistics.variance(runs) / len(runs) + statistics.variance(base_runs) / len(base_runs))
        line["relative_95ci"] = [round((r20 - base - 1.96 * se) / base, 4), round((r20 - base + 1.96 * se) / base, 4)]
        # paired by seed (same initial weights and batches in every mode, so seeds that run high do so in all
        # modes): mean of the per-seed relative differences with a Student-t 95 % interval
        diffs = [by_seed[mode][s] / by_seed["nocache"][s] - 1 for s in by_seed[mode] if s in by_seed["nocache"]]
        if len(diffs) > 1:
            half = T975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
            mean = statistics.mean(diffs)
            line["paired_seeds"] = len(diffs)
            line["paired_relative"] = round(mean, 4)
            line["paired_relative_95ci"] = [round(mean - half, 4), round(mean + half, 4)]
    print(json.dumps(line))
PYEOF
