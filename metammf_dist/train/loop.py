"""The training loop: dataset -> sampler -> model -> DeepSpeed engine -> evaluation -> checkpoints.

One entry for every launcher (single process, torchrun, deepspeed launcher, Slurm).  Per step:
sample a mini-batch (rank-disjoint edges, seeded negatives, neighbour blocks) -> fetch the features of the
batch's input items from the shard store -> BPR loss through the engine -> backward/step.  Every
``eval_every`` epochs the valid split is ranked in full; early stopping on ``eval.metric`` with
``patience``; at the end the best checkpoint is loaded and the test split is ranked (overall, and by warm /
cold items when some item has no train interaction).

Big catalogs: a strategy (``metammf_dist/strategies``: the fusion cache, layer histories) is called through
``Strategy.prepare`` / ``after_step`` around each step and gives the model the rows it keeps across steps;
``train.id_tables=sparse|sharded`` keeps the ID tables outside the engine, replicated (``distributed/id_tables.py``)
or row-sharded across ranks (``distributed/sharded_ids.py``).  Both are
saved with each checkpoint.  ``usage.json`` records the time per phase and every rank's peak RSS.

Determinism: samplers are seeded by (seed, epoch, rank) and the torch RNG (dropout) is reseeded per step,
so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.distributed as tdist

from metammf_dist.config import Config, sampled_fanouts
from metammf_dist.data.dataset import Dataset
from metammf_dist.data.feature_stats import feature_moments
from metammf_dist.data.item_knn import feature_knn
from metammf_dist.distributed.deepspeed_engine import build_engine, gathered_model, load_ds_config, precision_of
from metammf_dist.distributed.id_tables import FILE_NAME as ID_TABLES_FILE
from metammf_dist.distributed.id_tables import SparseIdTables
from metammf_dist.distributed.process_group import DistInfo, barrier, broadcast_object, init_distributed, log_main
from metammf_dist.distributed.sharded_ids import FILE_PREFIX as SHARD_PREFIX
from metammf_dist.distributed.sharded_ids import ShardedIdTables, optimizer_state_tensors
from metammf_dist.errors import TrainingError
from metammf_dist.evaluation.item_groups import cold_item_mask, evaluate_item_groups
from metammf_dist.evaluation.metrics import selection_value
from metammf_dist.evaluation.ranking import evaluate_full_ranking, evaluate_item_sharded
from metammf_dist.graph.shared import graph_key, node_shared_graph
from metammf_dist.graph.shared import release as release_graph
from metammf_dist.graph.train_graph import build_train_graph
from metammf_dist.model.registry import build_model
from metammf_dist.procmem import peak_rss_bytes, pss_bytes
from metammf_dist.sampler import batch_kind, make_batches
from metammf_dist.sampler.features import attach_features
from metammf_dist.strategies import build_strategy
from metammf_dist.train.checkpoint import Checkpoints, tag_for
from metammf_dist.train.inference import compute_vectors, sharded_vectors, split_csr
from metammf_dist.train.lr_schedule import scheduled_lr, set_lr
from metammf_dist.train.objective import BPRObjective
from metammf_dist.train.precision import apply_tf32, keep_fp32_buffers
from metammf_dist.train.run_dir import RunDir


@dataclass
class TrainerState:
    """Everything beyond module/optimizer tensors that a resumed run needs (stored in checkpoints)."""

    epoch: int = 0  # epoch in progress (or next to start)
    step_in_epoch: int = 0  # steps of `epoch` already done
    global_step: int = 0
    best_metric: float = -math.inf
    best_tag: Optional[str] = None
    best_epoch: int = -1
    bad_evals: int = 0
    history: list = field(default_factory=list)


class Trainer:
    """``resume``: continue from the run folder's newest usable checkpoint (fresh if it has none);
    ``overwrite``: a folder that holds another run gets it moved aside (without either, such a folder is
    refused); ``trust_checkpoint``: load checkpoints whose pickles name globals outside the safe list."""

    def __init__(self, cfg: Config, info: Optional[DistInfo] = None, *, resume: bool = False,
                 overwrite: bool = False, trust_checkpoint: bool = False):
        self.cfg = cfg
        self.resume, self.trust = bool(resume), bool(trust_checkpoint)
        # the dataset's metadata first: a wrong path or unreachable store fails before any process group starts
        self.ds = Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None)
        self.info = info or init_distributed()
        apply_tf32(cfg.train.tf32)
        self.run = RunDir(cfg.run_dir, self.info)  # claimed before any training data is read
        refusal = broadcast_object(self.run.claim(resume, overwrite) if self.info.is_main else None, self.info)
        if refusal:
            raise TrainingError(refusal)
        self.store = self.ds.feature_store(cache_mb=cfg.data.cache_mb, verify=cfg.data.verify)
        self.graph_key = None
        if cfg.train.graph_backend == "torch" and self.info.distributed:  # one copy per machine, memory-mapped
            # only the builder reads the train pairs; every rank then reads them from the mapped graph (edge e
            # is train pair e, in file order), so the node holds them once
            self.graph_key = graph_key(cfg.data.path, self.ds.meta, self.ds.num_interactions("train"), cfg.run_dir)
            build = lambda: build_train_graph(*self.ds.interactions("train"), self.ds.num_users,  # noqa: E731
                                              self.ds.num_items, backend="torch", copy=False)
            self.graph = node_shared_graph(build, self.graph_key, self.info.local_rank, lambda: barrier(self.info))
            train_u, train_i = self.graph.edge_users, self.graph.edge_items
        else:
            train_u, train_i = self.ds.interactions("train")
            self.graph = build_train_graph(train_u, train_i, self.ds.num_users, self.ds.num_items,
                                           backend=cfg.train.graph_backend)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = model_from_data(cfg, self.ds, self.store, train_u, train_i)
        self.id_tables = build_id_tables(cfg, self.model, self.info)  # before the engine: DeepSpeed must not see them
        self.ds_config = load_ds_config(cfg, self.info)
        self.precision = precision_of(self.ds_config)  # bf16 when the DeepSpeed JSON enables it
        with keep_fp32_buffers(self.model):  # feature statistics and degree normalisers stay fp32
            self.engine = build_engine(BPRObjective(self.model), cfg, self.ds_config, self.info)
        self.batches = make_batches(
            batch_kind(cfg.model.scorer, cfg.train.sampler), self.graph, fanouts=sampled_fanouts(cfg), batch_size=cfg.train.batch_size,
            num_negatives=cfg.train.num_negatives, seed=cfg.train.seed, rank=self.info.rank,
            world_size=self.info.world_size, num_workers=cfg.train.num_workers,
        )
        self.ckpt = Checkpoints(cfg.run_dir, self.info)
        self.state = TrainerState()
        self.last_lr = cfg.train.lr
        self.usage = {"train_seconds": 0.0, "train_steps": 0, "train_examples": 0, "valid_eval_seconds": 0.0,
                      "test_eval_seconds": 0.0, "input_items": 0, "fused_items": 0}
        self.strategy = build_strategy(cfg, self.ds.num_users, self.ds.num_items, self.store, self.graph, self.info)
        if self.strategy is not None:
            self.batches.seed_features_only = self.strategy.seed_features_only
        if self.info.device.type == "cuda":  # the prefetch thread (train.num_workers > 0) copies batches ahead
            self.batches.device = self.info.device

    # -- public -----------------------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            return self._fit()
        except BaseException:
            # an error exit (a refused resume, bad data, Ctrl-C): the node's graph copy must not outlive the run in
            # /dev/shm (ranks that still map it keep valid pages); a run killed outright leaves it to its resume
            if self.graph_key is not None:
                release_graph(self.graph_key, self.info.local_rank)
            raise

    def _fit(self) -> dict:
        cfg, info = self.cfg, self.info
        self.run.write_start(cfg, self.ds_config)
        if self.resume:
            tag = self.ckpt.resolve("latest", self.trust)
            if tag is None:
                log_main(info, f"--resume: no complete checkpoint in {self.ckpt.root}; starting fresh")
                self.run.trim_metrics(-1)
            else:
                self.state = TrainerState(**self.ckpt.load(self.engine, tag))
                self._load_extras(tag)
                if self.strategy is not None:
                    name = self.strategy.file_name
                    saved = (self.ckpt.read_rank_extras(tag, name) or None) if self.strategy.sharded \
                        else self.ckpt.read_extra(tag, name)
                    if saved is None or not self.strategy.load_state_dict(saved):
                        log_main(info, f"--resume: {tag} holds no {self.strategy.file_name} for this catalog; "
                                       "the strategy refreshes before the next step")
                self.run.trim_metrics(self.state.global_step)
                log_main(info, f"resumed from {tag} (epoch {self.state.epoch}, step {self.state.step_in_epoch})")
        while self.state.epoch < cfg.train.epochs and self.state.bad_evals < cfg.train.patience:
            self._train_epoch(self.state.epoch)
        started = time.perf_counter()
        test = self.test_best()
        self.usage["test_eval_seconds"] = time.perf_counter() - started
        self.run.write_final(test)
        self.run.write_usage(self._usage())
        self.run.close()
        if self.graph_key is not None:  # every rank is past its last use of the graph (the usage collective)
            barrier(self.info)
            release_graph(self.graph_key, self.info.local_rank)
        return test

    def evaluate(self, split: str) -> dict:
        """Full-ranking metrics of ``split``; the test split adds warm-item and cold-item metrics
        (``evaluation/item_groups.py``) when some item has no train interaction."""
        exclude = ["train"] if split == "valid" else ["train", "valid"]
        truth, excl, users = split_csr(self.ds, split, exclude, self.cfg.eval.max_users)
        if isinstance(self.id_tables, ShardedIdTables):
            return self._evaluate_sharded(truth, excl, users)
        with self._full_model() as model:
            user_vecs, item_vecs = compute_vectors(
                model, self.store, self.graph, self.ds.num_users, self.ds.num_items,
                item_chunk=self.cfg.eval.item_chunk, device=self.info.device,
            )
        ks, chunk = tuple(self.cfg.eval.ks), self.cfg.eval.user_chunk
        if split == "test":
            cold = cold_item_mask(self.ds.interactions("train")[1], self.ds.num_items)
            if bool(cold.any()):  # the same scores, also ranked by item group
                return evaluate_item_groups(user_vecs, item_vecs, excl, truth, users, cold, ks, chunk)
        return evaluate_full_ranking(user_vecs, item_vecs, excl, truth, users, ks=ks, user_chunk=chunk)

    def _evaluate_sharded(self, truth, excl, users) -> dict:
        """Row-sharded tables: each rank computes the vectors of the users and items it owns (the GCN's
        neighbour rows exchanged per layer), ranks the users against its own items and the per-user top-K
        are merged across ranks — no rank holds the catalog's vectors."""
        info, ev = self.info, self.cfg.eval
        sampled = 0 < ev.max_users and users.numel() <= ev.max_users  # only the ranked users' rows are made
        with self._full_model() as model:
            user_rows, (item_lo, item_vecs) = sharded_vectors(
                model, self.store, self.graph, self.ds.num_users, self.ds.num_items, info.rank, info.world_size,
                item_chunk=ev.item_chunk, device=info.device, ranked_users=users if sampled else None)
        return evaluate_item_sharded(user_rows, item_vecs, item_lo, self.ds.num_items, excl, truth, users,
                                     ks=tuple(ev.ks), user_chunk=ev.user_chunk)

    def test_best(self) -> dict:
        tag = self.ckpt.resolve("latest", self.trust, first=self.state.best_tag)
        if tag is not None:
            self.ckpt.load(self.engine, tag)
            self._load_extras(tag)
        metrics = self.evaluate("test")
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["best_epoch"] = self.state.best_epoch
        self.run.log_metrics(self.state.best_epoch, self.state.global_step, "test", metrics)
        metrics["checkpoint"] = tag  # the one evaluated: the best unless it failed verification (a warning says so)
        return metrics

    # -- one epoch --------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> None:
        cfg, info, st = self.cfg, self.info, self.state
        self.engine.train()
        n_steps = self._steps_per_epoch(epoch)
        bar = _progress(info, n_steps, f"epoch {epoch}")
        window_loss, window_examples, window_start = 0.0, 0, time.perf_counter()
        if bar is not None:
            bar.update(st.step_in_epoch)  # resumed mid-epoch: those steps were done before
        for batch in self.batches.epoch(epoch, start_step=st.step_in_epoch, store=self.store):
            step = batch.step
            if step >= n_steps:
                break
            torch.manual_seed(step_seed(cfg.train.seed, epoch, step, info.rank))
            step_started = time.perf_counter()
            loss, batch = self.train_step(batch, epoch)
            self.usage["train_seconds"] += time.perf_counter() - step_started
            self.usage["train_steps"] += 1
            self.usage["train_examples"] += int(batch.num_pos) * info.world_size
            self.usage["input_items"] += batch.num_input_items  # this rank's, summed over steps
            self.usage["fused_items"] += int(batch.item_feats.shape[0])
            st.step_in_epoch, st.global_step = step + 1, st.global_step + 1
            window_loss += float(loss.detach())
            window_examples += int(batch.num_pos) * info.world_size
            _advance(bar)
            if cfg.train.log_every and st.global_step % cfg.train.log_every == 0:
                rate = window_examples / max(time.perf_counter() - window_start, 1e-9)
                self.run.log_metrics(epoch, st.global_step, "train", {"lr": self.last_lr},
                                     loss=window_loss / cfg.train.log_every, examples_per_s=rate)
                if bar is not None:
                    bar.set_postfix(loss=f"{window_loss / cfg.train.log_every:.4f}", ex_s=f"{rate:,.0f}")
                window_loss, window_examples, window_start = 0.0, 0, time.perf_counter()
            if cfg.train.checkpoint_every_steps and st.global_step % cfg.train.checkpoint_every_steps == 0 \
                    and st.step_in_epoch < n_steps:
                self._save(tag_for(epoch, st.step_in_epoch))
        if bar is not None:
            bar.close()
        st.epoch, st.step_in_epoch = epoch + 1, 0
        tag = tag_for(epoch + 1, 0)
        if (epoch + 1) % max(cfg.train.eval_every, 1) == 0 or epoch + 1 == cfg.train.epochs:
            self.usage.setdefault("peak_rss_bytes_before_eval", peak_rss_bytes())  # training's own peak (+ setup)
            started = time.perf_counter()
            metrics = self.evaluate("valid")
            self.usage["valid_eval_seconds"] += time.perf_counter() - started
            value = selection_value(metrics, cfg.eval.metric)
            st.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in metrics.items()}})
            self.run.log_metrics(epoch + 1, st.global_step, "valid", metrics)
            if value > st.best_metric:
                st.best_metric, st.best_tag, st.best_epoch, st.bad_evals = value, tag, epoch + 1, 0
            else:
                st.bad_evals += 1
            log_main(info, f"epoch {epoch + 1}: valid {cfg.eval.metric}={value:.4f} (best {st.best_metric:.4f} @ {st.best_epoch})")
        self._save(tag)
        if st.best_tag == tag:
            self.ckpt.mark_best(tag, {"epoch": st.best_epoch, cfg.eval.metric: st.best_metric})

    def train_step(self, batch, epoch: int):
        """One optimizer step on ``batch`` (features, strategy rows, forward, backward, step) -> (loss, batch)."""
        strategy = self.strategy
        t, step, per_epoch = self.cfg.train, self.state.global_step, self._steps_per_epoch()
        if self.id_tables is not None:  # before the backward: sharded tables update inside it
            self.id_tables.set_lr(scheduled_lr(t, step, per_epoch, base_lr=t.id_lr))
        attach_features(batch, self.store, self.batches.seed_features_only)  # no-op when prefetched
        batch = batch.wait_ready().to(self.info.device, non_blocking=True)
        rows = {} if strategy is None else strategy.prepare(batch, step, self._full_model)
        loss, fresh = self.engine(batch, **rows)
        self._check_finite(loss, epoch, batch.step)
        self.engine.backward(loss)
        self.last_lr = scheduled_lr(t, step, per_epoch)
        set_lr(self.engine.optimizer.param_groups, self.last_lr)
        self.engine.step()
        if self.id_tables is not None:
            self.id_tables.step()
        if strategy is not None:  # the seeds' fresh rows (computed before this step's update) go back
            strategy.after_step(batch, fresh)
        return loss.detach(), batch  # not the graph: custom autograd nodes (TorchRec's) keep buffers in ctx

    def _full_model(self):
        """Context manager -> the model with every parameter whole (a hook-free replica under ZeRO-3)."""
        return gathered_model(self.engine, self.model, self._build_model)

    def _build_model(self) -> torch.nn.Module:
        """A fresh model of this run's shapes (the replica's skeleton; its tensors are the trained model's)."""
        id_device = "meta" if self.cfg.model.id_init == "blocks" else None
        return build_model(self.cfg.model, self.ds.num_users, self.ds.num_items, self.ds.feat_dim, id_device=id_device)

    def _steps_per_epoch(self, epoch: int = 0) -> int:
        """Steps an epoch takes (``train.max_steps_per_epoch`` caps it; the unit of ``train.lr_schedule``)."""
        per_epoch = self.batches.num_batches(epoch)
        cap = self.cfg.train.max_steps_per_epoch
        return min(per_epoch, cap) if cap else per_epoch

    def _save(self, tag: str) -> None:
        keep = {self.state.best_tag} if self.state.best_tag else set()
        extras, rank_extras = {}, {}
        if isinstance(self.id_tables, ShardedIdTables):  # every rank writes its own rows
            rank_extras[SHARD_PREFIX] = self.id_tables.shard_state
        elif self.id_tables is not None:
            extras[ID_TABLES_FILE] = self.id_tables.state_dict
        if self.strategy is not None:
            (rank_extras if self.strategy.sharded else extras)[self.strategy.file_name] = self.strategy.state_dict
        self.ckpt.save(self.engine, tag, asdict(self.state), keep=keep, keep_last=self.cfg.train.keep_checkpoints,
                       extras=extras, rank_extras=rank_extras)

    def _usage(self) -> dict:
        """This run's time split, and every rank's peak RSS, PSS and catalog-state bytes (collective)."""
        mine = (peak_rss_bytes(), pss_bytes(), self.catalog_state_bytes(), self.usage.get("peak_rss_bytes_before_eval"))
        every = [mine]
        if self.info.distributed and self.info.world_size > 1:
            every = [None] * self.info.world_size
            tdist.all_gather_object(every, mine)
        peaks, pss, catalog, before_eval = ([rank[i] for rank in every] for i in range(4))
        strategy = self.strategy
        refreshes = {"refreshes": strategy.refreshes if strategy else 0,
                     "refresh_seconds": strategy.refresh_seconds if strategy else 0.0}
        if self.info.device.type == "cuda":  # this rank's peak of torch's allocated device memory
            refreshes["peak_device_bytes"] = int(torch.cuda.max_memory_allocated(self.info.device))
        usage = {k: v for k, v in self.usage.items() if k != "peak_rss_bytes_before_eval"}
        return {**usage, **refreshes, "world_size": self.info.world_size, "peak_rss_bytes_per_rank": peaks,
                "peak_rss_bytes_before_eval_per_rank": before_eval,
                "pss_bytes_per_rank_at_end": pss, "graph_shared_per_node": self.graph_key is not None,
                "catalog_state_bytes_per_rank": catalog,
                "num_items": self.ds.num_items, "num_users": self.ds.num_users,
                "eval_users_max": self.cfg.eval.max_users, "refresh_every": self.cfg.train.fusion_cache_refresh}

    def catalog_state_bytes(self) -> int:
        """Bytes of catalog-sized state this rank holds: the ID tables with their optimizer state, and a
        strategy's tables (fusion cache, layer histories).  Dense tables inside the engine count as weights +
        gradient + Adam m, v (before ZeRO's partitioning)."""
        def size(tensors) -> int:
            return sum(int(x.numel()) * x.element_size() for x in tensors if x is not None)

        total = 0
        if isinstance(self.id_tables, ShardedIdTables):
            for name, table in self.id_tables.tables.items():
                total += size([table.local_weight(), *optimizer_state_tensors(table)])
        elif self.id_tables is not None:
            total += size(e.weight for e in self.id_tables.tables.values())
            total += size(x for tensors in self.id_tables.state.values() for x in tensors.values())
        else:
            total += 4 * size([self.model.user_emb.weight, self.model.item_emb.weight])
        strategy = self.strategy
        cache = getattr(strategy, "cache", strategy)  # layer histories hold a fusion cache
        if cache is not None and getattr(cache, "fused", None) is not None:
            total += size([cache.fused])
        for table in getattr(strategy, "tables", None) or []:
            total += size(table.values())
        return total

    def _load_extras(self, tag: str) -> None:
        if isinstance(self.id_tables, ShardedIdTables):  # whatever world size wrote them: each rank takes its rows
            shards = self.ckpt.read_rank_extras(tag, SHARD_PREFIX)
            if not shards:
                raise TrainingError(f"checkpoint {self.ckpt.root / tag}: no {SHARD_PREFIX} files "
                                    "(train.id_tables=sharded)")
            try:
                self.id_tables.load_shards(shards)
            except ValueError as exc:  # another catalog, optimizer or world's shards, or a shard missing
                raise TrainingError(f"checkpoint {self.ckpt.root / tag}: {exc}") from None
        elif self.id_tables is not None:
            saved = self.ckpt.read_extra(tag, ID_TABLES_FILE)
            if saved is None:
                raise TrainingError(f"checkpoint {self.ckpt.root / tag}: {ID_TABLES_FILE} missing (train.id_tables=sparse)")
            self.id_tables.load_state_dict(saved)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        bad = torch.isfinite(loss.detach()).all().logical_not().float().reshape(1)  # on the loss's device (NCCL)
        if self.info.distributed:
            tdist.all_reduce(bad)
        if bad.item() > 0:
            last = self.ckpt.pointer("latest")  # named, not loaded
            raise TrainingError(
                f"non-finite loss at epoch {epoch} step {step} (global step {self.state.global_step + 1}); "
                f"stopped without applying it; last good checkpoint: {last or 'none'} in {self.ckpt.root}"
            )


