"""Atomic DeepSpeed checkpoints inside a run folder.

Layout: ``RUN/checkpoints/<tag>/`` (DeepSpeed's files) + ``<tag>/COMPLETE.json`` (our marker, written by
rank 0 after every rank finished writing, via a temp name and rename; it records each file's size and sha256)
+ ``RUN/checkpoints/latest.json`` (pointer, written the same way).  A tag without its marker is a half-written
checkpoint: it is never loaded and is removed by the next save.  ``best.json`` points at the checkpoint with
the best valid metric.

Before anything loads a checkpoint, ``resolve`` checks it (``checkpoint_check.verify``: marker, sizes, hashes,
no code in its pickles); one that fails is named in a warning and the next newest is tried.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path
from typing import List, Optional

import torch

from metammf_dist.distributed.process_group import DistInfo, barrier, broadcast_object, log_main
from metammf_dist.errors import TrainingError
from metammf_dist.train.checkpoint_check import MARKER, file_digests, verify


def _atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through a temp name and a rename: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rank_file(prefix: str, rank, world_size) -> str:
    """``<prefix>.rank<r>-of-<W>.pt``: one rank's part of row-sharded state (``prefix`` without ``.pt``)."""
    stem = prefix[:-3] if prefix.endswith(".pt") else prefix
    if isinstance(rank, int):
        return f"{stem}.rank{rank:05d}-of-{world_size:05d}.pt"
    return f"{stem}.rank{rank}-of-{world_size}.pt"


def tag_for(epoch: int, step_in_epoch: int) -> str:
    return f"epoch{epoch:04d}-step{step_in_epoch:07d}"


