"""The seeded ablation runner: every variant trained on the same seeds, one run folder per (variant, seed).

``metammf-dist ablate CONFIG --out DIR --seeds N [--variants meta,cp,static,id] [key=value ...]`` (variants:
``VARIANTS`` below; ``static-wide`` on request) trains
``CONFIG + overrides + the variant's overrides + train.seed=S`` for S = 1..N, seed by seed (all variants of seed 1,
then of seed 2, ...: a partial sweep stays paired), each as its own ``train`` process with ``OMP_NUM_THREADS=1``
(bit-reproducible), in ``DIR/runs/VARIANT-sSEED`` (log beside it: ``VARIANT-sSEED.log``); ``--jobs J`` keeps J
such processes running at once (one per core: the runs' results do not depend on it).  After each run:

* the meta-vector probe (``probe.py``) of a variant with a meta-learner goes to ``RUN/probe.json`` (finished runs
  whose probe predates ``probe.PROBE_VERSION`` are probed again from their best checkpoint);
* every checkpoint but the best is removed (the probe and ``evaluate`` read the best);
* ``DIR/results.csv`` (one row per finished run: its test metrics, best epoch, train seconds, probe R²) and
  ``DIR/results.md`` (``report.py``) are rewritten from all finished run folders (so a later invocation with
  more seeds or another variant adds to the same tables); ``DIR/ablation.json`` lists the invocations.

Resumable: a (variant, seed) whose folder holds ``final_metrics.json`` is skipped; a folder without it (an
interrupted run) is continued with ``--resume``.  Within a seed the variants share what they can: the batches,
negatives and dropout draws (seeded by ``train.seed`` alone) and the initial ID rows (drawn from a generator
of their own: ``MetaMMFRecommender.reset_id_rows``; ``id``'s item table is wider, so only its user rows match).
"""
from __future__ import annotations

import contextlib
import csv
import json
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from metammf_dist.config import ConfigError, load_config
from metammf_dist.distributed.process_group import child_env, train_command
from metammf_dist.errors import TrainingError

# variant -> overrides; "{user_id_dim}" and "{wide_dims}" are filled from the config
VARIANTS: Dict[str, tuple] = {
    "meta": ("model.fusion=meta",),  # W_i = M + Σ_k s_ik T_k
    "cp": ("model.fusion=cp",),  # rank-R CP form (model.cp_rank)
    "static": ("model.fusion=static",),  # one fusion MLP for every item
    # one static MLP with as many parameters as the meta fusion + meta-learner (hidden widths scaled up): is it
    # the item-specific weights that help, or the parameter count?
    "static-wide": ("model.fusion=static", "model.fusion_dims={wide_dims}"),
    # no features at all: ID rows as wide as the user rows, no item kNN graph (it is built from the features)
    "id": ("model.fusion=none", "model.item_id_dim={user_id_dim}", "model.item_knn=0"),
}
WITH_META_LEARNER = ("meta", "cp")
RESULTS_CSV, RESULTS_MD, PLAN_FILE = "results.csv", "results.md", "ablation.json"


@dataclass
class Ablation:
    config: str
    out: str
    seeds: List[int]
    variants: List[str] = field(default_factory=lambda: list(VARIANTS))
    overrides: List[str] = field(default_factory=list)
    reference: str = "static"

    def validate(self) -> "Ablation":
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ConfigError(f"--variants: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(VARIANTS)})")
        if self.reference not in self.variants:
            raise ConfigError(f"--reference {self.reference!r} is not one of the variants ({', '.join(self.variants)})")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ConfigError(f"--seeds: need seeds >= 0, got {self.seeds}")
        for variant in self.variants:  # every variant's config is valid before anything runs
            load_config(self.config, self.variant_args(variant, self.seeds[0]))
        return self

    def variant_args(self, variant: str, seed: int) -> List[str]:
        cfg = load_config(self.config, list(self.overrides))
        fill = {"user_id_dim": cfg.model.user_id_dim}
        if variant == "static-wide":
            fill["wide_dims"] = "[" + ",".join(map(str, wide_static_dims(cfg.model, self.feat_dim(cfg)))) + "]"
        mine = [o.format(**fill) for o in VARIANTS[variant]]
        return [*self.overrides, *mine, f"train.seed={seed}", f"run_dir={self.run_dir(variant, seed)}"]

    def run_dir(self, variant: str, seed: int) -> Path:
        return Path(self.out) / "runs" / f"{variant}-s{seed}"

    @staticmethod
    def feat_dim(cfg) -> int:
        from metammf_dist.data.dataset import Dataset

        return Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None).feat_dim


def wide_static_dims(model_cfg, feat_dim: int) -> List[int]:
    """``fusion_dims`` of a static MLP whose hidden widths, scaled by one factor, give it (about) as many parameters
    as the meta fusion of ``model_cfg`` with its meta-learner; the output width stays.  No hidden layer: unchanged."""
    from dataclasses import replace

    from metammf_dist.model.summary import count_parameters

    def params(cfg) -> int:
        counts = count_parameters(cfg, 1, 1, feat_dim)
        return counts["fusion_layers"] + counts["meta_learner"]

    dims = list(model_cfg.fusion_dims)
    if len(dims) < 2:
        return dims
    target = params(replace(model_cfg, fusion="meta"))
    lo, hi = 1.0, 2.0
    scaled = lambda f: [max(1, round(d * f)) for d in dims[:-1]] + [dims[-1]]  # noqa: E731
    while params(replace(model_cfg, fusion="static", fusion_dims=scaled(hi))) < target:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if params(replace(model_cfg, fusion="static", fusion_dims=scaled(mid))) < target else (lo, mid)
    return scaled(hi)


