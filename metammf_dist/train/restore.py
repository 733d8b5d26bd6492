"""Rebuild a trained model from a run folder, in one process, without DeepSpeed's engine.

Used by ``evaluate`` and ``export``.  The dataset must match what the checkpoint was trained on: a
mismatch in user/item counts or feature dims is an error naming both sides.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


from metammf_dist.config import load_config
from metammf_dist.data.dataset import Dataset
from metammf_dist.distributed.deepspeed_engine import precision_of
from metammf_dist.distributed.id_tables import FILE_NAME as ID_TABLES_FILE
from metammf_dist.distributed.id_tables import weights_of
from metammf_dist.distributed.process_group import DistInfo
from metammf_dist.distributed.sharded_ids import FILE_PREFIX as SHARD_PREFIX
from metammf_dist.distributed.sharded_ids import assemble
from metammf_dist.errors import TrainingError
from metammf_dist.graph.train_graph import build_train_graph
from metammf_dist.model.registry import build_model
from metammf_dist.train.checkpoint import Checkpoints, load_module_state
from metammf_dist.train.precision import to_bf16_as_trained

PREFIX = "model."  # the engine wraps the recommender in BPRObjective(model)
TRAINED_KEY = "item_emb.trained"  # which items had a train interaction (a buffer; derived from the dataset)


def restore(run_dir: str, data_path: Optional[str] = None, which: str = "best", trust: bool = False):
    """(cfg, dataset, feature store, train graph, model in eval mode, checkpoint tag) of the run in ``run_dir``.
    The checkpoint ``which`` points at is checked first (``Checkpoints.resolve``); a damaged one is skipped
    for the newest that passes, with a warning; ``trust`` allows pickles outside the safe list."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise TrainingError(f"{run}: not a run folder (config.yaml missing)")
    overrides = [f"data.path={data_path}"] if data_path else []
    cfg = load_config(str(run / "config.yaml"), overrides)
    ckpt = Checkpoints(str(run), DistInfo())
    tag = ckpt.resolve(which, trust)
    if tag is None:
        raise TrainingError(f"{run}: no complete checkpoint under {ckpt.root}")
    ds = Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None)
    state = {k[len(PREFIX):]: v for k, v in load_module_state(ckpt.root, tag).items() if k.startswith(PREFIX)}
    id_tables = ckpt.read_extra(tag, ID_TABLES_FILE)  # train.id_tables=sparse: the ID tables live beside
    if id_tables is not None:
        state.update(weights_of(id_tables))
    shards = ckpt.read_rank_extras(tag, SHARD_PREFIX)  # train.id_tables=sharded: each rank's rows
    if shards:
        try:
            state.update(assemble(shards))
        except ValueError as exc:  # a shard missing, or shards of different catalogs
            raise TrainingError(f"checkpoint {ckpt.root / tag}: {exc}") from None
    model = build_model(cfg.model, ds.num_users, ds.num_items, ds.feat_dim)
    train_u, train_i = ds.interactions("train")
    model.set_train_items(train_i)
    own = model.state_dict()
    state.setdefault(TRAINED_KEY, own[TRAINED_KEY])  # checkpoints from before the cold-item rule: from the data
    params = {name for name, _ in model.named_parameters()}
    for name, tensor in sorted(own.items(), key=lambda kv: kv[0] not in params):  # parameters first: clearer errors
        if name not in state:
            raise TrainingError(f"checkpoint {ckpt.root / tag}: parameter '{name}' missing (config/model mismatch)")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise TrainingError(
                f"dataset {cfg.data.path} does not match checkpoint {ckpt.root / tag}: parameter '{name}' has shape "
                f"{tuple(state[name].shape)} in the checkpoint but {tuple(tensor.shape)} for this dataset "
                f"({ds.num_users} users, {ds.num_items} items, feature dim {ds.feat_dim})"
            )
    model.load_state_dict({k: state[k].float() if own[k].is_floating_point() else state[k] for k in own})
    if _run_precision(run) == "bf16":
        to_bf16_as_trained(model, id_tables_outside=cfg.train.id_tables != "dense")
    model.eval()
    store = ds.feature_store(cache_mb=cfg.data.cache_mb, verify=cfg.data.verify)
    graph = build_train_graph(train_u, train_i, ds.num_users, ds.num_items, backend=cfg.train.graph_backend)
    return cfg, ds, store, graph, model, tag


def _run_precision(run: Path) -> str:
    """The training precision recorded in the run folder's ``ds_config.json`` (fp32 if it has none)."""
    path = run / "ds_config.json"
    return precision_of(json.loads(path.read_text())) if path.is_file() else "fp32"