class Checkpoints:
    def __init__(self, run_dir: str, info: DistInfo):
        self.root = Path(run_dir) / "checkpoints"
        self.info = info
        if info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
        barrier(info)

    # -- saving -----------------------------------------------------------------------------------
    def save(self, engine, tag: str, state: dict, keep: set, keep_last: int = 2, extras: Optional[dict] = None,
             rank_extras: Optional[dict] = None) -> None:
        """Collective: every rank calls it.  ``state`` is the trainer's resumable state (json-able).

        ``extras``: ``{file name: state_dict()}`` — state beside the engine's (the sparse ID tables, a
        strategy's) that rank 0 collects and writes into the tag before it is marked complete; tensors and plain
        values only (``read_extra`` loads them with ``weights_only=True``).  ``rank_extras``: ``{prefix:
        state_dict()}`` that EVERY rank writes as ``<prefix>.rank<r>-of-<W>.pt`` (row-sharded state)."""
        if self.info.is_main:
            self._remove_incomplete()
            if (self.root / tag).exists():  # a re-save of a tag (e.g. after resuming before it): no stale marker
                shutil.rmtree(self.root / tag)
        barrier(self.info)
        try:
            engine.save_checkpoint(str(self.root), tag=tag, client_state={"trainer": state}, save_latest=False)
            for prefix, state_dict in (rank_extras or {}).items():
                atomic_torch_save(state_dict(), self.root / tag / rank_file(prefix, self.info.rank, self.info.world_size))
            barrier(self.info)
            if self.info.is_main:
                for name, state_dict in (extras or {}).items():
                    atomic_torch_save(state_dict(), self.root / tag / name)
                _atomic_write_json(self.root / tag / MARKER,
                                   {"tag": tag, "trainer": state, "files": file_digests(self.root / tag)})
        except (OSError, RuntimeError) as exc:  # a full disk, a quota, a write limit: the tag stays unmarked
            raise TrainingError(self._write_failure(tag, exc)) from None
        if self.info.is_main:
            _atomic_write_json(self.root / "latest.json", {"tag": tag})
            recent = sorted(d.name for d in self.root.iterdir() if (d / MARKER).exists())[-max(keep_last, 1):]
            self._prune(keep | set(recent) | {tag})
        barrier(self.info)

    def _write_failure(self, tag: str, exc: BaseException) -> str:
        """One line for a checkpoint write that failed: where, why (``no space left`` when the disk is full,
        which torch's own message does not say), and what is still there.  The partial tag is removed."""
        tag_dir = self.root / tag
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            free = None
        errno_ = getattr(exc, "errno", None)
        fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if errno_ == 28 or (free is not None and free < (64 << 20)):
            cause = f"no space left on device ({free:,} bytes free)" if free is not None else "no space left on device"
        elif errno_ == 27 or fsize != resource.RLIM_INFINITY:
            cause = f"file too large for this process's file-size limit (ulimit -f: {fsize:,} bytes)"
        else:
            cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        shutil.rmtree(tag_dir, ignore_errors=True)
        last = self.pointer("latest")
        return (f"checkpoint {tag_dir}: writing failed: {cause}; it was not marked complete and was removed "
                f"(last complete checkpoint: {last or 'none'})")

    def mark_best(self, tag: str, metrics: dict) -> None:
        if self.info.is_main:
            _atomic_write_json(self.root / "best.json", {"tag": tag, "metrics": metrics})

    def _remove_incomplete(self) -> None:
        for d in self.root.iterdir():
            if d.is_dir() and not (d / MARKER).exists():
                shutil.rmtree(d, ignore_errors=True)

    def _prune(self, keep: set) -> None:
        for d in self.root.iterdir():
            if d.is_dir() and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # -- loading ----------------------------------------------------------------------------------
    def pointer(self, name: str = "latest") -> Optional[str]:
        """The tag ``latest.json`` / ``best.json`` names (unchecked), or None."""
        p = self.root / f"{name}.json"
        if not p.exists():
            return None
        try:
            return str(json.loads(p.read_text())["tag"])
        except (ValueError, KeyError, OSError):
            return None

    def resolve(self, which: str = "latest", trust: bool = False, first: Optional[str] = None) -> Optional[str]:
        """The newest checkpoint that passes ``verify``: ``first`` (default: the tag ``which`` points at) first,
        then every other tag from the newest down; each one skipped is named in a warning.  None when the run has
        no checkpoint; a one-line TrainingError when none passes.  Collective: rank 0 checks, every rank gets its
        answer."""
        answer = self._resolve(first or self.pointer(which), trust) if self.info.is_main else None
        tag, error = broadcast_object(answer, self.info)
        if error:
            raise TrainingError(error)
        return tag

    def _resolve(self, first: Optional[str], trust: bool):
        tags = sorted((d.name for d in self.root.iterdir() if d.is_dir()), reverse=True) if self.root.is_dir() else []
        candidates = ([first] if first else []) + [t for t in tags if t != first]
        reasons = []
        for tag in candidates:
            reason = verify(self.root / tag, trust)
            if reason is None:
                if reasons:
                    log_main(self.info, f"warning: using checkpoint {tag} instead")
                return tag, None
            reasons.append(reason)
            log_main(self.info, f"warning: checkpoint skipped: {reason}")
        if not reasons:
            return None, None
        return None, f"no usable checkpoint in {self.root} ({len(reasons)} checked; newest: {reasons[0]})"

    def read_extra(self, tag: str, name: str) -> Optional[dict]:
        """The state saved as ``name`` beside the engine's files in ``tag`` (None if the checkpoint has none)."""
        path = self.root / tag / name
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def read_rank_extras(self, tag: str, prefix: str) -> List[dict]:
        """Every rank's ``<prefix>.rank*-of-*.pt`` of ``tag`` (any world size), memory-mapped: a reader copies
        only the rows it takes."""
        paths = sorted((self.root / tag).glob(rank_file(prefix, "*", "*")))
        return [torch.load(str(path), map_location="cpu", weights_only=True, mmap=True) for path in paths]

    def load(self, engine, tag: str) -> dict:
        """Collective: restore module, optimizer and trainer state from ``tag``."""
        tag = broadcast_object(tag, self.info)
        try:
            path, client = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True)
        except RuntimeError as exc:  # torch's load_state_dict lists every mismatch; the first names the field
            mismatch = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
            if not mismatch:
                raise
            raise TrainingError(f"checkpoint {self.root / tag} does not match this run's dataset or model "
                                f"({len(mismatch)} tensor(s) differ): {mismatch[0]}") from None
        if path is None:
            raise TrainingError(f"checkpoint {self.root / tag}: DeepSpeed could not load it")
        return client["trainer"]


def load_module_state(ckpt_root: Path, tag: str) -> dict:
    """fp32 weights of the wrapped module from a checkpoint of any ZeRO stage, in one process, no engine.
    ``tag`` must have passed ``Checkpoints.resolve`` (the loads below use full pickle, as DeepSpeed's do)."""
    tag_dir = Path(ckpt_root) / tag
    states = sorted(tag_dir.glob("*model_states.pt"))
    if not states:
        raise TrainingError(f"checkpoint {tag_dir}: no model_states file")
    blob = torch.load(states[0], map_location="cpu", weights_only=False)
    if blob.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) == 3 or not blob.get("module"):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag))
    return dict(blob["module"])
