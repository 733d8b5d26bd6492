#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Fails if pytest collects no test (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rc=0
# Horovod is built into the latest lane only (scripts/test_latest.sh runs tests/test_hvd.py)
.venv/bin/python -m pytest -q -m "not slow" --ignore=tests/test_hvd.py "$@" || rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
