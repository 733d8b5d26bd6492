"""Row-sharded ID tables on TorchRec (``train.id_tables: sharded``; the latest lane).

Replicated ID tables (``dense``, ``sparse``) cost every rank the whole tables plus their optimizer state, so
more ranks never fit a bigger catalog.  Here each rank owns a contiguous range of user rows and of item rows —
TorchRec's row-wise sharding: ``ceil(rows / world)`` rows per rank, the last rank the rest — with their
optimizer state, and nothing else of the tables:

* **lookup** (``ShardedRows.forward``, called by the model's forward on every rank alike): the ids a rank's
  batch touches go to their owners and the rows come back (TorchRec's sharded ``EmbeddingCollection``, one
  all-to-all each way, gloo or NCCL);
* **update**: the backward sends each row's gradient back to its owner (averaged over ranks, as DeepSpeed
  averages dense gradients) and FBGEMM's fused optimizer updates the owned rows inside the backward: exact
  row-wise Adagrad on CPU (``G_r += mean(g_r^2)``, ``w_r -= lr g_r / (sqrt(G_r) + eps)``; FBGEMM has no CPU
  Adam), or Adam on CUDA.  ``weight_decay`` is L2 on the touched rows, as the replicated tables apply it;
* **initialisation** (``model.id_init=blocks``): each rank draws only its own rows, and they are the rows the
  replicated tables would draw (``model/recommender.init_id_rows``), so placements and world sizes agree;
* **checkpoints**: each rank saves its own rows and their optimizer state with their row range
  (``shard_state``); ``load_shards`` reads any number of saved shards into any range, so a checkpoint written by
  N ranks loads on M (``restore`` assembles the whole tables for one-process ``evaluate`` / ``export``).

The tables stay outside the module DeepSpeed wraps (``model.user_emb`` / ``model.item_emb`` are replaced by
``ShardedRows`` attributes); ZeRO keeps the dense parameters.  TorchRec is imported only here, only in this mode.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from metammf_dist.config import ConfigError
from metammf_dist.distributed.id_tables import EPS, NAMES, detach_tables

FILE_PREFIX = "id_shard"


def torchrec_missing() -> Optional[str]:
    """Why ``train.id_tables=sharded`` cannot run in this environment (one line), or None."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA build of FBGEMM failing to load on CPU torch
        return (f"config key 'train.id_tables': 'sharded' runs on TorchRec, which this environment lacks "
                f"(torch {torch.__version__}: {type(exc).__name__}: {exc}); use the latest lane "
                f"(scripts/setup_latest.sh: torch 2.13 + torchrec 1.8.0 + fbgemm-gpu-cpu 1.8.0, .venv-latest)")
    return None


