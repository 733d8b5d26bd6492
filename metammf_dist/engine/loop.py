"""The training loop: dataset -> sampler -> model -> DeepSpeed engine -> evaluation -> checkpoints.

One entry for every launcher (single process, torchrun, deepspeed launcher, Slurm).  Per step:
sample a mini-batch (rank-disjoint edges, seeded negatives, neighbour blocks) -> fetch the features of the
batch's input items from the shard store -> BPR loss through the engine -> backward/step.  Every
``eval_every`` epochs the valid split is ranked in full; early stopping on ``eval.metric`` with
``patience``; at the end the best checkpoint is loaded and the test split is ranked.

Options for big catalogs: ``train.fusion_cache_refresh`` (neighbour items read a fusion cache, only seed
items are fused and read features: ``fusion_cache.py``), ``train.gcn_history`` (one sampled hop, neighbours'
inner-layer vectors from history tables: ``gcn_history.py``) and ``train.id_tables=sparse`` (ID tables outside
the engine, row-wise lazy Adam: ``sparse_ids.py``); all are saved with each checkpoint.  ``usage.json`` records
the time per phase and every rank's peak RSS.

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
from metammf_dist.engine.checkpoint import Checkpoints, tag_for
from metammf_dist.engine.deepspeed_engine import build_engine, gathered_model, load_ds_config
from metammf_dist.engine.dist import DistInfo, init_distributed, log_main
from metammf_dist.engine.fusion_cache import (FILE_NAME as FUSION_CACHE_FILE, FusionCache, check_deferred_grad,
                                             deferred_grad_note)
from metammf_dist.engine.gcn_history import FILE_NAME as GCN_HISTORY_FILE, GCNHistory
from metammf_dist.engine.sparse_ids import FILE_NAME as ID_TABLES_FILE, SparseIdTables
from metammf_dist.engine.inference import compute_vectors, split_csr
from metammf_dist.engine.lr_schedule import scheduled_lr, set_lr
from metammf_dist.engine.objective import BPRObjective
from metammf_dist.engine.run_dir import RunDir
from metammf_dist.errors import TrainingError
from metammf_dist.evaluation.ranking import evaluate_full_ranking
from metammf_dist.model.registry import build_model
from metammf_dist.procmem import peak_rss_bytes
from metammf_dist.sampler import make_batches
from metammf_dist.sampler.features import attach_features
from metammf_dist.sampler.graph import build_train_graph


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


def sampler_kind(cfg: Config) -> str:
    if cfg.train.sampler == "full":
        return "full"
    return "neighbor" if cfg.model.scorer == "gcn" else "edges"


class Trainer:
    def __init__(self, cfg: Config, info: Optional[DistInfo] = None):
        self.cfg = cfg
        self.info = info or init_distributed()
        self.run = RunDir(cfg.run_dir, self.info)
        self.ds = Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None)
        self.store = self.ds.feature_store(cache_mb=cfg.data.cache_mb, verify=cfg.data.verify)
        train_u, train_i = self.ds.interactions("train")
        self.graph = build_train_graph(train_u, train_i, self.ds.num_users, self.ds.num_items,
                                       backend=cfg.train.graph_backend)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = self._build_model()
        if cfg.model.feature_norm == "standardize":
            self.model.set_feature_stats(*feature_moments(self.store))
        if cfg.model.scorer == "gcn" and cfg.model.gcn_type == "light":
            self.model.set_degrees(train_u, train_i)
        if cfg.model.item_knn > 0:
            self.model.set_item_graph(feature_knn(self.store, self.ds.modalities, cfg.model.item_knn))
        self.id_tables: Optional[SparseIdTables] = None
        if cfg.train.id_tables == "sparse":  # before the engine: DeepSpeed must not see the ID tables
            self.id_tables = SparseIdTables(self.model, cfg.train.id_lr or cfg.train.lr, cfg.train.weight_decay,
                                            distributed=self.info.distributed, world_size=self.info.world_size)
            self.id_tables.to(self.info.device)
        self.ds_config = load_ds_config(cfg, self.info)
        self.engine = build_engine(BPRObjective(self.model), cfg, self.ds_config, self.info)
        self.batches = make_batches(
            sampler_kind(cfg), self.graph, fanouts=sampled_fanouts(cfg), batch_size=cfg.train.batch_size,
            num_negatives=cfg.train.num_negatives, seed=cfg.train.seed, rank=self.info.rank,
            world_size=self.info.world_size, num_workers=cfg.train.num_workers,
        )
        self.ckpt = Checkpoints(cfg.run_dir, self.info)
        self.state = TrainerState()
        self.fusion_cache: Optional[FusionCache] = None
        self.last_refresh_seconds = 0.0
        self.last_lr = cfg.train.lr
        self.usage = {"train_seconds": 0.0, "train_steps": 0, "train_examples": 0, "refreshes": 0,
                      "refresh_seconds": 0.0, "valid_eval_seconds": 0.0, "test_eval_seconds": 0.0,
                      "input_items": 0, "fused_items": 0}
        if cfg.train.fusion_cache_refresh > 0:
            self.fusion_cache = FusionCache(
                self.ds.num_items, cfg.model.fusion_dims[-1], cfg.train.fusion_cache_refresh, rank=self.info.rank,
                world_size=self.info.world_size, distributed=self.info.distributed, chunk=cfg.eval.item_chunk,
                device=self.info.device, deferred_grad=cfg.train.fusion_cache_deferred_grad,
            )
            if cfg.train.fusion_cache_deferred_grad:
                check_deferred_grad(self.ds_config)
                note = deferred_grad_note(cfg.train.fusion_cache_refresh)
                if note:
                    log_main(self.info, note)
            self.batches.seed_features_only = True
            self.batches.grad_items_per_step = cfg.train.fusion_cache_grad_items
        self.gcn_history: Optional[GCNHistory] = None
        if cfg.train.gcn_history:
            self.gcn_history = GCNHistory(self.ds.num_users, self.ds.num_items, cfg.model.user_id_dim,
                                          cfg.model.gcn_layers, world_size=self.info.world_size,
                                          distributed=self.info.distributed, device=self.info.device)

    # -- public -----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        cfg, info = self.cfg, self.info
        self.run.write_start(cfg, self.ds_config)
        if resume:
            tag = self.ckpt.pointer("latest")
            if tag is None:
                log_main(info, f"--resume: no complete checkpoint in {self.ckpt.root}; starting fresh")
            else:
                self.state = TrainerState(**self.ckpt.load(self.engine, tag))
                self._load_extras(tag)
                if self.fusion_cache is not None:
                    self.fusion_cache.load(self.ckpt.root / tag / FUSION_CACHE_FILE)
                    self.model.fusion_grad_offset = self.fusion_cache.offset
                if self.gcn_history is not None:
                    self.gcn_history.load(self.ckpt.root / tag / GCN_HISTORY_FILE)
                log_main(info, f"resumed from {tag} (epoch {self.state.epoch}, step {self.state.step_in_epoch})")
        while self.state.epoch < cfg.train.epochs and self.state.bad_evals < cfg.train.patience:
            self._train_epoch(self.state.epoch)
        started = time.perf_counter()
        test = self.test_best()
        self.usage["test_eval_seconds"] = time.perf_counter() - started
        self.run.write_final(test)
        self.run.write_usage(self._usage())
        self.run.close()
        return test

    def evaluate(self, split: str) -> dict:
        exclude = ["train"] if split == "valid" else ["train", "valid"]
        truth, excl, users = split_csr(self.ds, split, exclude, self.cfg.eval.max_users)
        with gathered_model(self.engine, self.model, self._build_model) as model:
            user_vecs, item_vecs = compute_vectors(
                model, self.store, self.graph, self.ds.num_users, self.ds.num_items,
                item_chunk=self.cfg.eval.item_chunk, device=self.info.device,
            )
        return evaluate_full_ranking(user_vecs, item_vecs, excl, truth, users, ks=tuple(self.cfg.eval.ks),
                                     user_chunk=self.cfg.eval.user_chunk)

    def test_best(self) -> dict:
        tag = self.state.best_tag or self.ckpt.pointer("latest")
        if tag is not None:
            self.ckpt.load(self.engine, tag)
            self._load_extras(tag)
        metrics = self.evaluate("test")
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["best_epoch"] = self.state.best_epoch
        self.run.log_metrics(self.state.best_epoch, self.state.global_step, "test", metrics)
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
            torch.manual_seed(_step_seed(cfg.train.seed, epoch, step, info.rank))
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
            started = time.perf_counter()
            metrics = self.evaluate("valid")
            self.usage["valid_eval_seconds"] += time.perf_counter() - started
            value = float(metrics[cfg.eval.metric])
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
        """One optimizer step on ``batch`` (features, fusion cache, forward, backward, step) -> (loss, batch)."""
        seeds_only = self.fusion_cache is not None
        attach_features(batch, self.store, seeds_only)  # no-op when the prefetch thread already fetched them
        batch = _to_device(batch, self.info.device)
        if seeds_only:
            self._use_fusion_cache(batch)
        loss = self.engine(batch)
        self._check_finite(loss, epoch, batch.step)
        self.engine.backward(loss)
        if self.fusion_cache is not None and self.fusion_cache.deferred_grad:
            n_seed = int(batch.output_items.numel())
            self.fusion_cache.accumulate(batch.input_items[n_seed:], batch.cached_fusion.grad)
        t, step, per_epoch = self.cfg.train, self.state.global_step, self._steps_per_epoch()
        self.last_lr = scheduled_lr(t, step, per_epoch)
        set_lr(self.engine.optimizer.param_groups, self.last_lr)
        self.engine.step()
        if self.id_tables is not None:
            self.id_tables.lr = scheduled_lr(t, step, per_epoch, base_lr=t.id_lr)
            self.id_tables.step()
        # the seeds' fresh vectors (computed before this step's update) go back into the cache / histories
        if self.gcn_history is not None:
            self.gcn_history.push({"user": batch.output_users, "item": batch.output_items},
                                  self.model.gcn.fresh_hidden, self.fusion_cache)
        elif self.fusion_cache is not None:
            self.fusion_cache.push(batch.feature_items, self.model.seed_fusion)
        return loss, batch

    def _build_model(self) -> torch.nn.Module:
        return build_model(self.cfg.model, self.ds.num_users, self.ds.num_items, self.ds.feat_dim)

    def _steps_per_epoch(self, epoch: int = 0) -> int:
        """Steps an epoch takes (``train.max_steps_per_epoch`` caps it; the unit of ``train.lr_schedule``)."""
        per_epoch = self.batches.num_batches(epoch)
        cap = self.cfg.train.max_steps_per_epoch
        return min(per_epoch, cap) if cap else per_epoch

    def _use_fusion_cache(self, batch) -> None:
        """Seed items keep exact fusion (their features are in ``batch.item_feats``); the other input items
        read the cache, refreshed first when this global step is due."""
        cache = self.fusion_cache
        if cache.due(self.state.global_step):
            started = time.perf_counter()
            with gathered_model(self.engine, self.model, self._build_model) as model:
                cache.refresh(model, self.store, self.state.global_step)
                if self.gcn_history is not None:
                    self.gcn_history.refresh(model, cache.fused, self.graph.to(self.info.device),
                                             self.state.global_step)
            self.model.fusion_grad_offset = cache.offset  # deferred neighbour gradients of the ended window
            self.last_refresh_seconds = time.perf_counter() - started
            self.usage["refreshes"] += 1
            self.usage["refresh_seconds"] += self.last_refresh_seconds
        n_seed = int(batch.output_items.numel())
        n_fused = int(batch.feature_items.numel())  # the seeds, then any neighbours sampled for a fusion gradient
        if batch.item_feats.shape[0] != n_fused or not torch.equal(batch.input_items[:n_seed], batch.output_items):
            raise TrainingError("fusion cache: the batch's seed items are not the first input items")
        batch.cached_fusion = cache.lookup(batch.input_items[n_seed:])
        if cache.deferred_grad:  # a leaf: backward leaves the loss gradient at these rows in its .grad
            batch.cached_fusion.requires_grad_(True)
        if self.gcn_history is not None:
            n_user = int(batch.output_users.numel())
            batch.neighbor_history = self.gcn_history.lookup({"user": batch.input_users[n_user:],
                                                              "item": batch.input_items[n_seed:]})

    def _save(self, tag: str) -> None:
        keep = {self.state.best_tag} if self.state.best_tag else set()
        extras = {}
        if self.fusion_cache is not None and self.fusion_cache.fused is not None:
            self.fusion_cache.sync_pending()  # collective: rank 0's saved copy is then every rank's
            extras[FUSION_CACHE_FILE] = self.fusion_cache.save
        if self.id_tables is not None:
            extras[ID_TABLES_FILE] = self.id_tables.save
        if self.gcn_history is not None and self.gcn_history.tables:
            extras[GCN_HISTORY_FILE] = self.gcn_history.save
        self.ckpt.save(self.engine, tag, asdict(self.state), keep=keep, keep_last=self.cfg.train.keep_checkpoints,
                       extras=extras)

    def _usage(self) -> dict:
        """This run's time split and every rank's peak RSS (collective)."""
        peak = peak_rss_bytes()
        peaks = [peak]
        if self.info.distributed and self.info.world_size > 1:
            peaks = [None] * self.info.world_size
            tdist.all_gather_object(peaks, peak)
        return {**self.usage, "world_size": self.info.world_size, "peak_rss_bytes_per_rank": peaks,
                "num_items": self.ds.num_items, "num_users": self.ds.num_users,
                "eval_users_max": self.cfg.eval.max_users, "refresh_every": self.cfg.train.fusion_cache_refresh}

    def _load_extras(self, tag: str) -> None:
        if self.id_tables is not None:
            path = self.ckpt.root / tag / ID_TABLES_FILE
            if not path.exists():
                raise TrainingError(f"checkpoint {self.ckpt.root / tag}: {ID_TABLES_FILE} missing (train.id_tables=sparse)")
            self.id_tables.load(path)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
        if self.info.distributed:
            tdist.all_reduce(bad)
        if bad.item() > 0:
            last = self.ckpt.pointer("latest")
            raise TrainingError(
                f"non-finite loss at epoch {epoch} step {step} (global step {self.state.global_step + 1}); "
                f"stopped without applying it; last good checkpoint: {last or 'none'} in {self.ckpt.root}"
            )


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2**63 - 1)


def _to_device(batch, device: torch.device):
    if device.type == "cpu":
        return batch
    for name in ("input_users", "input_items", "output_items", "pos_u", "pos_i", "neg_u", "neg_i", "item_feats"):
        value = getattr(batch, name, None)
        if value is not None:
            setattr(batch, name, value.to(device, non_blocking=True))
    batch.blocks = [b.to(device) for b in batch.blocks]
    return batch


def _progress(info: DistInfo, total: int, desc: str):
    if not info.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)


def _advance(bar) -> None:
    if bar is not None:
        bar.update(1)
