"""The Horovod training loop: rank-disjoint batches -> BPR loss -> allreduce-averaged Adam step -> evaluation.

Per epoch: ``train.max_steps_per_epoch`` (0 = all) steps of this rank's batches; every ``train.eval_every``
epochs rank 0 ranks the valid split in full and broadcasts ``eval.metric``, so every rank makes the same
early-stopping decision (``train.patience``); the best state dict is kept in memory on every rank (the
replicas are identical) and written by rank 0.  At the end the best state is loaded and rank 0 ranks the
test split.  The graph backend comes from ``train.graph_backend`` (the latest lane has no DGL: ``torch``).
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from metammf_dist.config import Config
from metammf_dist.data.dataset import Dataset
from metammf_dist.evaluation.metrics import selection_value
from metammf_dist.evaluation.ranking import evaluate_full_ranking
from metammf_dist.graph.train_graph import build_train_graph
from metammf_dist.sampler import batch_kind, make_batches
from metammf_dist.sampler.features import attach_features
from metammf_dist.train.inference import compute_vectors, split_csr
from metammf_dist.train.loop import model_from_data, step_seed
from metammf_dist.train.lr_schedule import scheduled_lr, set_lr
from metammf_dist.train.objective import BPRObjective


class HorovodTrainer:
    def __init__(self, cfg: Config):
        import horovod.torch as hvd

        self.hvd = hvd
        hvd.init()
        self.cfg = cfg
        self.rank, self.size = hvd.rank(), hvd.size()
        if cfg.train.id_tables != "dense" or cfg.train.fusion_cache_refresh:
            from metammf_dist.config import ConfigError

            raise ConfigError("the Horovod trainer supports train.id_tables=dense and train.fusion_cache_refresh=0 only "
                              "(use the DeepSpeed trainer for sparse ID tables and the fusion cache)")
        self.device = torch.device("cuda", hvd.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.ds = Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None)
        self.store = self.ds.feature_store(cache_mb=cfg.data.cache_mb, verify=cfg.data.verify)
        train_u, train_i = self.ds.interactions("train")
        backend = getattr(cfg.train, "graph_backend", "dgl")
        self.graph = build_train_graph(train_u, train_i, self.ds.num_users, self.ds.num_items, backend=backend)
        torch.manual_seed(cfg.train.seed)
        self.model = model_from_data(cfg, self.ds, self.store, train_u, train_i)
        self.model.to(self.device)
        self.objective = BPRObjective(self.model)
        # rank 0's weights everywhere; bool buffers (which items had a train interaction) come from the data on
        # every rank alike, and Horovod cannot broadcast bool tensors
        hvd.broadcast_parameters({k: v for k, v in self.model.state_dict().items() if v.dtype != torch.bool},
                                 root_rank=0)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=self.model.named_parameters(),
                                                  op=hvd.Average)
        # No hvd.broadcast_optimizer_state: every rank's Adam starts empty, and that call would first take a
        # zero-gradient step to create the state, which with weight decay moves every parameter.
        self.batches = make_batches(
            batch_kind(cfg.model.scorer, cfg.train.sampler), self.graph, fanouts=cfg.train.fanouts, batch_size=cfg.train.batch_size,
            num_negatives=cfg.train.num_negatives, seed=cfg.train.seed, rank=self.rank, world_size=self.size,
            num_workers=cfg.train.num_workers,
        )
        self.out_dir = Path(cfg.run_dir) / "hvd"
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    # -- public -----------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        best_metric, best_epoch, bad = -math.inf, -1, 0
        best_state: Optional[dict] = None
        for epoch in range(cfg.train.epochs):
            start = time.perf_counter()
            loss = self._train_epoch(epoch)
            if (epoch + 1) % max(cfg.train.eval_every, 1) and epoch + 1 != cfg.train.epochs:
                continue
            metrics = self.evaluate("valid") if self.rank == 0 else None
            # an explicit name: the default (the object's type) differs between rank 0 and the others
            metrics = self.hvd.broadcast_object(metrics, root_rank=0, name=f"valid{epoch}")
            value = selection_value(metrics, cfg.eval.metric)
            if value > best_metric:
                best_metric, best_epoch, bad = value, epoch + 1, 0
                best_state = copy.deepcopy(self.model.state_dict())
                if self.rank == 0:
                    torch.save(best_state, self.out_dir / "best_model.pt")
            else:
                bad += 1
            self._log({"epoch": epoch + 1, "split": "valid", "train_loss": loss,
                       "epoch_s": time.perf_counter() - start, **metrics}, value)
            if bad >= cfg.train.patience:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        test = self.evaluate("test") if self.rank == 0 else None
        test = dict(self.hvd.broadcast_object(test, root_rank=0, name="test"), best_epoch=best_epoch,
                    world_size=self.size)
        if self.rank == 0:
            (self.out_dir / "final_metrics.json").write_text(json.dumps(test, indent=1, sort_keys=True))
        return test

    def evaluate(self, split: str) -> dict:
        """Full ranking of ``split`` by this process alone (rank 0 calls it)."""
        exclude = ["train"] if split == "valid" else ["train", "valid"]
        truth, excl, users = split_csr(self.ds, split, exclude, self.cfg.eval.max_users)
        user_vecs, item_vecs = compute_vectors(self.model, self.store, self.graph, self.ds.num_users,
                                               self.ds.num_items, item_chunk=self.cfg.eval.item_chunk,
                                               device=self.device)
        metrics = evaluate_full_ranking(user_vecs, item_vecs, excl, truth, users, ks=tuple(self.cfg.eval.ks),
                                        user_chunk=self.cfg.eval.user_chunk)
        return {k: float(v) for k, v in metrics.items()}

    # -- one epoch --------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.model.train()
        n_steps = self.batches.num_batches(epoch)
        if cfg.train.max_steps_per_epoch:
            n_steps = min(n_steps, cfg.train.max_steps_per_epoch)
        total, steps = 0.0, 0
        for batch in self.batches.epoch(epoch, store=self.store):
            if batch.step >= n_steps:
                break
            torch.manual_seed(step_seed(cfg.train.seed, epoch, batch.step, self.rank))
            attach_features(batch, self.store)
            batch = batch.to(self.device, non_blocking=True)
            self.optimizer.zero_grad()
            loss, _ = self.objective(batch)
            loss.backward()
            set_lr(self.optimizer.param_groups, scheduled_lr(cfg.train, epoch * n_steps + batch.step, n_steps))
            self.optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        return float(self.hvd.allreduce(torch.tensor(total / max(steps, 1)), name="epoch_loss"))

    def _log(self, record: dict, value: float) -> None:
        """Append ``record`` to metrics.jsonl and print the epoch line with ``value`` (the epoch's ``eval.metric``)."""
        if self.rank == 0:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            print(f"epoch {record['epoch']}: valid {self.cfg.eval.metric}={value:.4f} "
                  f"loss={record['train_loss']:.4f} ({record['epoch_s']:.1f}s)", flush=True)
