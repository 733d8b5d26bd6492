"""A throw-away single-node Slurm on localhost for tests: munged + slurmctld + slurmd, no systemd.

    with SlurmCluster() as cluster:          # raises SlurmMissing if the binaries are absent
        subprocess.run(["sbatch", "--wait", ...], env=cluster.env)

Everything lives in one private folder (config, munge key and socket, state, spool, logs, pid files); the
daemons run in the foreground as children of the test process on free ports, and ``stop()`` ends them by
their pid files (falling back to the child handles), then removes the folder.  Nothing under /etc or /run
is touched: munged gets its own key and socket (``AuthInfo=socket=...``), so a munged/slurm already running
on the machine is left alone.  Install the binaries with ``scripts/install_slurm.sh`` (Debian packages).

Settings that matter here: ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` (no cgroups or
systemd in a container), ``SelectType=select/cons_tres`` with cores as the resource, ``SlurmUser=root``,
the node line from ``slurmd -C``, and ``MinJobAge=0`` so ``sbatch --wait`` keeps polling every 2 s (it backs
off to 32 s when job records may be purged).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from metammf_dist.distributed.process_group import free_port

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol")
AS_MUNGE = {"user": "munge", "group": "munge", "extra_groups": []}  # munged refuses to run as root
INSTALL_HINT = "run `bash scripts/install_slurm.sh` (Debian: slurmctld slurmd slurm-client munge)"


class SlurmMissing(RuntimeError):
    pass


def _path_with_sbin() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [d for d in SBIN_DIRS if d not in parts])


def missing_binaries() -> list:
    path = _path_with_sbin()
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


class SlurmCluster:
    def __init__(self, partition: str = "debug"):
        self.partition = partition
        self.root: Optional[Path] = None
        self.procs: dict = {}
        self.env: dict = {}

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 60) -> None:
        missing = missing_binaries()
        if missing:
            raise SlurmMissing(f"Slurm binaries missing: {', '.join(missing)}; {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise SlurmMissing("the local Slurm test cluster runs its daemons as root (SlurmUser=root)")
        # /tmp itself is fine for munged's directory checks (sticky bit); pytest's 0700 tmp dirs are not,
        # since munged runs as the munge user.
        self.root = Path(tempfile.mkdtemp(prefix="metammf-slurm-"))
        self.root.chmod(0o755)
        try:
            self._start_munge()
            self._write_conf()
            self.env = dict(os.environ, SLURM_CONF=str(self.root / "slurm.conf"), PATH=_path_with_sbin())
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.root / "slurm.conf")])
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.root / "slurm.conf")])
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.root is None:
            return
        if "slurmctld" in self.procs and self.procs["slurmctld"][0].poll() is None:
            # jobs still running (a failed test): cancel them so slurmd ends their steps
            try:
                subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            self._stop_daemon(name)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    # -- helpers for tests ------------------------------------------------------------------------
    def run(self, cmd: list, timeout: float, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True, timeout=timeout, **kw)

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.root / name if self.root else None
            if p and p.exists():
                out.append(f"--- {name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(out)

    # -- internals --------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        mdir = self.root / "munge"
        mdir.mkdir()
        mdir.chmod(0o755)  # munged: the socket directory must be searchable by all; the key stays 0600
        shutil.chown(mdir, "munge", "munge")
        key = mdir / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, timeout=30, capture_output=True,
                       env=dict(os.environ, PATH=_path_with_sbin()), **AS_MUNGE)
        self._spawn("munged", [
            "munged", "--foreground", f"--socket={mdir / 'munge.socket'}",
            f"--key-file={key}", f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}",
            f"--seed-file={mdir / 'munged.seed'}",
        ], pidfile=mdir / "munged.pid", user=AS_MUNGE)
        deadline = time.monotonic() + 20
        while not (mdir / "munge.socket").exists():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create its socket\n{self.logs()}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True,
                              env=dict(os.environ, PATH=_path_with_sbin())).stdout.splitlines()[0]
        # RealMemory from slurmd -C would be checked against the node; memory is not a scheduled resource here.
        node = " ".join(w for w in node.split() if not w.startswith("RealMemory="))
        host = node.split()[0].split("=", 1)[1]
        r = self.root
        for d in ("state", "spool"):
            (r / d).mkdir()
        conf = f"""\
ClusterName=metammftest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r / 'munge' / 'munge.socket'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=0
KillWait=5
InactiveLimit=0
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        (r / "slurm.conf").write_text(conf)

    def _spawn(self, name: str, cmd: list, pidfile: Optional[Path] = None, user: Optional[dict] = None) -> None:
        log = open(self.root / f"{name}.stdout", "w")
        self.procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                             env=dict(os.environ, PATH=_path_with_sbin()), **(user or {})),
                            pidfile or self.root / f"{name}.pid")

    def _check_alive(self, name: str) -> None:
        proc, _ = self.procs[name]
        if proc.poll() is not None:
            out = (self.root / f"{name}.stdout").read_text(errors="replace")
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{out}\n{self.logs()}")

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            for name in ("slurmctld", "slurmd"):
                self._check_alive(name)
            res = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True, timeout=30)
            state = res.stdout.strip()
            if res.returncode == 0 and state == "idle":
                return
            time.sleep(0.25)
        raise RuntimeError(f"the Slurm node is not idle after {timeout_s}s (sinfo: {state!r})\n{self.logs()}")

    def _stop_daemon(self, name: str) -> None:
        if name not in self.procs:
            return
        proc, pidfile = self.procs.pop(name)
        pids = [proc.pid]  # run in the foreground: the pid file names the same process
        try:
            pid = int(pidfile.read_text().split()[0])
            if pid != proc.pid:
                pids.insert(0, pid)
        except (OSError, ValueError, IndexError):
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(timeout=15)