def row_block(num_rows: int, world_size: int) -> int:
    """Rows per rank in TorchRec's row-wise split, ``ceil(rows / world)`` (the owner of row r is r // block)."""
    return -(-int(num_rows) // int(world_size))


def row_range(num_rows: int, rank: int, world_size: int) -> Tuple[int, int]:
    """The rows ``[lo, hi)`` rank ``rank`` owns (``row_block`` rows each, the last rank fewer)."""
    block = row_block(num_rows, world_size)
    lo = min(rank * block, num_rows)
    return lo, min(lo + block, num_rows)


class ShardedRows(nn.Module):
    """One ID table, row-sharded across the ranks: ``forward(ids) -> rows`` (a collective: every rank calls
    it the same number of times).  Rows keep their gradient path to the owners' fused optimizer."""

    def __init__(self, name: str, collection, num_embeddings: int, embedding_dim: int, lo: int, hi: int,
                 device: torch.device = torch.device("cpu")):
        super().__init__()
        self.name, self.num_embeddings, self.embedding_dim = name, int(num_embeddings), int(embedding_dim)
        self.lo, self.hi, self.device = int(lo), int(hi), torch.device(device)
        object.__setattr__(self, "collection", collection)  # not a submodule: DeepSpeed and replicas leave it be

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        ids = ids.reshape(-1).to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(f"{self.name}: ids outside 0..{self.num_embeddings - 1} (a sharded table has no "
                             "cold-start row; evaluate or export in one process for new items)")
        empty = ids.numel() == 0
        if empty:  # TorchRec cannot look up nothing: look up row 0, return none (its gradient is zero)
            ids = torch.zeros(1, dtype=torch.int64)
        ids = ids.to(self.device)
        kjt = KeyedJaggedTensor(keys=[self.name], values=ids,
                                lengths=torch.ones(ids.numel(), dtype=torch.int64, device=self.device))
        rows = self.collection(kjt)[self.name].values()
        return rows[:0] if empty else rows

    def local_weight(self) -> torch.Tensor:
        """This rank's rows ``[lo, hi)`` (the owner's storage: writes go to the table)."""
        return _local_shard(self.collection.state_dict()[f"embeddings.{self.name}.weight"])


class ShardedIdTables:
    """User and item tables row-sharded with TorchRec; replaces ``model.user_emb`` / ``model.item_emb``."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, info, optimizer: str = "rowwise_adagrad"):
        """``model``: built with ``model.id_init=blocks`` (its ``init_id_rows`` draws any row range alone), its ID
        tables on the meta device; they are replaced by ``ShardedRows``."""
        reason = torchrec_missing()
        if reason:
            raise ConfigError(reason)
        import torch.distributed as dist
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
        from torchrec import EmbeddingCollection, EmbeddingConfig
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.shard import shard
        from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
        from torchrec.distributed.types import ShardingEnv

        if optimizer == "adam" and info.device.type != "cuda":
            raise ConfigError("config key 'train.id_optimizer': FBGEMM has no fused Adam on CPU; with "
                              "train.id_tables=sharded use rowwise_adagrad there (Adam runs on CUDA)")
        opt = {"adam": EmbOptimType.ADAM, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}[optimizer]
        self.optimizer, self.info = optimizer, info
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        fused = {"optimizer": opt, "learning_rate": self.lr, "eps": EPS}
        if self.weight_decay:
            fused.update(weight_decay=self.weight_decay, weight_decay_mode=WeightDecayMode.L2)
        sharder = EmbeddingCollectionSharder(fused_params=fused)
        env = ShardingEnv.from_process_group(dist.group.WORLD)
        world = info.world_size
        self.tables: Dict[str, ShardedRows] = {}
        for name, placeholder in detach_tables(model).items():
            rows, dim = placeholder.num_embeddings, placeholder.embedding_dim
            collection = EmbeddingCollection(
                tables=[EmbeddingConfig(name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[name])],
                device=torch.device("meta"))
            plan = construct_module_sharding_plan(collection, {name: row_wise(compute_kernel="fused")},
                                                  sharder=sharder, local_size=world, world_size=world,
                                                  device_type=info.device.type)
            collection = shard(collection, plan, env=env, device=info.device, sharder=sharder)
            lo, hi = row_range(rows, info.rank, world)
            table = ShardedRows(name, collection, rows, dim, lo, hi, device=info.device)
            local = table.local_weight()
            if tuple(local.shape) != (hi - lo, dim):
                raise RuntimeError(f"{name}: TorchRec gave rank {info.rank} rows of shape {tuple(local.shape)}, "
                                   f"expected {(hi - lo, dim)}")
            with torch.no_grad():
                local.copy_(model.init_id_rows(name, lo, hi))
            object.__setattr__(model, name, table)
            self.tables[name] = table

    def set_lr(self, lr: float) -> None:
        """The fused optimizer's learning rate for the next backward (``train.lr_schedule``)."""
        if float(lr) == self.lr:
            return
        self.lr = float(lr)
        for table in self.tables.values():
            fused = table.collection.fused_optimizer
            for group in fused.param_groups:
                group["lr"] = self.lr
            fused.step()  # TorchRec hands the group's lr to the kernel here (the update itself runs in backward)

    def step(self) -> None:
        """Nothing to do: the fused optimizer updated the owned rows inside the backward."""

    # -- checkpoints: one file per rank, resharded on load --------------------------------------------------
    def shard_state(self) -> dict:
        """This rank's rows and their optimizer state, with their range: tensors and plain values only."""
        out = {"optimizer": self.optimizer, "world_size": self.info.world_size, "rank": self.info.rank, "tables": {}}
        for name, table in self.tables.items():
            opt_state = _optimizer_state(table)
            out["tables"][name] = {"lo": table.lo, "hi": table.hi, "rows": table.num_embeddings,
                                   "weight": table.local_weight().detach().clone(),
                                   **{k: v.detach().clone() for k, v in opt_state.items()}}
        return out

    @torch.no_grad()
    def load_shards(self, shards: List[dict]) -> None:
        """Fill this rank's rows (and optimizer state) from saved shards of any world size."""
        for shard_state in shards:
            if shard_state.get("optimizer") != self.optimizer:
                raise ValueError(f"the ID shards were saved with train.id_optimizer={shard_state.get('optimizer')}, "
                                 f"this run has {self.optimizer}")
        for name, table in self.tables.items():
            local, opt_state = table.local_weight(), _optimizer_state(table)
            parts = [shard_state["tables"][name] for shard_state in shards]
            for part in parts:
                if part["rows"] != table.num_embeddings:
                    raise ValueError(f"{name}: the checkpoint has {part['rows']:,} rows, this catalog "
                                     f"{table.num_embeddings:,}")
            for key, target in (("weight", local), *opt_state.items()):
                copy_range(parts, key, table.lo, table.hi, target, what=name)


class RangeNotCovered(ValueError):
    """Saved shards that do not cover the rows a rank asks for (written for another table size)."""


def copy_range(parts: List[dict], key: str, lo: int, hi: int, out: torch.Tensor, what: str = "rows") -> None:
    """Fill ``out`` (rows ``[lo, hi)``) with ``part[key]`` of saved shards ``parts`` (each with its own ``lo`` /
    ``hi``, from any world size); every row must be covered."""
    filled = 0
    for part in parts:
        a, b = max(part["lo"], lo), min(part["hi"], hi)
        if a < b:
            out[a - lo:b - lo] = part[key][a - part["lo"]:b - part["lo"]]
            filled += b - a
    if filled != hi - lo:
        raise RangeNotCovered(f"{what}: the saved shards cover {filled:,} of rows {lo:,}..{hi:,}")


def assemble(shards: List[dict]) -> Dict[str, torch.Tensor]:
    """``{"user_emb.weight": ..., "item_emb.weight": ...}``: whole tables from every saved shard (one process)."""
    out = {}
    for name in NAMES:
        parts = [s["tables"][name] for s in shards]
        sizes = sorted({part["rows"] for part in parts})
        if len(sizes) != 1:
            raise ValueError(f"{name}: the saved shards disagree on the table size ({sizes})")
        weight = torch.empty(sizes[0], parts[0]["weight"].shape[1], dtype=parts[0]["weight"].dtype)
        copy_range(parts, "weight", 0, sizes[0], weight, what=name)
        out[f"{name}.weight"] = weight
    return out


def _local_shard(tensor) -> torch.Tensor:
    shards = tensor.local_shards()
    if len(shards) != 1:
        raise RuntimeError(f"expected one local shard per rank, got {len(shards)}")
    return shards[0].tensor


def _optimizer_state(table: ShardedRows) -> Dict[str, torch.Tensor]:
    """The fused optimizer's state of this rank's rows, by name (``momentum1`` for row-wise Adagrad; Adam's
    moments on CUDA), as the tensors the optimizer updates."""
    state = table.collection.fused_optimizer.state_dict()["state"]
    entry = state[f"embeddings.{table.name}.weight"]
    out = {}
    for key, value in entry.items():
        short = key.split(".")[-1]
        out[short] = _local_shard(value) if hasattr(value, "local_shards") else value
    return out


def optimizer_state_tensors(table: ShardedRows) -> List[torch.Tensor]:
    """This rank's optimizer-state tensors of ``table`` (for memory accounting)."""
    return list(_optimizer_state(table).values())
