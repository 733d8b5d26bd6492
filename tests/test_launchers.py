"""The launch scripts in launchers/ start real multi-process jobs that train exactly like one process.

Every case trains the MF scorer on a small synthetic catalog for 2 epochs with the same global batch and
seed; a 2-rank run splits each global batch across the ranks and averages gradients, so its final test
metrics must equal the 1-process run's (within 1e-4):
  * deepspeed.sh as two "nodes": a 2-line hostfile, two launcher processes with --no_ssh --node_rank 0/1;
  * torchrun.sh as two "nodes": two torchrun agents, --nnodes 2 --nproc-per-node 1, c10d rendezvous;
  * torchrun.sh --max-restarts 1 with 2 ranks, one rank SIGKILLed mid-epoch right after a mid-epoch
    checkpoint appears: the restarted group resumes from the checkpoint and ends with the same metrics.
Processes run in their own session with a timeout; leftovers are killed by process group.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiktok.yaml"
TIMEOUT_S = 240
# MF scorer, small dims; 3,070 train edges / batch 32 = 96 steps per epoch, a checkpoint every 25 steps.
TRAIN_OVERRIDES = [
    "model.scorer=mf", "model.fusion_dims=[16,8]", "model.item_id_dim=8", "model.user_id_dim=16",
    "train.epochs=2", "train.batch_size=32", "train.seed=7", "train.checkpoint_every_steps=25",
    "train.log_every=0",
]


def launch_env() -> dict:
    env = dict(os.environ)
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=env.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    diffs = {k: abs(float(got[k]) - float(want[k])) for k in want}
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


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return shared_reference(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    return shared_reference(tmp_path_factory)[1]


# -- argument handling (no training) ---------------------------------------------------------------------
@pytest.mark.parametrize("script,args,message", [
    ("torchrun.sh", [], "usage"),
    ("torchrun.sh", ["--nnodes", "2", "--", CONFIG], "--rdzv-endpoint"),
    ("deepspeed.sh", [], "usage"),
    ("deepspeed.sh", ["--hostfile", "h", "--no_ssh", "--node_rank", "0", "--", CONFIG], "--master_addr"),
])
def test_launcher_rejects_incomplete_arguments(script, args, message):
    res = subprocess.run(["bash", str(REPO / "launchers" / script), *args], cwd=REPO, env=launch_env(),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and message in res.stderr, res.stderr


# -- two simulated nodes -----------------------------------------------------------------------------------
@pytest.mark.multiproc
def test_deepspeed_two_nodes_hostfile_matches_single_process(synth, baseline, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("nodeA slots=1\nnodeB slots=1\n")  # names only: --no_ssh never contacts them
    port, run_dir = free_port(), tmp_path / "run"
    logs = [tmp_path / f"node{r}" for r in (0, 1)]
    procs = [start(["bash", "launchers/deepspeed.sh", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(r),
                    "--master_addr", "127.0.0.1", "--master_port", str(port), "--",
                    *train_args(synth, run_dir)], logs[r]) for r in (0, 1)]
    wait_all(procs, logs)
    metrics = metrics_of(logs)
    assert_close(metrics, baseline)
    assert_complete_run(run_dir, metrics)
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (16, 32)  # 2 ranks x 16
    world = [l for log in logs for l in log.with_suffix(".out").read_text().splitlines() if "dist_world_size=2" in l]
    assert len(world) == 2, "each launcher should start one process of a 2-rank world"


@pytest.mark.multiproc
def test_torchrun_two_nodes_c10d_matches_single_process(synth, baseline, tmp_path):
    endpoint, run_dir = f"127.0.0.1:{free_port()}", tmp_path / "run"
    logs = [tmp_path / f"node{r}" for r in (0, 1)]
    procs = [start(["bash", "launchers/torchrun.sh", "--nnodes", "2", "--nproc-per-node", "1",
                    "--rdzv-endpoint", endpoint, "--rdzv-id", "launch-test", "--",
                    *train_args(synth, run_dir)], logs[r]) for r in (0, 1)]
    wait_all(procs, logs)
    metrics = metrics_of(logs)
    assert_close(metrics, baseline)
    assert_complete_run(run_dir, metrics)
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == 16


# -- elastic restart ---------------------------------------------------------------------------------------
def worker_pids(proc: subprocess.Popen) -> dict:
    """LOCAL_RANK -> pid of the trainer processes started by a torchrun agent (its direct children; a
    trainer's own helper processes inherit its command line and environment)."""
    import psutil

    out = {}
    for child in psutil.Process(proc.pid).children(recursive=False):
        try:
            if "metammf_dist" in " ".join(child.cmdline()) and "LOCAL_RANK" in child.environ():
                out[int(child.environ()["LOCAL_RANK"])] = child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@pytest.mark.multiproc
def test_torchrun_restarts_killed_rank_from_checkpoint(synth, baseline, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "elastic"
    proc = start(["bash", "launchers/torchrun.sh", "--nproc-per-node", "2", "--max-restarts", "1",
                  "--monitor-interval", "1", "--", *train_args(synth, run_dir)], log)
    first_ckpt = run_dir / "checkpoints" / "epoch0000-step0000025" / "COMPLETE.json"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not first_ckpt.exists():
            assert proc.poll() is None, f"launcher exited before the first checkpoint:\n{tail(log.with_suffix('.err'))}"
            assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
            time.sleep(0.02)
        pids = worker_pids(proc)
        assert set(pids) == {0, 1}, f"expected 2 workers, found {pids}"
        os.kill(pids[1], signal.SIGKILL)
        killed_at = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["tag"]
    except BaseException:
        kill_tree(proc)
        raise
    wait_all([proc], [log], timeout=max(deadline - time.monotonic(), 30))
    err = log.with_suffix(".err").read_text(errors="replace")
    assert "resumed from epoch" in err, f"no resume after the kill (latest was {killed_at}):\n{tail(log.with_suffix('.err'))}"
    resumed = err.split("resumed from ", 1)[1].split()[0]
    assert not resumed.endswith("-step0000000"), f"expected a mid-epoch resume, got {resumed}"
    metrics = metrics_of([log])
    assert_close(metrics, baseline)
    assert_complete_run(run_dir, metrics)


# -- opt-in: single-node variants ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.multiproc
def test_deepspeed_single_node_num_gpus_two_matches_single_process(synth, baseline, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "ds"
    proc = start(["bash", "launchers/deepspeed.sh", "--num_gpus", "2", "--", *train_args(synth, run_dir)], log)
    wait_all([proc], [log])
    assert_close(metrics_of([log]), baseline)
