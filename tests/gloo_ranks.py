"""Helpers for tests that run a function in 2 real gloo processes (spawned, CPU).

``init_rank`` joins the group through a file store (no TCP port to pick, so no race with whatever else
takes ports on the CI machine) and arms a stack dump on SIGUSR1; ``leave`` ends a rank without tearing
gloo down (``destroy_process_group`` and interpreter teardown with a live gloo group intermittently block
or abort, pytorch/pytorch#75097; the trainer does the same, ``cli.entry``); ``run_ranks`` starts the ranks,
and a rank still alive at the deadline prints every thread's Python stack before it is stopped.
"""
import faulthandler
import os
import signal
import sys
import time
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


def init_rank(rank: int, world_size: int, out_dir: str) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))


def leave() -> None:
    dist.barrier()  # no rank leaves while another still needs it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(target, out_dir: str, world_size: int = 2, timeout_s: float = 120.0) -> None:
    """``target(rank, out_dir)`` in ``world_size`` spawned processes; asserts all exit 0 within ``timeout_s``."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, out_dir)) for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:  # Python stacks of every thread to stderr (shown with the failure), one rank at a time
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(1)
    for p in hung:
        p.terminate()
        p.join(10)
    assert not hung, f"{len(hung)} rank(s) hung past {timeout_s}s"
    assert [p.exitcode for p in procs] == [0] * world_size, [p.exitcode for p in procs]
