#!/usr/bin/env bash
# The runs behind docs/results/meta_evidence.md: seeded fusion ablations (meta, CP, static, ID-only) on TikTok
# (given split and 20 % cold items; GCN and MF scorers) and on two synthetic catalogs (planted item-specific
# fusion, and today's generator as a control).  Every part is `metammf-dist ablate` (resumable: finished
# (variant, seed) runs are skipped), JOBS training processes at a time, one thread each (bit-reproducible).
#   bash experiments/meta_evidence.sh PART...     PART: tiktok-warm-gcn tiktok-cold-gcn tiktok-warm-mf
#                                                       tiktok-cold-mf synth-planted synth-control
#                                                       tiktok-{warm,cold}-gcn-wd6  (default: all)
#   (the -wd6 parts: the GCN config at the paper's weight decay 1e-6, meta / static / ID-only; with the 1e-4 part
#   done too, their variants are merged into PART-wd.csv, paired across the two weight decays)
#   SEEDS=8 by default, JOBS=1 training runs at a time (JOBS=2 on two cores: same results, half the time);
#   results in runs/ablation/PART/{results.csv,results.md}
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions} OMP_NUM_THREADS=1 TQDM_DISABLE=1
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-8}
JOBS=${JOBS:-1}
OUT=runs/ablation
ablate() { $PY -m metammf_dist ablate --jobs "$JOBS" "$@"; }
tiktok() {  # data/tiktok (the given split) and data/tiktok-cold20 (20 % of the items held out of train)
  [ -f data/tiktok/dataset.json ] || $PY -m metammf_dist prepare mmrec ../shared/data/tiktok data/tiktok
  [ -f data/tiktok-cold20/dataset.json ] || \
    $PY -m metammf_dist prepare mmrec ../shared/data/tiktok data/tiktok-cold20 --cold-items 0.2
}
wd6() {  # $1: warm|cold; the GCN config at weight decay 1e-6, then both weight decays in one CSV
  local data=data/tiktok; [ "$1" = cold ] && data=data/tiktok-cold20
  ablate configs/tiktok.yaml --out $OUT/tiktok-$1-gcn-wd6 --seeds "$SEEDS" --variants meta,static,id \
    data.path=$data train.weight_decay=1e-6
  if [ -f $OUT/tiktok-$1-gcn/results.csv ]; then
    $PY experiments/merge_ablations.py $OUT/tiktok-$1-gcn-wd.csv \
      1e-4=$OUT/tiktok-$1-gcn/results.csv 1e-6=$OUT/tiktok-$1-gcn-wd6/results.csv
  fi
}
ALL="tiktok-warm-gcn tiktok-cold-gcn tiktok-warm-mf tiktok-cold-mf synth-planted synth-control"
for part in "${@:-$ALL tiktok-warm-gcn-wd6 tiktok-cold-gcn-wd6}"; do
  for p in $part; do
    case $p in
      tiktok-warm-gcn) tiktok; ablate configs/tiktok.yaml --out $OUT/$p --seeds "$SEEDS" data.path=data/tiktok ;;
      tiktok-cold-gcn) tiktok; ablate configs/tiktok.yaml --out $OUT/$p --seeds "$SEEDS" data.path=data/tiktok-cold20 ;;
      tiktok-warm-gcn-wd6) tiktok; wd6 warm ;;
      tiktok-cold-gcn-wd6) tiktok; wd6 cold ;;
      tiktok-warm-mf) tiktok; ablate configs/tiktok.yaml --out $OUT/$p --seeds "$SEEDS" data.path=data/tiktok model.scorer=mf ;;
      tiktok-cold-mf) tiktok; ablate configs/tiktok.yaml --out $OUT/$p --seeds "$SEEDS" data.path=data/tiktok-cold20 \
        model.scorer=mf ;;
      synth-planted|synth-control)
        data=bench_out/synth/${p#synth-}; flag=""; [ "$p" = synth-planted ] && flag=--planted-fusion
        [ -f "$data/dataset.json" ] || $PY -m metammf_dist synth "$data" --users 6000 --items 3000 --interactions 120000 \
          --modality image:64 --modality text:64 --clusters 16 --cold-items 0.2 --seed 1 --dtype float32 $flag
        # static-wide: a static MLP with the meta fusion's parameter count
        ablate configs/ablation/synth.yaml --out $OUT/$p --seeds "$SEEDS" --variants meta,cp,static,static-wide,id \
          data.path="$data" ;;
      *) echo "unknown part $p" >&2; exit 2 ;;
    esac
  done
done
