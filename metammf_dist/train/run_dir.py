"""The run folder tells the whole story of a run.

``RUN/config.yaml`` (resolved config), ``ds_config.json`` (the DeepSpeed config actually used),
``git.txt`` (commit + ``git status``/diff of the code tree), ``metrics.csv`` (one row per evaluation and per
logged training window), ``tb/`` (TensorBoard events), ``checkpoints/``, ``final_metrics.json``, ``usage.json``
(time per phase, peak RSS per rank).
Only rank 0 writes here.

**One writer.**  ``claim`` takes ``RUN/.lock`` (an exclusive ``flock`` held for the life of the process, released
by the kernel on any exit) and writes its pid, host and start time into it: a second training on the same folder
is refused in one line naming the holder; a lock file whose process is gone (no ``flock`` held) is reported as
stale and taken over.  A new run (no ``--resume``) into a folder that already holds a run is refused unless
``--overwrite``, which moves the old run's files aside into a sibling folder ``RUN.replaced-<time>`` (nothing is
deleted).
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from metammf_dist.config import Config, save_config
from metammf_dist.distributed.process_group import DistInfo, log_main

METRIC_FIELDS = ["time", "epoch", "step", "split", "loss", "examples_per_s", "metric", "value"]
LOCK_NAME = ".lock"
RUN_FILES = ("config.yaml", "metrics.csv", "final_metrics.json", "checkpoints")  # what makes a folder hold a run


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
        self._lock = None

    def claim(self, resume: bool = False, overwrite: bool = False) -> Optional[str]:
        """Rank 0: make the folder, take its lock, and check that this run may write here.  Returns a one-line
        reason to refuse (the lock is then released), or None.  Notes (stale lock, moved-aside run) go to stderr."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            return f"run folder {self.path}: cannot write there ({exc.strerror or exc})"
        lock = os.fdopen(fd, "r+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(lock)
            lock.close()
            return (f"run folder {self.path} is in use by another training ({holder}); wait for it, or give this "
                    "run its own run_dir")
        previous = _read_holder(lock)
        if previous != "no holder recorded":
            log_main(self.info, f"note: {self.path}/{LOCK_NAME} was left by {previous}, which no longer holds it "
                                "(a stale lock); taken over")
        lock.seek(0)
        lock.truncate()
        lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        lock.flush()
        self._lock = lock
        present = [name for name in RUN_FILES if (self.path / name).exists()
                   and not (name == "checkpoints" and not any((self.path / name).iterdir()))]
        if present and not resume:
            if not overwrite:
                self.release()
                return (f"run folder {self.path} already holds a run ({', '.join(present)}); pass --resume to "
                        "continue it or --overwrite to move it aside")
            aside = self._move_aside()
            log_main(self.info, f"--overwrite: the previous run in {self.path} was moved to {aside}")
        return None

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
            n += 1
        aside.mkdir()
        for entry in self.path.iterdir():
            if entry.name != LOCK_NAME:
                entry.rename(aside / entry.name)
        return aside

    def release(self) -> None:
        """Give the lock back and remove the lock file (rank 0, at the end of the run)."""
        if self._lock is not None:
            try:
                os.unlink(self.path / LOCK_NAME)
            except OSError:
                pass
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def trim_metrics(self, after_step: int) -> None:
        """Drop the ``metrics.csv`` rows logged after global step ``after_step`` (a resumed run logs them again)."""
        path = self.path / "metrics.csv"
        if not self.info.is_main or not path.exists():
            return
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        kept = [r for r in rows if r.get("step") not in (None, "") and int(float(r["step"])) <= after_step]
        if len(kept) == len(rows):
            return
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, path)

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
        self.release()


def _read_holder(lock) -> str:
    """"pid P on host H, started at T" from a lock file's contents."""
    try:
        lock.seek(0)
        info = json.loads(lock.read() or "{}")
    except (ValueError, OSError):
        return "no holder recorded"
    if not info:
        return "no holder recorded"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return f"pid {info.get('pid')} on host {info.get('host')}, started {started}"
