#!/usr/bin/env bash
# Reproducibility of 2-rank runs (docs/design/zero3_gloo.md): N identical 2-rank trainings of the TikTok config
# with the small test model on a 300 x 200 synthetic catalog; prints, per run, a hash of its per-step training
# losses, its in-training test NDCG@10 and that of `evaluate` on its checkpoint (one process, no engine), then
# how many distinct results there were (1 = reproducible) and how many runs' two NDCG@10 values differ.
#   bash experiments/zero3_repro.sh [N] [STAGE] [key=value ...]     (default 16 runs at ZeRO stage 3; ~15 s a run)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-16}; STAGE=${2:-3}; shift $(( $# > 2 ? 2 : $# ))
PY=${PY:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions} OMP_NUM_THREADS=1
OUT=runs/zero3-repro
DATA=$OUT/synth
[ -f "$DATA/dataset.json" ] || $PY -m metammf_dist synth "$DATA" --users 300 --items 200 --interactions 5000 \
  --modality image:16 --modality text:8 --seed 3 > /dev/null
: > "$OUT/results.txt"
for i in $(seq 1 "$N"); do
  run=$OUT/run$i; rm -rf "$run"
  $PY -m torch.distributed.run --nproc_per_node=2 --master_port=$((29000 + RANDOM % 1000)) -m metammf_dist train \
    configs/tiktok.yaml data.path="$DATA" run_dir="$run" train.epochs=1 train.ds_config=configs/ds/zero$STAGE.json \
    model.fusion_dims=[16,8] model.item_id_dim=8 model.user_id_dim=16 model.meta_hidden=16 train.batch_size=512 \
    train.fanouts=[5,5] train.eval_every=1 eval.user_chunk=64 data.cache_mb=16 train.log_every=1 "$@" \
    > "$run.out" 2> "$run.err" || true
  losses=$(grep ',train,' "$run/metrics.csv" 2>/dev/null | cut -d, -f3,5 | md5sum | cut -c1-8)
  ndcg=$(tail -1 "$run.out" | $PY -c "import json,sys; print(json.loads(sys.stdin.read())['ndcg@10'])" 2>/dev/null || echo failed)
  alone=$($PY -m metammf_dist evaluate "$run" 2>/dev/null | tail -1 \
    | $PY -c "import json,sys; print(json.loads(sys.stdin.read())['ndcg@10'])" 2>/dev/null || echo failed)
  echo "run $i losses $losses ndcg@10 $ndcg evaluate $alone" | tee -a "$OUT/results.txt"
done
echo "distinct results: $(cut -d' ' -f4,6 "$OUT/results.txt" | sort -u | wc -l) in $N runs;" \
  "in-training test != evaluate: $(awk '$6 != $8' "$OUT/results.txt" | wc -l)"
