"""launchers/slurm/train.sbatch on a real single-node Slurm started on localhost (tests/slurm_cluster.py).

* torchrun mode (the default), 1 node x 2 ranks: ``sbatch --wait`` finishes, the run folder is complete and
  the metrics equal the 1-process run's (same global batch and seed);
* srun mode, a 2-task job: each task is one rank (SLURM_PROCID/NTASKS/LOCALID mapped by metammf-dist), same
  metrics; plus a bare ``srun -n 2`` probe of ``init_distributed`` checking the mapping itself.
The Slurm binaries must be installed (scripts/install_slurm.sh, run by CI): when they are missing the tests
FAIL, they do not skip.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from launching import (
    REPO,
    assert_close,
    assert_complete_run,
    launch_env,
    shared_reference,
    train_args,
)
from slurm_cluster import SlurmCluster, SlurmMissing

JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster():
    try:
        c = SlurmCluster()
        c.start()
    except SlurmMissing as exc:
        pytest.fail(str(exc))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return shared_reference(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    return shared_reference(tmp_path_factory)[1]


def job_env(cluster, **extra) -> dict:
    env = launch_env()
    env.update(SLURM_CONF=cluster.env["SLURM_CONF"], PATH=cluster.env["PATH"], **extra)
    return env


def sbatch_wait(cluster, options: list, args: list, out: Path, **env) -> str:
    """Submit train.sbatch with ``sbatch --wait``; return the job's output; fail with it on error."""
    res = cluster.run(["sbatch", "--wait", f"--output={out}", f"--chdir={REPO}", *options,
                       str(REPO / "launchers/slurm/train.sbatch"), *args],
                      timeout=JOB_TIMEOUT_S, env=job_env(cluster, **env))
    text = out.read_text(errors="replace") if out.exists() else "(no job output)"
    if res.returncode != 0:
        tail = "\n".join(text.splitlines()[-60:])
        pytest.fail(f"sbatch --wait failed (rc={res.returncode}): {res.stdout}{res.stderr}\n--- job output ---\n{tail}\n{cluster.logs()}")
    return text


def metrics_line(text: str) -> dict:
    found = [json.loads(l) for l in text.splitlines() if l.startswith("{") and '"recall@20"' in l]
    assert len(found) == 1, f"expected one metrics line (rank 0), found {len(found)}"
    return found[0]


@pytest.mark.multiproc
def test_sbatch_torchrun_mode_completes_run_folder(cluster, synth, baseline, tmp_path):
    run_dir = tmp_path / "run"
    text = sbatch_wait(cluster, ["--ntasks=1", "--cpus-per-task=2"], train_args(synth, run_dir),
                       tmp_path / "job.out", METAMMF_PROCS_PER_NODE="2")
    assert "mode=torchrun" in text
    metrics = metrics_line(text)
    assert_complete_run(run_dir, metrics)
    assert_close(metrics, baseline)
    assert json.loads((run_dir / "ds_config.json").read_text())["train_micro_batch_size_per_gpu"] == 16


@pytest.mark.multiproc
def test_sbatch_two_task_srun_mode_maps_slurm_ranks(cluster, synth, baseline, tmp_path):
    run_dir = tmp_path / "run"
    # submitted from a shell that holds one-rank launch variables (sbatch exports them to the job): the tasks
    # still take their ranks from Slurm
    text = sbatch_wait(cluster, ["--ntasks-per-node=2", "--cpus-per-task=1"], train_args(synth, run_dir),
                       tmp_path / "job.out", METAMMF_LAUNCHER="srun", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    tasks = sorted(re.findall(r"task SLURM_PROCID=(\d) SLURM_NTASKS=(\d) SLURM_LOCALID=(\d)", text))
    assert tasks == [("0", "2", "0"), ("1", "2", "1")], text[-3000:]
    metrics = metrics_line(text)
    assert_complete_run(run_dir, metrics)
    assert_close(metrics, baseline)  # ranks 0 and 1 each trained their half of every global batch
    assert json.loads((run_dir / "ds_config.json").read_text())["train_micro_batch_size_per_gpu"] == 16


PROBE = """
import json, os, torch, torch.distributed as dist
from metammf_dist.distributed.process_group import init_distributed
info = init_distributed(timeout_s=60)
total = torch.tensor([float(info.rank)])
dist.all_reduce(total)
print(json.dumps({"slurm": [int(os.environ[k]) for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")],
                  "info": [info.rank, info.world_size, info.local_rank], "sum": total.item(),
                  "master": os.environ["MASTER_ADDR"], "nodelist": os.environ["SLURM_JOB_NODELIST"]}))
dist.destroy_process_group()
"""


@pytest.mark.multiproc
def test_bare_srun_two_tasks_map_to_ranks(cluster):
    """No launcher and no RANK/MASTER_*: init_distributed maps SLURM_* itself and forms a 2-rank group."""
    env = job_env(cluster)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    res = cluster.run(["srun", "--ntasks=2", "--cpus-per-task=1", f"--chdir={REPO}", sys.executable, "-c", PROBE],
                      timeout=120, env=env)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{cluster.logs()}"
    rows = sorted((json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")), key=lambda r: r["slurm"])
    assert [r["slurm"] for r in rows] == [[0, 2, 0], [1, 2, 1]]
    assert [r["info"] for r in rows] == [[0, 2, 0], [1, 2, 1]]  # RANK=PROCID, WORLD_SIZE=NTASKS, LOCAL_RANK=LOCALID
    assert all(r["sum"] == 1.0 for r in rows)  # the group really formed: 0 + 1 all-reduced
    assert all(r["master"] == r["nodelist"] for r in rows)  # single node: master is that node


@pytest.mark.slow
@pytest.mark.multiproc
def test_sbatch_deepspeed_mode_matches_single_process(cluster, synth, baseline, tmp_path):
    run_dir = tmp_path / "run"
    text = sbatch_wait(cluster, ["--ntasks=1", "--cpus-per-task=2"], train_args(synth, run_dir),
                       tmp_path / "job.out", METAMMF_LAUNCHER="deepspeed", METAMMF_PROCS_PER_NODE="2")
    metrics = metrics_line(text)
    assert_complete_run(run_dir, metrics)
    assert_close(metrics, baseline)