def run_ablation(ab: Ablation, log: Callable[[str], None] = print, jobs: int = 1) -> Path:
    """Train every missing (variant, seed) of ``ab``, ``jobs`` runs at a time (each its own one-thread process;
    seeds first, in order); returns the CSV path (rewritten after every run)."""
    ab.validate()
    out = Path(ab.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    plans = json.loads((out / PLAN_FILE).read_text()) if (out / PLAN_FILE).is_file() else []
    plans = [plans] if isinstance(plans, dict) else plans  # one invocation, as a single object
    if asdict(ab) not in plans:  # every invocation that added runs here
        (out / PLAN_FILE).write_text(json.dumps(plans + [asdict(ab)], indent=1) + "\n")
    todo = []
    for seed in ab.seeds:
        for variant in ab.variants:
            run_dir = ab.run_dir(variant, seed)
            if (run_dir / "final_metrics.json").is_file():
                if variant in WITH_META_LEARNER and not probe_is_current(run_dir):
                    write_probe(run_dir)
                continue
            todo.append((variant, seed))
    probes = threading.Lock()  # the probes run in this process: one at a time

    def one(variant: str, seed: int) -> None:
        log(f"ablate: {variant} seed {seed} -> {ab.run_dir(variant, seed)}")
        train_one(ab, variant, seed, probes)

    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:  # threads only wait for the run processes
        futures = [pool.submit(one, variant, seed) for variant, seed in todo]
        try:
            for future in as_completed(futures):
                future.result()
                with probes:
                    write_results(ab, log)
        except BaseException:
            for future in futures:
                future.cancel()  # runs not started yet; those running finish (each resumable)
            raise
    return write_results(ab, log)


def train_one(ab: Ablation, variant: str, seed: int, probes: Optional[threading.Lock] = None) -> None:
    run_dir = ab.run_dir(variant, seed)
    args = [ab.config, *ab.variant_args(variant, seed)] + (["--resume"] if run_dir.exists() else [])
    log_path = Path(str(run_dir) + ".log")
    with open(log_path, "a") as fh:
        proc = subprocess.run(train_command(args), env=child_env(threads=1, TQDM_DISABLE="1"), stdout=fh,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise TrainingError(f"ablate: {variant} seed {seed} failed (exit {proc.returncode}); see {log_path}")
    if variant in WITH_META_LEARNER:
        with probes or contextlib.nullcontext():
            write_probe(run_dir)
    keep_best_checkpoint(run_dir)


def write_probe(run_dir: Path) -> None:
    from metammf_dist.ablation.probe import probe_run

    (run_dir / "probe.json").write_text(json.dumps(probe_run(str(run_dir)), indent=1, sort_keys=True) + "\n")


def probe_is_current(run_dir: Path) -> bool:
    from metammf_dist.ablation.probe import PROBE_VERSION

    path = run_dir / "probe.json"
    return path.is_file() and json.loads(path.read_text()).get("version") == PROBE_VERSION


def keep_best_checkpoint(run_dir: Path) -> None:
    """Remove every checkpoint of ``run_dir`` but the one ``best.json`` names (and point ``latest.json`` at it)."""
    root = run_dir / "checkpoints"
    best = root / "best.json"
    if not best.is_file():
        return
    tag = json.loads(best.read_text())["tag"]
    for d in root.iterdir():
        if d.is_dir() and d.name != tag:
            shutil.rmtree(d)
    (root / "latest.json").write_text(json.dumps({"tag": tag}))


def collect(ab: Ablation) -> List[dict]:
    """One row per finished run folder under ``DIR/runs`` (variants in ``VARIANTS`` order, then seeds)."""
    rows = []
    for run_dir in sorted((Path(ab.out) / "runs").glob("*-s*")):
        final = run_dir / "final_metrics.json"
        if not run_dir.is_dir() or not final.is_file():
            continue
        variant, seed = run_dir.name.rsplit("-s", 1)
        row = {"variant": variant, "seed": int(seed)}
        row.update({k: v for k, v in sorted(json.loads(final.read_text()).items()) if isinstance(v, (int, float))})
        usage = run_dir / "usage.json"
        if usage.is_file():
            row["train_seconds"] = round(float(json.loads(usage.read_text())["train_seconds"]), 1)
        probe = run_dir / "probe.json"
        if probe.is_file():
            row.update({f"probe_{k}": v for k, v in sorted(json.loads(probe.read_text()).items())
                        if isinstance(v, float)})
        rows.append(row)
    order = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(rows, key=lambda r: (order.get(r["variant"], len(order)), r["variant"], r["seed"]))


def write_csv(rows: List[dict], path: Path) -> None:
    columns = ["variant", "seed"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


def write_results(ab: Ablation, log: Callable[[str], None] = print) -> Path:
    from metammf_dist.ablation.report import markdown, read_csv

    out = Path(ab.out)
    rows = collect(ab)
    write_csv(rows, out / RESULTS_CSV)
    if rows:
        (out / RESULTS_MD).write_text(markdown(read_csv(out / RESULTS_CSV), ab.reference))
    log(f"ablate: {len(rows)} finished runs -> {out / RESULTS_CSV}, {out / RESULTS_MD}")
    return out / RESULTS_CSV
