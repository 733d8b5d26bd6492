#!/usr/bin/env bash
# Launch `metammf-dist train` with the DeepSpeed launcher: one node, several nodes over ssh, or one launcher
# per node without ssh (the Slurm pattern).
#
# Usage:  launchers/deepspeed.sh [DEEPSPEED LAUNCHER FLAGS ...] -- CONFIG [key=value ...] [TRAIN FLAGS]
#   Flags BEFORE `--` go to the deepspeed launcher (--hostfile, --num_gpus, --no_ssh, --node_rank,
#   --master_addr, --master_port, --include/--exclude, --bind_cores_to_rank, ...); everything AFTER `--` goes
#   to `metammf-dist train`.  (The bare `deepspeed` command silently ignores a --hostfile placed after the
#   script; here such a flag reaches the trainer, which rejects it with an error.)  Without `--`, every
#   argument goes to the trainer.
#
# One node:
#   launchers/deepspeed.sh --num_gpus 2 -- configs/tiktok.yaml train.epochs=3 run_dir=runs/ds2
#   DeepSpeed starts one process per detected GPU; on a CPU box it starts ONE process unless told --num_gpus N
#   (N gloo processes; --bind_cores_to_rank additionally needs numactl).
# Several nodes over ssh (passwordless ssh and pdsh from the first node to every host of the hostfile; the
#   repo and interpreter at the same paths everywhere).  Hostfile lines: `HOST slots=N` (launchers/hostfile.example):
#   launchers/deepspeed.sh --hostfile my_hosts --master_addr node1 --master_port 29731 -- configs/tiktok.yaml
#   Only PYTHON*/NCCL*/UCX*/MV2* variables reach the remote nodes; put others (OMP_NUM_THREADS, ...) in
#   ./.deepspeed_env as KEY=VALUE lines.
# Several nodes WITHOUT ssh: start one launcher per node, same hostfile/master on all, node_rank = the
#   node's line in the hostfile (0-based).  This is what launchers/slurm/train.sbatch does:
#   node1$ launchers/deepspeed.sh --hostfile my_hosts --no_ssh --node_rank 0 --master_addr node1 --master_port 29731 -- CONFIG
#   node2$ launchers/deepspeed.sh --hostfile my_hosts --no_ssh --node_rank 1 --master_addr node1 --master_port 29731 -- CONFIG
#
# Always added: --module --no_local_rank (the trainer reads LOCAL_RANK from the environment) and, after the
#   trainer arguments, --resume: a restarted job continues from the run folder's latest complete checkpoint
#   and a new one starts fresh.  Re-running into a finished run_dir only re-evaluates it: use a new run_dir=.
# Added when absent: --master_port = a free local port (single launcher only; with --no_ssh every node must
#   be given the same --master_addr and --master_port, so they are required).
# Environment: PYTHON  interpreter with metammf-dist installed (default: REPO/.venv/bin/python, else python3)
#              OMP_NUM_THREADS  threads per process (default 1)
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
  echo "usage: $0 [DEEPSPEED LAUNCHER FLAGS ...] -- CONFIG [key=value ...]  (see the header of $0)" >&2
  exit 2
fi

has() {  # has FLAG: FLAG ('--x y' or '--x=y', - or _ spelling) is among the launcher flags
  local want=${1//-/_} a
  for a in "${launcher[@]+"${launcher[@]}"}"; do
    a=${a%%=*}; [ "${a//-/_}" = "$want" ] && return 0
  done
  return 1
}

extra=(--module --no_local_rank)
if has --no_ssh; then
  for f in --hostfile --node_rank --master_addr --master_port; do
    has "$f" || { echo "$0: --no_ssh (one launcher per node) needs $f, the same on every node except --node_rank" >&2; exit 2; }
  done
elif ! has --master_port; then
  port=$("$PY" -c 'from metammf_dist.distributed.process_group import free_port; print(free_port(""))')
  extra+=(--master_port "$port")
fi

set -x
exec "$PY" -m deepspeed.launcher.runner "${extra[@]}" "${launcher[@]+"${launcher[@]}"}" \
  metammf_dist train "${train[@]}" --resume
