"""Wrap the training objective in a DeepSpeed engine (ZeRO stage 0-3, optional CPU offload).

The ZeRO settings come from a plain JSON file in ``configs/ds/`` (one per stage).  The batch sizes and the
optimizer come from the experiment config so they are stated once: this module fills
``train_micro_batch_size_per_gpu`` / ``train_batch_size`` and builds ``torch.optim.Adam`` (the paper's
optimizer) as DeepSpeed's client optimizer.  A JSON that sets those keys itself is rejected, naming the key.

How the ID tables are held: dense ``nn.Embedding`` parameters inside ZeRO like every other parameter
(stage 1/2 shard their Adam states; stage 3 shards the tables too but gathers a whole table for each
forward).  DeepSpeed has no sparse-gradient path under ZeRO, so sparse embeddings are not offered.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch

from metammf_dist.config import Config, ConfigError
from metammf_dist.distributed.process_group import DistInfo

_OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer")


def load_ds_config(cfg: Config, info: DistInfo) -> dict:
    path = Path(cfg.train.ds_config)
    if not path.is_file():
        raise ConfigError(f"config key 'train.ds_config': DeepSpeed JSON not found: {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path}: not valid JSON ({exc})") from exc
    for key in _OWNED_KEYS:
        if key in ds:
            raise ConfigError(
                f"DeepSpeed config {path}: key '{key}' is set from the experiment config (train.batch_size / train.lr); remove it"
            )
    micro = cfg.train.batch_size // info.world_size
    if micro < 1:
        raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} is smaller than the world size {info.world_size}")
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = micro * info.world_size
    return ds


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


def precision_of(ds_config: dict) -> str:
    """"bf16" when the DeepSpeed JSON enables bf16, else "fp32"; fp16 is refused (one line)."""
    if (ds_config.get("fp16") or {}).get("enabled"):
        raise ConfigError("DeepSpeed config: fp16 (with loss scaling) is not supported; use bf16 "
                          "(configs/ds/zero*_bf16.json) or fp32")
    return "bf16" if (ds_config.get("bf16") or ds_config.get("bfloat16") or {}).get("enabled") else "fp32"


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def build_engine(module: torch.nn.Module, cfg: Config, ds_config: dict, info: DistInfo):
    """``deepspeed.initialize`` with a client Adam; returns the engine (``engine(batch)`` -> loss)."""
    import deepspeed

    bf16 = precision_of(ds_config) == "bf16"
    if bf16 and zero_stage(ds_config) == 0 and _version(deepspeed.__version__) < (0, 19):
        raise ConfigError(
            f"config key 'train.ds_config': bf16 at ZeRO stage 0 does not train with DeepSpeed {deepspeed.__version__} "
            "(it goes through its fp16 optimizer and the loss diverges: TikTok, seed 2023, 0.84 at step 10, 9.0e3 at "
            "step 120); use configs/ds/zero1_bf16.json (the same for one rank) or the latest lane's DeepSpeed")
    if info.backend == "gloo":
        complete_async_all_gathers()
    module.to(info.device)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
    return engine


def gathered_parameters(engine):
    """Context manager: full parameters visible on every rank (a no-op below ZeRO-3)."""
    import contextlib

    if engine.zero_optimization_stage() != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)


@contextlib.contextmanager
def gathered_model(engine, model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> Iterator[torch.nn.Module]:
    """Context manager -> a module that computes like ``model`` with its full parameters, for the no-grad
    passes outside the engine's forward (evaluation, fusion-cache and layer-history refreshes).

    Below ZeRO-3 that is ``model`` itself.  Under ZeRO-3 the parameters are gathered and handed to a replica
    that ``build`` makes on the meta device (no allocation) and that takes over the gathered tensors (shared
    storage, no copy); the replica carries none of stage 3's per-module fetch/release hooks, so a no-grad
    pass over the gathered weights runs no per-module gathers or releases.  (An in-training evaluation had
    once disagreed with the same checkpoint evaluated alone, 1 of 13 2-rank runs; that was before
    ``complete_async_all_gathers``, and ``GatheredParameters`` goes through the same unfinished gathers, so
    that bug may have been its cause too.)  The replica must not outlive the block: the gathered tensors
    are freed when it ends.
    """
    if engine.zero_optimization_stage() != 3:
        yield model
        return
    with gathered_parameters(engine):
        yield replicate(model, build)


def replicate(model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` made on the meta device, then given ``model``'s parameters and buffers (the same tensors)
    and its plain module attributes (ID tables kept outside the module tree by ``train.id_tables=sparse``)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # initialisers draw nothing real
        replica = build()
    for name, value in vars(model).items():
        if isinstance(value, torch.nn.Module) and name not in model._modules:
            replica._modules.pop(name, None)
            object.__setattr__(replica, name, value)
    own = dict(replica.named_modules())
    for kind, tensors in (("_parameters", model.named_parameters()), ("_buffers", model.named_buffers())):
        for name, tensor in tensors:
            owner, _, leaf = name.rpartition(".")
            slot = getattr(own[owner], kind) if owner in own else {}
            if slot.get(leaf) is None or tuple(slot[leaf].shape) != tuple(tensor.shape):
                raise RuntimeError(f"replicate: '{name}' {tuple(tensor.shape)} has no counterpart of that shape")
            slot[leaf] = torch.nn.Parameter(tensor.data, requires_grad=False) if kind == "_parameters" else tensor
    left = [n for n, t in list(replica.named_parameters()) + list(replica.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"replicate: {left} have no counterpart in the trained model")
    replica.train(model.training)
    return replica


def complete_async_all_gathers() -> None:
    """Make DeepSpeed's asynchronous all-gathers complete before they return (for gloo; idempotent).

    ZeRO-3's ``_allgather_params_coalesced`` (used after every optimizer step to re-gather the persistent
    parameters, and by ``GatheredParameters``) launches one asynchronous all-gather per parameter into
    ``torch.empty`` buffers and waits on the LAST handle only ("the operation is enqueued, but not necessarily
    complete"), which is enough on one CUDA stream, where they finish in order.  Gloo runs its asynchronous
    work on a pool of threads, so the earlier gathers can still be running when the next forward reads
    those parameters: that was the "one bad update at a random step" of 2-rank ZeRO-3 runs on CPU (a jump
    in the loss, sometimes NaN; about 1 run in 10 here).  Waiting on each handle as it is launched costs the
    overlap that gloo could not give reliably anyway.  Fixed upstream in deepspeedai/DeepSpeed#8539 (0.19.8
    waits on every handle); the DGL lane's DeepSpeed 0.18.2 predates it.
    """
    import deepspeed.comm as ds_comm

    for name in ("all_gather_into_tensor", "all_gather"):
        original = getattr(ds_comm, name)
        if getattr(original, "_waits_for_completion", False):
            continue

        def waiting(*args, _original=original, **kwargs):
            handle = _original(*args, **kwargs)
            if kwargs.get("async_op") and handle is not None:
                handle.wait()
            return handle

        waiting._waits_for_completion = True
        setattr(ds_comm, name, waiting)
