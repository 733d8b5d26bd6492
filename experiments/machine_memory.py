"""Run a command and record the whole machine's memory while it runs: the peak of the summed PSS of the command's
process tree (each shared page, e.g. the node-shared train graph, counted once) and the peak of the machine's
used memory (MemTotal - MemAvailable, less its value at the start; the page cache does not count, shared
memory does).  Polls once a second; writes one JSON object to ``--out`` and exits with the command's code.

    python experiments/machine_memory.py --out peak.json -- torchrun ... -m metammf_dist train ...
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def used_bytes() -> int:
    return _meminfo("MemTotal") - _meminfo("MemAvailable")


def tree(root: int) -> list:
    """``root`` and its descendants (from /proc/*/stat parent links)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    base = used_bytes()
    started = time.time()
    proc = subprocess.Popen(command)
    peak_pss = peak_used = 0
    at_pss = at_used = 0.0
    while proc.poll() is None:
        pss = sum(pss_bytes(pid) for pid in tree(proc.pid))
        used = used_bytes() - base
        now = time.time() - started
        if pss > peak_pss:
            peak_pss, at_pss = pss, now
        if used > peak_used:
            peak_used, at_used = used, now
        time.sleep(args.every)
    result = {"returncode": proc.returncode, "seconds": round(time.time() - started, 1),
              "peak_pss_sum_gib": round(peak_pss / 2**30, 3), "peak_pss_at_s": round(at_pss, 1),
              "peak_machine_used_gib": round(peak_used / 2**30, 3), "peak_machine_used_at_s": round(at_used, 1),
              "machine_used_at_start_gib": round(base / 2**30, 3)}
    Path(args.out).write_text(json.dumps(result) + "\n")
    print(json.dumps(result), file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
