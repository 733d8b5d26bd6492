"""Run ``metammf_dist.cli.main(argv)`` in-process (same as ``python -m metammf_dist.cli ARGV``), then report
on stderr whether CUDA was used: a ``CUDA-CHECK {...}`` line with torch.cuda.is_initialized(), the peak
GPU memory the process allocated and the device of the first model parameter the trainer held (if any).
A Python exception is printed with its full traceback (exit code 1); the CLI's own exit code otherwise.

Usage: python experiments/gpu/cli_cuda.py train configs/tiktok.yaml key=value ...
"""
from __future__ import annotations

import json
import sys
import traceback

import torch

import metammf_dist.train.loop as loop

_devices = []
_orig_init = loop.Trainer.__init__


def _init(self, *a, **k):  # record where the trainer put the model
    _orig_init(self, *a, **k)
    _devices.append({"dist_device": str(self.info.device), "backend": self.info.backend,
                     "param_device": str(next(self.model.parameters()).device)})


loop.Trainer.__init__ = _init


def main() -> int:
    from metammf_dist.cli import main as cli_main

    rc = 1
    try:
        rc = cli_main(sys.argv[1:])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback is the finding
        traceback.print_exc()
        rc = 1
    info = {"rc": rc, "cuda_available": torch.cuda.is_available(), "cuda_initialized": torch.cuda.is_initialized(),
            "trainer": _devices}
    if torch.cuda.is_initialized():
        info.update(gpu=torch.cuda.get_device_name(), max_mem_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
    print("CUDA-CHECK " + json.dumps(info), file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
