#!/usr/bin/env bash
# Set up (scripts/setup.sh), import the shared TikTok data, train + evaluate MetaMMF-GCN on it, print metrics.
# Extra arguments are config overrides, e.g.:  bash scripts/quickstart.sh train.epochs=3 model.fusion=cp
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TORCH_EXTENSIONS_DIR="$PWD/.torch_extensions" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SRC=${TIKTOK_SRC:-../shared/data/tiktok}
if [ ! -f data/tiktok/dataset.json ]; then
  .venv/bin/metammf-dist prepare mmrec "$SRC" data/tiktok
fi
.venv/bin/metammf-dist info data/tiktok
.venv/bin/metammf-dist train configs/tiktok.yaml "$@"
