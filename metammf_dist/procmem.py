"""This process's memory figures from ``/proc/self/status`` (Linux), with portable fallbacks.

Shared by the trainer's ``usage.json`` and the benchmarks: ``status_bytes("VmRSS")`` / ``("VmHWM")``,
``peak_rss_bytes()``, and ``reset_peak_rss()`` (``/proc/self/clear_refs``: VmHWM restarts from VmRSS).
"""
from __future__ import annotations

from typing import Optional


def status_bytes(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``, ...); None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident set of this process image: VmHWM (``getrusage``'s maxrss survives exec() and would count a
    parent's memory in a freshly spawned child), else ``ru_maxrss`` (KiB on Linux)."""
    peak = status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def pss_bytes() -> Optional[int]:
    """This process's proportional set size (``/proc/self/smaps_rollup``): each page shared by k processes counts
    1/k, so the ranks of a node sum to the node's memory (RSS counts a shared page in every process); None where
    the kernel has no rollup."""
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return status_bytes("VmHWM") is not None
