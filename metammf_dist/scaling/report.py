"""The sweep's outputs: ``results.csv``, ``results.md`` (table + growth summary) and PNG plots.

Plots (matplotlib, Agg backend), one line per series, catalog size on a log x axis:
``time_per_1k_examples.png``, ``peak_rss_per_rank.png``, ``eval_time.png`` (and ``plan_vs_measured.png``).
Growth = a series' figure at its largest catalog / at its smallest.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List

COLUMNS = ["series", "items", "users", "interactions", "feat_dim", "world_size", "zero_stage", "fusion_cache",
           "refresh_every", "ms_per_1k_examples", "ms_per_1k_examples_steps_only", "refresh_ms_per_1k_examples",
           "refresh_seconds", "input_items_per_step", "fused_items_per_step", "peak_rss_mb", "plan_peak_mb", "plan_baseline_mb",
           "plan_error", "eval_seconds", "eval_users", "recall@20", "ndcg@20", "train_steps", "wall_seconds",
           "run_dir"]
PLOTS = {
    "time_per_1k_examples.png": ("ms_per_1k_examples", "training time per 1,000 examples (ms)"),
    "peak_rss_per_rank.png": ("peak_rss_mb", "peak RSS per rank (MiB)"),
    "eval_time.png": ("eval_seconds", "test evaluation time (s)"),
}


def write_csv(rows: List[Dict], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def growth(rows: List[Dict]) -> List[Dict]:
    """Per series: smallest vs largest catalog, for cost per example, fused items, RSS and eval time."""
    out = []
    for name in dict.fromkeys(r["series"] for r in rows):
        pts = sorted((r for r in rows if r["series"] == name), key=lambda r: r["items"])
        if len(pts) < 2:
            continue
        lo, hi = pts[0], pts[-1]

        def ratio(key):
            return hi[key] / lo[key] if lo[key] else math.inf

        out.append({"series": name, "from_items": lo["items"], "to_items": hi["items"],
                    "cost_growth": ratio("ms_per_1k_examples"), "fused_items_growth": ratio("fused_items_per_step"),
                    "input_items_growth": ratio("input_items_per_step"), "rss_growth": ratio("peak_rss_mb"),
                    "eval_growth": ratio("eval_seconds")})
    return out


def markdown(rows: List[Dict], title: str, command: str) -> str:
    lines = [f"# Scaling sweep: {title}", "", f"Command: `{command}`", "",
             "| series | items | users | interactions | ranks | ZeRO | cache K | ms / 1k ex. | input items / step | "
             "fused / step | peak RSS / rank (MiB) | plan (MiB) | plan err | eval (s) | eval users | R@20 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['series']} | {r['items']:,} | {r['users']:,} | {r['interactions']:,} | {r['world_size']} | "
            f"{r['zero_stage']} | {r['refresh_every'] or '-'} | {r['ms_per_1k_examples']:.1f} | "
            f"{r['input_items_per_step']:,.0f} | {r['fused_items_per_step']:,.0f} | {r['peak_rss_mb']:,.0f} | "
            f"{r['plan_peak_mb']:,.0f} | {r['plan_error']:+.1%} | {r['eval_seconds']:.1f} | {r['eval_users']:,} | "
            f"{r['recall@20']:.4f} |")
    g = growth(rows)
    if g:
        lines += ["", "Growth from the smallest to the largest catalog of each series:", "",
                  "| series | items | cost / example | fused items / step | input items / step | peak RSS | eval time |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for x in g:
            lines.append(f"| {x['series']} | {x['from_items']:,} -> {x['to_items']:,} | {x['cost_growth']:.2f}x | "
                         f"{x['fused_items_growth']:.2f}x | {x['input_items_growth']:.2f}x | {x['rss_growth']:.2f}x | "
                         f"{x['eval_growth']:.2f}x |")
    worst = max((abs(r["plan_error"]) for r in rows), default=0.0)
    lines += ["", f"Largest |plan error| over the points: {worst:.1%}.", ""]
    return "\n".join(lines)


def plots(rows: List[Dict], out: Path) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    series = list(dict.fromkeys(r["series"] for r in rows))
    for name, (key, label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s in series:
            pts = sorted((r for r in rows if r["series"] == s), key=lambda r: r["items"])
            ax.plot([r["items"] for r in pts], [r[key] for r in pts], marker="o", label=s)
        ax.set_xscale("log")
        if key != "eval_seconds":
            ax.set_ylim(bottom=0)
        ax.set_xlabel("catalog size (items; users and interactions scaled with it)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    fig, ax = plt.subplots(figsize=(5, 5))
    xs, ys = [r["peak_rss_mb"] for r in rows], [r["plan_peak_mb"] for r in rows]
    ax.scatter(xs, ys)
    top = max(xs + ys) * 1.05 if rows else 1
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.plot([0, top], [0, 1.2 * top], "k:", lw=0.6)
    ax.plot([0, top], [0, 0.8 * top], "k:", lw=0.6)
    ax.set_xlabel("measured peak RSS per rank (MiB)")
    ax.set_ylabel("plan (MiB)")
    ax.set_title("plan vs measured (dotted: ±20 %)")
    fig.tight_layout()
    fig.savefig(out / "plan_vs_measured.png", dpi=110)
    plt.close(fig)
    written.append("plan_vs_measured.png")
    return written
