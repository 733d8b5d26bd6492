#!/usr/bin/env bash
# Second GPU check: the fusion cache and sparse ID tables on CUDA, and a 100k-item synthetic catalog's step rate.
set -u
START=$(date +%s)
OUT=${OUT:-$PWD/out_local}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TORCH_EXTENSIONS_DIR=$PWD/.torch_ext_dev
el() { echo "[t+$(( $(date +%s) - START ))s]"; }
echo "$(el) wheels"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
git log --oneline -1
echo "$(el) prepare"
$PY -m metammf_dist.cli prepare mmrec .devdata/tiktok data/tiktok > /dev/null
echo "$(el) tiktok: GCN+meta, fusion cache K=10, sparse ID tables, 6 epochs, CUDA"
OMP_NUM_THREADS=4 timeout 150 $PY experiments/gpu/cli_cuda.py train configs/tiktok.yaml train.graph_backend=torch \
  train.epochs=6 train.fusion_cache_refresh=10 train.id_tables=sparse run_dir=runs/gpu_cache 2>&1 | grep -v Warning | tail -4
echo "train rc=${PIPESTATUS[0]}"
OMP_NUM_THREADS=4 timeout 60 $PY -m metammf_dist.cli evaluate runs/gpu_cache --popularity | tail -1
cat runs/gpu_cache/usage.json
echo "$(el) synth 100k and one cached epoch on CUDA"
OMP_NUM_THREADS=8 $PY -m metammf_dist.cli synth data/s100k --users 100000 --items 100000 --interactions 1000000 \
  --modality image:128 --modality text:256 --seed 1 > /dev/null
OMP_NUM_THREADS=8 timeout 150 $PY experiments/gpu/cli_cuda.py train configs/scale/base.yaml data.path=data/s100k \
  run_dir=runs/gpu_s100k train.fusion_cache_refresh=100 eval.max_users=5000 2>&1 | grep -v Warning | tail -3
echo "train rc=${PIPESTATUS[0]}"
cat runs/gpu_s100k/usage.json
grep ",train," runs/gpu_s100k/metrics.csv | tail -3
cp runs/gpu_cache/metrics.csv "$OUT/gpu_cache_metrics.csv" 2>/dev/null
echo "$(el) done"
