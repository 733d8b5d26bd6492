#!/usr/bin/env bash
# Create .venv-latest with the pinned latest-lane stack (constraints/latest-lane.txt: torch 2.13.0,
# deepspeed 0.19.8, numpy 2, no DGL), install metammf-dist editable and build Horovod into it
# (scripts/build_horovod.sh, ~11 min on 2 cores, once per venv).  The GCN trains there on the torch graph
# backend (train.graph_backend=torch).  Idempotent: a stamp records the constraints hash.
# Usage: bash scripts/setup_latest.sh      (PYTHON=python3.11 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
C=constraints/latest-lane.txt
V=.venv-latest
stamp=$V/.metammf-stack
want=$(cat "$C" pyproject.toml scripts/build_horovod.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x $V/bin/python ] || "$PY" -m venv $V
pip=($V/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q -c "$C" pip setuptools wheel
# torch first: deepspeed's build (no isolation) needs it.
"${pip[@]}" install -q -c "$C" torch
"${pip[@]}" install -q -c "$C" --no-build-isolation deepspeed
"${pip[@]}" install -q -c "$C" --no-build-isolation -e ".[dev]"
# TorchRec on CPU: FBGEMM's CPU build, then torchrec without its 'fbgemm-gpu' requirement (the CUDA build)
"${pip[@]}" install -q -c "$C" fbgemm-gpu-cpu tensordict torchmetrics pyre-extensions
"${pip[@]}" install -q -c "$C" --no-deps torchrec
# pip check: clean but for the one requirement installed as its CPU build (fbgemm-gpu-cpu provides fbgemm_gpu)
check=$("${pip[@]}" check 2>&1 || true)
if [ -n "$(echo "$check" | grep -v '^torchrec .* requires fbgemm-gpu, which is not installed\.$' | grep -v '^No broken requirements found\.$')" ]; then
  echo "$check" >&2; exit 1
fi
$V/bin/python -c "import torchrec, fbgemm_gpu" || { echo "$V: torchrec / fbgemm_gpu do not import" >&2; exit 1; }
if $V/bin/python -c "import dgl" 2>/dev/null; then echo "$V has DGL installed; the latest lane must not" >&2; exit 1; fi
bash scripts/build_horovod.sh
echo "$want" > "$stamp"
