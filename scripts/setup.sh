#!/usr/bin/env bash
# Create .venv with the pinned DGL-lane stack (constraints/dgl-lane.txt) and install metammf-dist editable.
# Idempotent: a stamp records the constraints hash, so a second run takes a second.
# Usage: bash scripts/setup.sh            (PYTHON=python3.11 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
C=constraints/dgl-lane.txt
stamp=.venv/.metammf-stack
want=$(cat "$C" pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q -c "$C" pip setuptools wheel
# torch first: deepspeed's build (no isolation) needs it; the pin keeps pip off the newest CUDA build.
"${pip[@]}" install -q -c "$C" torch
"${pip[@]}" install -q -c "$C" --no-build-isolation deepspeed
"${pip[@]}" install -q -c "$C" --no-build-isolation -e ".[dgl,dev]"
"${pip[@]}" check
echo "$want" > "$stamp"
