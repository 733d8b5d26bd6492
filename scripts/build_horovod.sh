#!/usr/bin/env bash
# Build Horovod 0.28.1 (PyTorch + Gloo, no MPI/TensorFlow/MXNet) from source into the latest lane (.venv-latest).
#
# Horovod 0.28.1 (its last release) does not build as released against torch >= 2: its top-level and
# horovod/torch CMakeLists set CMAKE_CXX_STANDARD 14 while torch's headers need C++17.  This script unpacks
# the sdist under build/horovod/, raises both to 17 and pip-installs the patched tree.  It takes ~11 min on
# 2 cores (MAKEFLAGS=-j2 by default; set MAKEFLAGS yourself to change it) and needs g++ and cmake >= 3.13
# (cmake comes from PyPI into the venv when the system has none).  Idempotent: exits at once when
# horovod.torch 0.28.1 already imports with Gloo built in.  scripts/setup_latest.sh runs it; see metammf_dist/hvd/.
# Usage: bash scripts/build_horovod.sh          (scripts/setup_latest.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.28.1
PY=.venv-latest/bin/python
[ -x "$PY" ] || bash scripts/setup_latest.sh
pip=("$PY" -m pip --disable-pip-version-check)

if "$PY" - "$VERSION" <<'EOF' 2>/dev/null; then
import sys
import horovod
import horovod.torch as hvd
sys.exit(0 if horovod.__version__ == sys.argv[1] and hvd.gloo_built() else 1)
EOF
  echo "horovod $VERSION (torch, gloo) already installed in .venv-latest"
  exit 0
fi

work=build/horovod
rm -rf "$work"
mkdir -p "$work"
"${pip[@]}" download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$work"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
  grep -q 'set(CMAKE_CXX_STANDARD 14)' "$f" || { echo "$f: no 'set(CMAKE_CXX_STANDARD 14)' to patch" >&2; exit 1; }
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$f"
done

if ! cmake --version 2>/dev/null | grep -qE 'version (3\.(1[3-9]|[2-9][0-9])|[4-9])'; then
  "${pip[@]}" install -q -c constraints/latest-lane.txt cmake
  export PATH="$PWD/.venv-latest/bin:$PATH"
fi
# runtime deps of horovod first, pinned by the lane's constraints
"${pip[@]}" install -q -c constraints/latest-lane.txt cloudpickle psutil pyyaml packaging
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
       HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS="${MAKEFLAGS:--j2}"
"${pip[@]}" install --no-build-isolation --no-deps --no-cache-dir "./$src"
"$PY" -c "import horovod.torch as hvd; assert hvd.gloo_built(), 'gloo not built'; print('horovod', __import__('horovod').__version__, 'torch+gloo OK')"
