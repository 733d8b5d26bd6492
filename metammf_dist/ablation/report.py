"""The ablation table, regenerated from ``results.csv`` alone (``metammf-dist ablate --report results.csv``).

Two markdown tables:

1. **Summary**, one row per (metric, variant): the seeds it has, mean, standard deviation, and the paired
   difference ``variant - reference`` (mean over the seeds both have) with its 95 % Student-t interval
   (``stats.py``); ``*`` marks an interval that excludes zero.
2. **Per seed**, one row per (metric, variant): the value of every seed.

Metrics: those of ``METRICS`` the CSV has (overall test Recall@20 / NDCG@20; with cold items the warm / cold
ones; with a meta-learner the probes' R²), then ``train_seconds``.

``wide`` (``ablate --report CSV --metrics a,b``): one row per variant, per metric its mean and the paired
difference with its interval - the compact form the results pages quote.
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from metammf_dist.ablation.stats import paired_difference

METRICS = ("recall@20", "ndcg@20", "warm_recall@20", "warm_ndcg@20", "cold_recall@20", "cold_ndcg@20",
           "cold_all_recall@20", "cold_all_ndcg@20", "probe_gate_r2", "probe_dominance_r2", "probe_popularity_r2",
           "probe_meta_effect",
           "best_epoch", "train_seconds")


def read_csv(path) -> List[dict]:
    """Rows of ``results.csv`` with numbers parsed (empty cells dropped)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {"variant": raw["variant"], "seed": int(raw["seed"])}
            row.update({k: float(v) for k, v in raw.items() if k not in ("variant", "seed") and v != ""})
            rows.append(row)
    return rows


COARSE = ("best_epoch", "train_seconds")  # shown with one decimal


def _fmt(x: float, sign: bool = False, coarse: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    digits = 1 if coarse else 4
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def markdown(rows: List[dict], reference: str, metrics: Optional[Sequence[str]] = None) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    metrics = [m for m in (metrics or METRICS) if any(m in r for r in rows)]
    values: Dict[str, Dict[str, Dict[int, float]]] = {
        m: {v: {r["seed"]: r[m] for r in rows if r["variant"] == v and m in r} for v in variants} for m in metrics}
    lines = [f"Paired differences: variant − {reference} over the seeds both have; 95 % Student-t interval "
             "(`*`: excludes zero).", "",
             f"| metric | variant | seeds | mean | sd | Δ vs {reference} | 95 % interval |",
             "|---|---|---|---|---|---|---|"]
    for m in metrics:
        for v in variants:
            got = values[m][v]
            if not got:
                continue
            c = m in COARSE
            sd = statistics.stdev(got.values()) if len(got) > 1 else math.nan
            diff = None if v == reference else paired_difference(got, values[m].get(reference, {}))
            delta = interval = "–"
            if diff is not None:
                delta = _fmt(diff.mean, True, c)
                if diff.n > 1:
                    interval = f"[{_fmt(diff.low, True, c)}, {_fmt(diff.high, True, c)}]" + \
                        (" *" if diff.excludes_zero else "")
            lines.append(f"| {m} | {v} | {len(got)} | {_fmt(statistics.fmean(got.values()), coarse=c)} | "
                         f"{_fmt(sd, coarse=c)} | {delta} | {interval} |")
    lines += ["", "| metric | variant | " + " | ".join(f"s{s}" for s in seeds) + " |",
              "|---|---|" + "---|" * len(seeds)]
    for m in metrics:
        for v in variants:
            got = values[m][v]
            if got:
                lines.append(f"| {m} | {v} | " + " | ".join(_fmt(got[s], coarse=m in COARSE) if s in got else ""
                                                             for s in seeds) + " |")
    return "\n".join(lines) + "\n"


def report(csv_path, reference: str, metrics: Optional[Sequence[str]] = None) -> str:
    """The markdown of ``csv_path`` (what ``ablate`` wrote beside it as ``results.md``), or with ``metrics`` the
    ``wide`` table of those metrics."""
    rows = read_csv(Path(csv_path))
    return wide(rows, reference, metrics) if metrics else markdown(rows, reference)


def _summary(values: Dict[int, float], ref: Dict[int, float], is_reference: bool, coarse: bool):
    mean = _fmt(statistics.fmean(values.values()), coarse=coarse)
    diff = None if is_reference else paired_difference(values, ref)
    if diff is None:
        return mean, "–"
    if diff.n < 2:
        return mean, _fmt(diff.mean, True, coarse)
    star = " *" if diff.excludes_zero else ""
    return mean, f"{_fmt(diff.mean, True, coarse)} [{_fmt(diff.low, True, coarse)}, {_fmt(diff.high, True, coarse)}]{star}"


def wide(rows: List[dict], reference: str, metrics: Sequence[str]) -> str:
    """One row per variant: seeds, then per metric its mean and ``Δ vs reference [95 % interval]``."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    header = ["variant", "seeds"] + [h for m in metrics for h in (m, f"Δ {m} vs {reference}")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        cells = [v, str(len(mine))]
        for m in metrics:
            values = {r["seed"]: r[m] for r in mine if m in r}
            ref = {r["seed"]: r[m] for r in rows if r["variant"] == reference and m in r}
            cells += list(_summary(values, ref, v == reference, m in COARSE)) if values else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
