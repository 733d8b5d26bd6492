"""Do gloo's asynchronous all-gathers finish in launch order?  (docs/design/zero3_gloo.md.)

Two gloo processes each launch 24 async ``all_gather_into_tensor`` calls (the small test model's persistent
parameter sizes: two ID tables, then 22 small tensors), wait on the LAST handle only -- what DeepSpeed 0.18.2's
ZeRO-3 coalesced gather does -- and count the trials in which an earlier gather was still unfinished then.
    python experiments/gloo_gather_order.py [TRIALS]      (default 300; plain torch.distributed, no DeepSpeed)
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = [4800, 1600] + [16] * 22


def work(rank: int, store: str, trials: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    unfinished = 0
    for _ in range(trials):
        handles = [dist.all_gather_into_tensor(torch.empty(2 * n), torch.full((n,), float(rank)), async_op=True)
                   for n in SIZES]
        handles[-1].wait()
        unfinished += not all(h.is_completed() for h in handles)
        for h in handles:
            h.wait()
    print(f"rank {rank}: an earlier gather unfinished after the last completed in {unfinished} of {trials} trials",
          flush=True)
    dist.barrier()
    os._exit(0)  # no gloo teardown (tests/gloo_ranks.py says why)


if __name__ == "__main__":
    store = os.path.join(tempfile.mkdtemp(), "store")
    mp.start_processes(work, args=(store, int(sys.argv[1]) if len(sys.argv) > 1 else 300), nprocs=2,
                       start_method="spawn")