def model_from_data(cfg: Config, ds, store, train_users, train_items) -> torch.nn.Module:
    """The configured model with what it takes from the data: the items with a train interaction (the others
    are cold), feature statistics (``model.feature_norm``), train-graph degrees (LightGCN) and the item kNN
    graph (``model.item_knn``).  Draws its fusion/GCN weights from torch's global generator (seed it first) and,
    with ``model.id_init=normal``, its ID rows from a generator seeded with ``train.seed`` alone, so every fusion
    kind starts from the same ID rows for a seed.  Row-sharded ID tables are left unallocated here."""
    id_device = "meta" if cfg.train.id_tables == "sharded" else None
    model = build_model(cfg.model, ds.num_users, ds.num_items, ds.feat_dim, id_device=id_device)
    if cfg.model.id_init == "normal":
        model.reset_id_rows(torch.Generator().manual_seed(cfg.train.seed))
    model.set_train_items(train_items)
    if cfg.model.feature_norm == "standardize":
        model.set_feature_stats(*feature_moments(store))
    if cfg.model.scorer == "gcn" and cfg.model.gcn_type == "light":
        model.set_degrees(train_users, train_items)
    if cfg.model.item_knn > 0:
        model.set_item_graph(feature_knn(store, ds.modalities, cfg.model.item_knn))
    return model


def build_id_tables(cfg: Config, model: torch.nn.Module, info: DistInfo):
    """Where the ID tables live (``train.id_tables``): dense -> None (inside the engine, with ZeRO); sparse ->
    ``SparseIdTables`` (replicated, outside the engine); sharded -> ``ShardedIdTables`` (TorchRec, row-sharded)."""
    t = cfg.train
    if t.id_tables == "sparse":
        return SparseIdTables(model, t.id_lr or t.lr, t.weight_decay, distributed=info.distributed,
                              world_size=info.world_size, optimizer=t.id_optimizer).to(info.device)
    if t.id_tables == "sharded":
        return ShardedIdTables(model, t.id_lr or t.lr, t.weight_decay, info, optimizer=t.id_optimizer)
    return None


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The torch seed of one step (dropout): a function of (seed, epoch, step, rank), so resumes repeat it."""
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2**63 - 1)


def _progress(info: DistInfo, total: int, desc: str):
    if not info.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)


def _advance(bar) -> None:
    if bar is not None:
        bar.update(1)
