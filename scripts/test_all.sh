#!/usr/bin/env bash
# The full test run (what .ci/run runs): installs a local Slurm for the launcher tests, then the DGL lane
# (scripts/test.sh: torch 2.2.1 + dgl + deepspeed 0.18.2) and the latest lane (scripts/test_latest.sh:
# torch 2.13 + deepspeed 0.19 + torchrec + Horovod, no DGL).  Each lane sets up its own venv and fails on
# "no tests ran".  The latest lane's set-up (its venv and the ~11-minute Horovod build) runs in the background at
# low priority while the DGL lane's tests run: those mostly use one core, and the build takes the other.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_slurm.sh
start=$SECONDS
mkdir -p build
nice -n 15 bash scripts/setup_latest.sh > build/setup_latest.log 2>&1 &
latest_setup=$!
dgl_rc=0
bash scripts/test.sh "$@" || dgl_rc=$?
echo "DGL lane: $((SECONDS - start)) s (rc $dgl_rc)"
start=$SECONDS
if ! wait "$latest_setup"; then
  echo "latest lane set-up failed (build/setup_latest.log):" >&2
  tail -n 60 build/setup_latest.log >&2
  exit 1
fi
echo "latest lane set-up finished $((SECONDS - start)) s after the DGL lane's tests"
bash scripts/test_latest.sh "$@"
echo "latest lane: $((SECONDS - start)) s"
exit "$dgl_rc"
