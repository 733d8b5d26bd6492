#!/usr/bin/env bash
# One-shot GPU check for metammf-dist (run from the repo root on the device machine):
#   1. install carried wheels (.whl/: deepspeed 0.19.8 + hjson, pydantic ...) into /tmp/site
#   2. prepare the TikTok data carried in .devdata/tiktok
#   3. CUDA smoke: train 2 epochs + evaluate + fusion benchmarks (GPU: experiments/gpu/gpu_fusion_bench.py;
#      `bench fusion` is CPU-only by design and runs alongside)
#   4. parallel hyper-parameter sweep (experiments/gpu/sweep.py) until the deadline, summary in $OUT/sweep.csv
# Everything is tee'd to $OUT/log.txt.  Knobs (env) exist so the logic can be checked on a CPU machine:
#   PY SKIP_PIP BUDGET DATA_DIR RUNS_ROOT SMOKE_EXTRA SWEEP_EPOCHS SWEEP_ONLY SWEEP_EXTRA FUSION_ARGS CPU_BENCH_ARGS
#   SKIP_SMOKE=1 (sweep only: steps 3a-3d skipped, sweep on CUDA)  SWEEP_ARGS (e.g. "--seeds 1,2,3 --max-parallel 14
#   --variants '{...}'"; passed to sweep.py through eval, so quote JSON as shown)
set -u
START=$(date +%s)
OUT=${OUT:-$PWD/out_local}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PY:-python3}
BUDGET=${BUDGET:-480}                 # seconds from START by which the sweep summary must be written
DATA_DIR=${DATA_DIR:-data/tiktok}
RUNS_ROOT=${RUNS_ROOT:-runs}
SMOKE_EXTRA=${SMOKE_EXTRA:-}
SWEEP_EPOCHS=${SWEEP_EPOCHS:-40}
SWEEP_ONLY=${SWEEP_ONLY:-0}
SWEEP_EXTRA=${SWEEP_EXTRA:-}
FUSION_ARGS=${FUSION_ARGS:-}
CPU_BENCH_ARGS=${CPU_BENCH_ARGS:---threads 8 --repeats 2 --naive-mem-gb 1}
WORK=$RUNS_ROOT/devcheck
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1 TQDM_DISABLE=1
export TORCH_EXTENSIONS_DIR=$PWD/.torch_ext_dev
el() { echo "[t+$(( $(date +%s) - START ))s]"; }
section() { echo; echo "===== $(el) $* ====="; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -3
nproc; uname -r
git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
echo "--- configs/tiktok.yaml as sent:"; cat configs/tiktok.yaml

section "1. wheels"
if [ -z "${SKIP_PIP:-}" ]; then
  ls .whl
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "PIP INSTALL FAILED"; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
$PY - <<'EOF'
import sys, torch, numpy, pyarrow
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "numpy", numpy.__version__, "pyarrow", pyarrow.__version__)
import deepspeed, hjson, pydantic
print("deepspeed", deepspeed.__version__, deepspeed.__file__, "pydantic", pydantic.__version__)
EOF

section "2. prepare"
rm -rf "$DATA_DIR"
$PY -m metammf_dist.cli prepare mmrec .devdata/tiktok "$DATA_DIR"
echo "prepare rc=$?"
mkdir -p "$WORK"

SMOKE_RC=0
if [ -z "${SKIP_SMOKE:-}" ]; then
section "3a. CUDA smoke train (cpu 'bench fusion' runs alongside in the background)"
(OMP_NUM_THREADS=8 timeout 100 $PY -m metammf_dist.cli bench fusion $CPU_BENCH_ARGS > "$WORK/bench_fusion_cpu.txt" 2>&1;
 echo "bench fusion (cpu) rc=$?" >> "$WORK/bench_fusion_cpu.txt") &
BENCH_PID=$!
(for i in $(seq 1 200); do nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null; sleep 1; done > "$WORK/smi_smoke.txt") &
SMI_PID=$!
rm -rf "$RUNS_ROOT/gpu_smoke"
T0=$(date +%s)
OMP_NUM_THREADS=4 timeout 200 $PY experiments/gpu/cli_cuda.py train configs/tiktok.yaml train.graph_backend=torch \
  train.epochs=2 run_dir="$RUNS_ROOT/gpu_smoke" data.path="$DATA_DIR" $SMOKE_EXTRA
SMOKE_RC=$?
echo "SMOKE train rc=$SMOKE_RC in $(( $(date +%s) - T0 ))s"
kill $SMI_PID 2>/dev/null; wait $SMI_PID 2>/dev/null
echo "--- nvidia-smi compute apps seen during smoke (unique):"; sort -u "$WORK/smi_smoke.txt" | head
echo "--- smoke metrics.csv (valid recall@20 / test):"
grep -E "valid,,,recall@20|test,,,(recall|ndcg)@20|train" "$RUNS_ROOT/gpu_smoke/metrics.csv" 2>/dev/null | head -20

section "3b. evaluate runs/gpu_smoke"
T0=$(date +%s)
OMP_NUM_THREADS=4 timeout 90 $PY experiments/gpu/cli_cuda.py evaluate "$RUNS_ROOT/gpu_smoke"
echo "EVALUATE rc=$? in $(( $(date +%s) - T0 ))s"

section "3c. GPU fusion benchmark (naive vs meta vs cp, paper dims, CUDA)"
OMP_NUM_THREADS=4 timeout 90 $PY experiments/gpu/gpu_fusion_bench.py --json "$OUT/fusion_gpu.json" $FUSION_ARGS
echo "GPU fusion bench rc=$?"

section "3d. cpu 'bench fusion' (waiting for it)"
wait $BENCH_PID
cat "$WORK/bench_fusion_cpu.txt"

fi

section "4. sweep"
DEVICE=cuda
if [ "$SMOKE_RC" != 0 ] || ! $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cpu
  echo "CUDA smoke failed or no CUDA: sweep on CPU; prebuilding DeepSpeed's CPU shm op first"
  CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=4 timeout 120 $PY -m metammf_dist.cli train configs/tiktok.yaml \
    train.graph_backend=torch train.epochs=1 train.max_steps_per_epoch=1 run_dir="$WORK/prebuild" \
    data.path="$DATA_DIR" > "$WORK/prebuild.log" 2>&1
  echo "prebuild rc=$?"; tail -3 "$WORK/prebuild.log"
fi
DEADLINE=$(( START + BUDGET ))
eval "SWEEP_ARGV=(${SWEEP_ARGS:-})"
echo "sweep device=$DEVICE, deadline in $(( DEADLINE - $(date +%s) ))s"
$PY experiments/gpu/sweep.py --deadline $DEADLINE --out "$OUT" --runs-root "$RUNS_ROOT/sweep" --device $DEVICE \
  --epochs $SWEEP_EPOCHS --only $SWEEP_ONLY "${SWEEP_ARGV[@]}" --extra data.path="$DATA_DIR" $SWEEP_EXTRA
echo "sweep rc=$?"

section "5. artifacts"
tar czf "$OUT/artifacts.tgz" --exclude='checkpoints' --exclude='tb' \
  "$RUNS_ROOT/gpu_smoke" "$RUNS_ROOT/sweep" "$WORK" 2>/dev/null
ls -la "$OUT"
echo "$(el) done"
