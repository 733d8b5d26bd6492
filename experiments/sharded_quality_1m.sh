#!/usr/bin/env bash
# Row-sharded ID tables against replicated sparse tables at 1M items x 1M users x 10M interactions (384-d
# float16 features streamed from shards; experiments/scale_1m.sh's catalog), 2 gloo ranks, the same steps, seed,
# fusion cache (K = 400) and 20,000 test users.  Optimizers: sparse = lazy Adam (the sparse tables' default,
# id_lr 0.01); sharded = FBGEMM's fused row-wise Adagrad (the one CPU choice with a per-row state; id_lr 0.05,
# as in the equivalence tests).  Latest lane (TorchRec).  Prints one JSON line per mode and a summary.
#   bash experiments/sharded_quality_1m.sh [STEPS]      (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-600}
OUT=runs/sharded-quality-1m-s$STEPS
DATA=bench_out/scale/data/synth-i1000000-u1000000-e10000000-image128-text256-s1
PY=${PY:-.venv-latest/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions-latest} OMP_NUM_THREADS=1 TQDM_DISABLE=1
if [ ! -f "$DATA/dataset.json" ]; then
  $PY -m metammf_dist synth "$DATA" --users 1000000 --items 1000000 --interactions 10000000 \
    --modality image:128 --modality text:256 --seed 1
fi
mkdir -p "$OUT"
declare -A MODES=(
  [sparse]="train.id_tables=sparse train.id_optimizer=adam train.id_lr=0.01"
  [sharded]="train.id_tables=sharded model.id_init=blocks train.id_optimizer=rowwise_adagrad train.id_lr=0.05"
)
for mode in ${RUN_MODES:-sparse sharded}; do
  if [ ! -f "$OUT/$mode.json" ]; then
    # shellcheck disable=SC2086
    $PY -m torch.distributed.run --nproc_per_node=2 --master_port=$((29000 + RANDOM % 1000)) -m metammf_dist train \
      configs/scale/base.yaml data.path="$DATA" run_dir="$OUT/$mode" train.graph_backend=torch \
      train.fusion_cache_refresh=400 train.max_steps_per_epoch="$STEPS" eval.max_users=20000 model.item_knn=0 \
      ${MODES[$mode]} --overwrite | tail -1 > "$OUT/$mode.tmp"
    mv "$OUT/$mode.tmp" "$OUT/$mode.json"
  fi
done
$PY - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
res = {}
for mode in ("sparse", "sharded"):
    m = json.load(open(f"{out}/{mode}.json"))
    usage = json.load(open(f"{out}/{mode}/usage.json"))
    res[mode] = {"recall@20": m["recall@20"], "ndcg@20": m["ndcg@20"], "train_steps": usage["train_steps"],
                 "train_seconds": round(usage["train_seconds"]),
                 "peak_rss_gib_per_rank": [round(b / 2**30, 2) for b in usage["peak_rss_bytes_per_rank"]]}
    print(json.dumps({"mode": mode, **res[mode]}))
base = res["sparse"]["recall@20"]
print(json.dumps({"sharded_vs_sparse_recall@20": round(res["sharded"]["recall@20"] / base - 1, 4) if base else None,
                  "sparse_optimizer": "lazy adam", "sharded_optimizer": "rowwise adagrad"}))
PYEOF
