"""One results.csv from several ablation parts, each variant renamed ``VARIANT@LABEL``, so that runs of two parts
(same seeds, a different override: say, the weight decay) are compared with the paired report:

    python experiments/merge_ablations.py OUT.csv 1e-4=runs/ablation/A/results.csv 1e-6=runs/ablation/B/results.csv
    metammf-dist ablate --report OUT.csv --reference static@1e-4 --metrics recall@20,ndcg@20

Pairing across parts holds where the parts share the seeds and everything the seed draws (ID rows, batches,
negatives, dropout), as they do when they differ only in optimizer settings.
"""
from __future__ import annotations

import csv
import sys

from metammf_dist.ablation.runner import write_csv


def merge(out: str, parts: list) -> int:
    rows = []
    for part in parts:
        label, sep, path = part.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"expected LABEL=CSV, got {part!r}")
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({**row, "variant": f"{row['variant']}@{label}"})
    write_csv(rows, out)
    return len(rows)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    print(f"{merge(sys.argv[1], sys.argv[2:])} rows -> {sys.argv[1]}")
