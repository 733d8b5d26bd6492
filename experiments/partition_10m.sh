#!/usr/bin/env bash
# A catalog the replicated build cannot hold, trained on this one 24 GiB machine: 10M users x 10M items x 100M
# pairs (384-d float16 features streamed from Parquet shards), 4 gloo ranks, row-sharded ID tables (TorchRec,
# fused row-wise Adagrad) + the fusion cache sharded with them + the train graph mapped once per machine,
# STEPS steps of 3,000 pairs (ID rows start ~ N(0, 0.01^2): docs/results/partitioning.md says why), then a
# sampled evaluation (20,000 users, all 10M items ranked; valid, then test).
# Latest lane (TorchRec).  Prints `plan` of the replicated and the sharded build side by side, the whole
# machine's measured peak (experiments/machine_memory.py) and test Recall@20 of the model and of popularity on
# the same users; the last line is one JSON object.
#   bash experiments/partition_10m.sh [STEPS]      (default 700)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-700}
OUT=runs/partition-10m-s$STEPS
DATA=bench_out/scale/data/synth-i10000000-u10000000-e100000000-image128-text256-s1
PY=${PY:-.venv-latest/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions-latest} OMP_NUM_THREADS=1 TQDM_DISABLE=1
# glibc: allocations from 64 KiB up are mapped and returned when freed (its dynamic threshold otherwise moves up to
# 32 MiB and the heap keeps what evaluation's chunks freed between the tables they leave)
export MALLOC_MMAP_THRESHOLD_=65536
if [ ! -f "$DATA/dataset.json" ]; then
  $PY -m metammf_dist synth "$DATA" --users 10000000 --items 10000000 --interactions 100000000 \
    --modality image:128 --modality text:256 --seed 1
fi
mkdir -p "$OUT"
COMMON=(configs/scale/base.yaml "data.path=$DATA" train.graph_backend=torch train.fusion_cache_refresh=400
        eval.max_users=20000 eval.user_chunk=32 data.cache_mb=64 model.item_knn=0 model.id_init=blocks model.id_init_std=0.01
        train.id_optimizer=rowwise_adagrad train.id_lr=0.05)
for mode in sparse sharded; do
  $PY -m metammf_dist plan "${COMMON[@]}" "train.id_tables=$mode" --world-size 4 --ranks-per-node 4 --device cpu \
    --users 10000000 --items 10000000 --interactions 100000000 --feat-dim 384 > "$OUT/plan-$mode.txt"
  tail -1 "$OUT/plan-$mode.txt" > "$OUT/plan-$mode.json"
done
if [ ! -f "$OUT/train.json" ]; then
  $PY experiments/machine_memory.py --out "$OUT/machine_memory.json" -- \
    $PY -m torch.distributed.run --nproc_per_node=4 --master_port=$((29000 + RANDOM % 1000)) -m metammf_dist train \
    "${COMMON[@]}" train.id_tables=sharded "train.max_steps_per_epoch=$STEPS" "run_dir=$OUT/run" --overwrite \
    | tail -1 > "$OUT/train.tmp"
  mv "$OUT/train.tmp" "$OUT/train.json"
fi
$PY - "$OUT" "$DATA" <<'PYEOF'
import json, sys
from metammf_dist.data.dataset import Dataset
from metammf_dist.evaluation.popularity import evaluate_popularity
from metammf_dist.train.inference import split_csr

out, data = sys.argv[1], sys.argv[2]
model = json.load(open(f"{out}/train.json"))
usage = json.load(open(f"{out}/run/usage.json"))
memory = json.load(open(f"{out}/machine_memory.json"))
plans = {mode: json.load(open(f"{out}/plan-{mode}.json")) for mode in ("sparse", "sharded")}
ds = Dataset.open(data)
truth, excl, users = split_csr(ds, "test", ["train", "valid"], 20000)  # the users the run ranked
# exact full ranking over all 10M items (evaluate_popularity ranks the popularity order's prefix per user)
pop = evaluate_popularity(ds.interactions("train")[1], ds.num_items, excl, truth, users, ks=(10, 20))
for mode, plan in plans.items():
    print(json.dumps({"plan": mode, "fits": plan["fits"], "peak_gib_per_rank": plan["peak_gib_per_rank"],
                      "host_gib_per_machine": plan["host_gib_per_node"]}))
print(json.dumps({"steps": usage["train_steps"], "train_seconds": round(usage["train_seconds"]),
                  "peak_rss_gib_per_rank": [round(b / 2**30, 2) for b in usage["peak_rss_bytes_per_rank"]],
                  **memory}))
print(json.dumps({
    "steps": usage["train_steps"], "ranked_users": int(pop["num_users"]),
    "recall@20": round(model["recall@20"], 4), "ndcg@20": round(model["ndcg@20"], 4),
    "popularity_recall@20": round(pop["recall@20"], 4), "popularity_ndcg@20": round(pop["ndcg@20"], 4),
    "machine_peak_gib": memory["peak_pss_sum_gib"], "machine_used_peak_gib": memory["peak_machine_used_gib"],
    "plan_sharded_gib_per_machine": plans["sharded"]["host_gib_per_node"],
    "plan_replicated_gib_per_machine": plans["sparse"]["host_gib_per_node"],
}))
PYEOF
