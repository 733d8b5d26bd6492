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
import subprocess
import time
from pathlib import Path

import pytest
from launching import (
    CONFIG,
    REPO,
    TIMEOUT_S,
    assert_close,
    assert_complete_run,
    free_port,
    kill_tree,
    launch_env,
    metrics_of,
    shared_reference,
    start,
    tail,
    train_args,
    wait_all,
)


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
