"""Helpers for the launcher and Slurm tests: start real multi-process jobs in their own sessions, wait with a
timeout (killing whole process groups), read rank 0's metrics line, and a 1-process reference run shared by
both test modules."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, free_port  # noqa: F401  (re-exported for the launcher tests)

from metammf_dist.distributed.process_group import LAUNCH_VARS

CONFIG = "configs/tiktok.yaml"
TIMEOUT_S = 240
# MF scorer, small dims; 3,070 train edges / batch 32 = 96 steps per epoch, a checkpoint every 25 steps.
TRAIN_OVERRIDES = [
    "model.scorer=mf", "model.fusion_dims=[16,8]", "model.item_id_dim=8", "model.user_id_dim=16",
    "train.epochs=2", "train.batch_size=32", "train.seed=7", "train.checkpoint_every_steps=25",
    "train.log_every=0",
]


def launch_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}  # an in-process one-rank group sets them
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")))
    return env


def make_synth(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "metammf_dist", "synth", str(out), "--users", "300", "--items", "200",
         "--interactions", "4000", "--modality", "image:16", "--modality", "text:8", "--seed", "1"],
        check=True, cwd=REPO, env=launch_env(), timeout=120, capture_output=True,
    )
    return out


def train_args(data: Path, run_dir: Path) -> list:
    return [CONFIG, f"data.path={data}", *TRAIN_OVERRIDES, f"run_dir={run_dir}"]


def start(cmd: list, log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so its whole tree can be killed), output to log.{out,err}."""
    return subprocess.Popen(cmd, cwd=REPO, env=launch_env(), start_new_session=True,
                            stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"))


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_all(procs: list, logs: list, timeout: float = TIMEOUT_S) -> None:
    """Wait for every process; on timeout or failure kill them all and fail with the tails of their logs."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        alive = [p for p in procs if p.poll() is None]
        for p in procs:  # a finished launcher may leave workers behind: kill every group
            kill_tree(p)
    bad = alive or [p for p in procs if p.returncode != 0]
    if bad:
        tails = "\n".join(f"--- {log.name} (rc={p.returncode}) ---\n{tail(log.with_suffix('.err'))}"
                          for p, log in zip(procs, logs))
        pytest.fail(f"{'timeout' if alive else 'launch failed'} after {timeout:.0f}s:\n{tails}")


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def metrics_of(logs: list) -> dict:
    """The one metrics JSON line printed by rank 0 (whichever log holds it)."""
    found = []
    for log in logs:
        for line in log.with_suffix(".out").read_text(errors="replace").splitlines():
            if line.startswith("{") and '"recall@20"' in line:
                found.append(json.loads(line))
    assert len(found) == 1, f"expected one metrics line from rank 0, found {len(found)}"
    return found[0]


def assert_close(got: dict, want: dict, tol: float = 1e-4) -> None:
    assert set(got) == set(want)
    assert got.get("checkpoint") == want.get("checkpoint"), f"evaluated {got.get('checkpoint')}, want {want.get('checkpoint')}"
    diffs = {k: abs(float(got[k]) - float(want[k])) for k in want if k != "checkpoint"}
    assert max(diffs.values()) <= tol, f"metrics differ: {diffs}\n got {got}\nwant {want}"


def assert_complete_run(run_dir: Path, metrics: dict) -> None:
    for name in ("config.yaml", "ds_config.json", "git.txt", "metrics.csv", "final_metrics.json",
                 "checkpoints/latest.json", "checkpoints/best.json"):
        assert (run_dir / name).is_file(), f"run folder lacks {name}"
    latest = json.loads((run_dir / "checkpoints/latest.json").read_text())["tag"]
    assert (run_dir / "checkpoints" / latest / "COMPLETE.json").is_file()
    assert json.loads((run_dir / "final_metrics.json").read_text())["recall@20"] == pytest.approx(metrics["recall@20"])


def run_single(data: Path, run_dir: Path) -> dict:
    """The reference: one plain process, no launcher."""
    log = run_dir.parent / f"{run_dir.name}-single"
    proc = start([sys.executable, "-m", "metammf_dist", "train", *train_args(data, run_dir)], log)
    wait_all([proc], [log])
    return metrics_of([log])


def shared_reference(tmp_path_factory) -> tuple:
    """(synthetic dataset, 1-process metrics), made once per test session and shared by test modules."""
    root = tmp_path_factory.getbasetemp() / "launch-reference"
    data, result = root / "synth", root / "single-metrics.json"
    if not result.exists():
        root.mkdir(exist_ok=True)
        if not (data / "dataset.json").exists():
            make_synth(data)
        result.write_text(json.dumps(run_single(data, root / "single")))
    return data, json.loads(result.read_text())
