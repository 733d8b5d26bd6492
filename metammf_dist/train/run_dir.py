"""The run folder tells the whole story of a run.

``RUN/config.yaml`` (resolved config), ``ds_config.json`` (the DeepSpeed config actually used),
``git.txt`` (commit + ``git status``/diff of the code tree), ``metrics.csv`` (one row per evaluation and per
logged training window), ``tb/`` (TensorBoard events), ``checkpoints/``, ``final_metrics.json``, ``usage.json``
(time per phase, peak RSS per rank).
Only rank 0 writes here.
"""
from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path
from typing import Optional

from metammf_dist.config import Config, save_config
from metammf_dist.distributed.process_group import DistInfo

METRIC_FIELDS = ["time", "epoch", "step", "split", "loss", "examples_per_s", "metric", "value"]


def _git_description() -> str:
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "HEAD").strip() or "unknown (not a git checkout)"
    return f"commit: {head}\n\n# git status --short\n{git('status', '--short')}\n# git diff\n{git('diff')}"


class RunDir:
    def __init__(self, path: str, info: DistInfo):
        self.path = Path(path)
        self.info = info
        self._tb = None
        if info.is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_start(self, cfg: Config, ds_config: dict) -> None:
        if not self.info.is_main:
            return
        save_config(cfg, str(self.path / "config.yaml"))
        (self.path / "ds_config.json").write_text(json.dumps(ds_config, indent=2, sort_keys=True))
        (self.path / "git.txt").write_text(_git_description())

    def log_metrics(self, epoch: int, step: int, split: str, metrics: dict, loss: Optional[float] = None,
                    examples_per_s: Optional[float] = None) -> None:
        if not self.info.is_main:
            return
        path = self.path / "metrics.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            if new:
                w.writeheader()
            now = f"{time.time():.3f}"
            rows = metrics.items() if metrics else [("", "")]
            for name, value in rows:
                w.writerow({"time": now, "epoch": epoch, "step": step, "split": split, "loss": loss,
                            "examples_per_s": examples_per_s, "metric": name, "value": value})
        tb = self.tensorboard()
        if tb is not None:
            if loss is not None:
                tb.add_scalar(f"{split}/loss", loss, step)
            if examples_per_s is not None:
                tb.add_scalar(f"{split}/examples_per_s", examples_per_s, step)
            for name, value in (metrics or {}).items():
                if isinstance(value, (int, float)):
                    tb.add_scalar(f"{split}/{name}", value, step)

    def tensorboard(self):
        if self._tb is None and self.info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                return None
            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def write_final(self, metrics: dict) -> None:
        if self.info.is_main:
            (self.path / "final_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))

    def write_usage(self, usage: dict) -> None:
        """``usage.json``: time per phase (train steps, refreshes, evaluations) and peak RSS per rank."""
        if self.info.is_main:
            (self.path / "usage.json").write_text(json.dumps(usage, indent=1, sort_keys=True))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
