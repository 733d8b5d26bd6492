"""Horovod data-parallel training (metammf_dist/hvd/) under a real ``horovodrun -np 2 --gloo``.

Runs in the latest lane, whose set-up builds Horovod (``scripts/setup_latest.sh`` -> ``scripts/build_horovod.sh``);
it FAILS where ``horovod.torch`` does not import (a silent skip would hide a broken set-up), and the DGL lane does
not collect it.  The check is exact: a 2-rank Horovod run follows the same
trajectory as a 2-rank DeepSpeed ZeRO-0 run under torchrun (same batches, same dropout seeds, gradients
averaged over the ranks), so their final test metrics agree to float noise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import horovod.torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - a broken set-up
    pytest.fail(f"horovod.torch does not import ({exc}): run scripts/build_horovod.sh (scripts/setup_latest.sh does)",
                pytrace=False)

from helpers import REPO, SMALL, close, last_json, run_cli, run_env  # noqa: E402


def horovodrun(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "horovodrun"
    runner = str(exe) if exe.exists() else shutil.which("horovodrun")
    if runner is None:
        pytest.fail("horovod.torch imports but horovodrun is not on PATH")
    env = run_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [runner, "-np", "2", "--gloo", sys.executable, "-m", "metammf_dist.hvd", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.multiproc
def test_two_rank_horovod_matches_two_rank_deepspeed(synth_ds, tmp_path):
    common = ["configs/tiktok.yaml", f"data.path={synth_ds}", "train.epochs=2", *SMALL]
    out = horovodrun(*common, f"run_dir={tmp_path / 'hvd'}")
    rank0 = [x.split("<stdout>:", 1)[1] for x in out.stdout.splitlines() if x.startswith("[0]<stdout>:{")]
    hvd = json.loads(rank0[-1])
    assert hvd["world_size"] == 2 and hvd["recall@20"] > 0
    run = tmp_path / "hvd" / "hvd"
    assert (run / "best_model.pt").exists() and (run / "final_metrics.json").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    ds = last_json(run_cli("train", *common, "train.ds_config=configs/ds/zero0.json", f"run_dir={tmp_path / 'ds'}",
                           nproc=2))
    assert close(hvd, ds, 1e-6), (hvd, ds)
