#!/usr/bin/env bash
# Launch `metammf-dist train` under torchrun (torch.distributed.run): one node or several, elastic restarts.
#
# Usage:  launchers/torchrun.sh [TORCHRUN FLAGS ...] -- CONFIG [key=value ...] [TRAIN FLAGS]
#   Flags BEFORE `--` go to torchrun; everything AFTER `--` goes to `metammf-dist train`.  A torchrun flag put
#   after `--` reaches the trainer, which rejects it with an error (nothing is silently ignored).
#   Without any `--`, every argument goes to the trainer (single node, defaults below).
#
# One node, 2 processes (one per GPU; on a CPU box, 2 gloo processes):
#   launchers/torchrun.sh --nproc-per-node 2 -- configs/tiktok.yaml train.epochs=3 run_dir=runs/t2
# Two nodes, c10d rendezvous hosted on node A (the port must be free on A; run the SAME command on every node):
#   nodeA$ launchers/torchrun.sh --nnodes 2 --nproc-per-node 4 --rdzv-endpoint nodeA:29731 --rdzv-id job42 -- configs/tiktok.yaml
#   nodeB$ launchers/torchrun.sh --nnodes 2 --nproc-per-node 4 --rdzv-endpoint nodeA:29731 --rdzv-id job42 -- configs/tiktok.yaml
#   (ranks are assigned in rendezvous order; rank 0 prints the metrics JSON and writes the run folder, which
#   must be on storage every node sees when checkpoints are resumed by other nodes.)
# Elastic restart: add --max-restarts K.  After a rank dies, torchrun restarts the whole worker group and the
#   workers continue from the run folder's latest complete checkpoint: this script always passes --resume to
#   the trainer (it starts fresh when there is no checkpoint).  Add train.checkpoint_every_steps=N for
#   mid-epoch checkpoints.  Consequence: re-running into a finished run_dir only re-evaluates it; pick a new
#   run_dir=... for a new run.
#
# Defaults added when the flag is absent:
#   --nproc-per-node  GPUs visible (CUDA_VISIBLE_DEVICES, else nvidia-smi -L), 1 when there is none
#   one node (no --nnodes or --nnodes 1, no --rdzv-endpoint): --standalone (c10d store on a free local port)
#                     and --local-addr 127.0.0.1 (workers find the store even where the hostname does not resolve)
#   several nodes: --rdzv-backend c10d, --rdzv-id metammf (both must match on every node)
# Environment: PYTHON  interpreter with metammf-dist installed (default: REPO/.venv/bin/python, else python3)
#              OMP_NUM_THREADS  threads per process (default 1: N processes on N cores)
#              TORCH_EXTENSIONS_DIR  DeepSpeed's op build cache (default REPO/.torch_extensions)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3 || command -v python)
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.torch_extensions}

launcher=() train=()
if [[ " $* " == *" -- "* ]]; then
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do launcher+=("$1"); shift; done
  shift
fi
train=("$@")
if [ ${#train[@]} -eq 0 ]; then
  echo "usage: $0 [TORCHRUN FLAGS ...] -- CONFIG [key=value ...]  (see the header of $0)" >&2
  exit 2
fi

has() {  # has FLAG: FLAG (either spelling, '--x y' or '--x=y') is among the launcher flags
  local want=${1//_/-} a
  for a in "${launcher[@]+"${launcher[@]}"}"; do
    a=${a%%=*}; [ "${a//_/-}" = "$want" ] && return 0
  done
  return 1
}
value_of() {  # value_of FLAG: its value among the launcher flags (empty if absent)
  local want=${1//_/-} i a key
  for ((i = 0; i < ${#launcher[@]}; i++)); do
    a=${launcher[i]}; key=${a%%=*}
    if [ "${key//_/-}" = "$want" ]; then
      if [[ "$a" == *=* ]]; then echo "${a#*=}"; else echo "${launcher[i + 1]:-}"; fi
      return
    fi
  done
}
gpu_count() {
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then nvidia-smi -L | grep -c '^GPU'
  else echo 0
  fi
}

extra=()
if ! has --nproc-per-node; then
  n=$(gpu_count); [ "$n" -gt 0 ] || n=1
  extra+=(--nproc-per-node "$n")
fi
nnodes=$(value_of --nnodes); nnodes=${nnodes:-1}
if [ "$nnodes" = 1 ] && ! has --rdzv-endpoint && ! has --master-addr; then
  has --standalone || extra+=(--standalone)
  # Workers reach the agent's store at this address; the default (this host's name) does not resolve in
  # every container or compute node.
  has --local-addr || extra+=(--local-addr 127.0.0.1)
elif has --rdzv-endpoint; then
  has --rdzv-backend || extra+=(--rdzv-backend c10d)
  has --rdzv-id || extra+=(--rdzv-id metammf)
elif ! has --master-addr; then
  echo "$0: --nnodes $nnodes needs --rdzv-endpoint HOST:PORT (the same on every node)" >&2
  exit 2
fi

set -x
exec "$PY" -m torch.distributed.run "${extra[@]+"${extra[@]}"}" "${launcher[@]+"${launcher[@]}"}" \
  -m metammf_dist train "${train[@]}" --resume
