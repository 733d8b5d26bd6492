#!/usr/bin/env bash
# The full test run (what .ci/run runs): installs a local Slurm for the launcher tests, then the DGL lane
# (scripts/test.sh: torch 2.2.1 + dgl + deepspeed 0.18.2) and the latest lane (scripts/test_latest.sh:
# torch 2.13 + deepspeed 0.19, no DGL).  Each lane sets up its own venv and fails on "no tests ran".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_slurm.sh
start=$SECONDS
bash scripts/test.sh "$@"
echo "DGL lane: $((SECONDS - start)) s"
start=$SECONDS
bash scripts/test_latest.sh "$@"
echo "latest lane: $((SECONDS - start)) s"
