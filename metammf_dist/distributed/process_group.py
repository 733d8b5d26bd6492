"""Process-group setup for every launcher: single process, torchrun, the deepspeed launcher, Slurm.

Rank and world size come from the environment the launcher sets (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*).
Under a bare ``srun`` only SLURM_* variables exist; they are mapped here, because DeepSpeed's own
fallback is MPI discovery (needs mpi4py).  Backend: nccl when CUDA is available, gloo otherwise.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _map_slurm_env(env=os.environ) -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR from SLURM_* when a launcher did not set them."""
    if "RANK" in env or "SLURM_PROCID" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        env["MASTER_ADDR"] = _first_host(nodelist)
    env.setdefault("MASTER_PORT", str(29000 + int(env.get("SLURM_JOB_ID", "0")) % 1000))


def _first_host(nodelist: str) -> str:
    """First host of a Slurm node list such as ``node[01-04,07],gpu2`` (no scontrol needed)."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist.split("]")[0] + "]"
    if "[" not in head:
        return head
    prefix, rng = head.split("[", 1)
    first = rng.rstrip("]").split(",")[0].split("-")[0]
    return prefix + first


FREE_PORTS = range(20000, 32000)  # below Linux's ephemeral range (32768-60999): no outgoing connection takes it


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port (for a one-rank group, a child torchrun's --master_port, a test daemon), drawn at random
    from ``FREE_PORTS``.  Not the kernel's port-0 choice: that comes from the ephemeral range, where any
    outgoing connection made before the master binds it (a rank's, a daemon's) may take the same number."""
    import random
    import socket

    for port in random.SystemRandom().sample(FREE_PORTS, 200):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port among 200 tried in {FREE_PORTS.start}-{FREE_PORTS.stop - 1}")


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def train_command(train_args, world_size: int = 1) -> list:
    """``python -m metammf_dist train ARGS`` for one rank, under ``torch.distributed.run`` for several."""
    if world_size == 1:
        return [sys.executable, "-m", "metammf_dist", "train", *train_args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world_size}",
            f"--master_port={free_port()}", "-m", "metammf_dist", "train", *train_args]


def child_env(base: Optional[dict] = None, threads: Optional[int] = None, **extra: str) -> dict:
    """Environment for a child training run: ``base`` (default ``os.environ``) without this process's launch
    variables, ``TORCH_EXTENSIONS_DIR`` defaulting to the project's, ``OMP_NUM_THREADS`` if ``threads``."""
    from pathlib import Path

    env = dict(os.environ if base is None else base, **extra)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".torch_extensions"))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    for key in LAUNCH_VARS:
        env.pop(key, None)
    return env


def init_distributed(timeout_s: int = 600) -> DistInfo:
    """Initialise torch.distributed (via DeepSpeed, so its comm layer knows the group) if launched with >1 rank."""
    _map_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    # local_rank modulo the visible GPUs: under `srun --gpus-per-task=1` each task sees only its own GPU
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world == 1 and "MASTER_ADDR" not in os.environ and not dist.is_initialized():
        # A plain single process: a one-rank group on an in-memory store (no port to pick, so no race with
        # other processes for it), which DeepSpeed then takes over instead of falling back to MPI discovery.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=timeout_s))
    if not dist.is_initialized():
        # Importing DeepSpeed imports torch._inductor, which forks a pool of compile workers unless
        # told otherwise; we never compile, and forked idle children only cost memory and exit time.
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        import deepspeed

        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=datetime.timedelta(seconds=timeout_s),
            rank=rank,
            world_size=world,
        )
    else:  # DeepSpeed's comm layer adopts the group already there
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's value of ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def log_main(info: DistInfo, *parts) -> None:
    """Rank 0 speaks; every rank works.  Goes to stderr so stdout's last line stays the metrics JSON."""
    if info.is_main:
        print(*parts, file=sys.stderr, flush=True)


def shutdown(info: DistInfo) -> None:
    """Final barrier so no rank exits while another still needs it.

    The group is not destroyed: with gloo, ``destroy_process_group`` on one rank could block for good
    once its peer had already exited (seen 1 run in 5 here); process exit releases it instead.
    """
    if dist.is_initialized() and info.distributed:
        dist.barrier()
