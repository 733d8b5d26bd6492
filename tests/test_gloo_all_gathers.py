"""``deepspeed_engine.complete_async_all_gathers``: on gloo, DeepSpeed's asynchronous all-gathers are complete
when they return.

Why: ZeRO-3 launches one asynchronous all-gather per persistent parameter after every optimizer step and
waits on the last handle only.  Gloo runs asynchronous work on a thread pool, so earlier gathers can still be
running then (measured with plain torch.distributed: in 5-11 % of 300 trials of 24 gathers); the next
forward then read half-written parameters (2-rank ZeRO-3 runs diverged at a random step, sometimes to NaN).
Two real gloo processes; each launches DeepSpeed-style gather batches through ``deepspeed.comm`` and
checks every handle is complete at once and every output right.
"""
from pathlib import Path

import pytest
import torch
from gloo_ranks import init_rank, leave, run_ranks

WORLD_SIZE = 2
JOIN_TIMEOUT_S = 120
SIZES = [4800, 1600] + [16] * 22  # the small test model's persistent parameters: ID tables, then the rest


def worker(rank, out_dir):
    torch.set_num_threads(1)
    init_rank(rank, WORLD_SIZE, out_dir)
    import deepspeed
    import deepspeed.comm as ds_comm

    from metammf_dist.distributed.deepspeed_engine import complete_async_all_gathers

    deepspeed.init_distributed(dist_backend="gloo")
    complete_async_all_gathers()
    complete_async_all_gathers()  # idempotent: the functions are wrapped once
    unfinished, wrong = 0, 0
    for trial in range(100):
        outs, handles = [], []
        for i, n in enumerate(SIZES):
            out = torch.empty(WORLD_SIZE * n)
            handle = ds_comm.all_gather_into_tensor(out, torch.full((n,), float(trial * 100 + i * 10 + rank)),
                                                    async_op=True)
            unfinished += not handle.is_completed()
            outs.append(out)
            handles.append(handle)
        handles[-1].wait()  # what ZeRO-3 does; must now be enough
        for i, (n, out) in enumerate(zip(SIZES, outs)):
            want = torch.cat([torch.full((n,), float(trial * 100 + i * 10 + r)) for r in range(WORLD_SIZE)])
            wrong += not torch.equal(out, want)
    lists = [torch.empty(3) for _ in range(WORLD_SIZE)]
    handle = ds_comm.all_gather(lists, torch.full((3,), float(rank)), async_op=True)
    unfinished += not handle.is_completed()
    wrong += not all(torch.equal(t, torch.full((3,), float(r))) for r, t in enumerate(lists))
    Path(out_dir, f"rank{rank}.txt").write_text(f"{unfinished} {wrong}")
    leave()


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_deepspeed_async_all_gathers_are_complete_on_return(tmp_path):
    run_ranks(worker, str(tmp_path), WORLD_SIZE, JOIN_TIMEOUT_S)
    for rank in range(WORLD_SIZE):
        unfinished, wrong = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert (int(unfinished), int(wrong)) == (0, 0), f"rank {rank}: {unfinished} handles unfinished, {wrong} wrong"
