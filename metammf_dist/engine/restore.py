"""Rebuild a trained model from a run folder, in one process, without DeepSpeed's engine.

Used by ``evaluate`` and ``export``.  The dataset must match what the checkpoint was trained on: a
mismatch in user/item counts or feature dims is an error naming both sides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


from metammf_dist.config import load_config
from metammf_dist.data.dataset import Dataset
from metammf_dist.engine.checkpoint import Checkpoints, load_module_state
from metammf_dist.engine.dist import DistInfo
from metammf_dist.engine.sparse_ids import FILE_NAME as ID_TABLES_FILE, load_weights as load_id_weights
from metammf_dist.errors import TrainingError
from metammf_dist.model.registry import build_model
from metammf_dist.sampler.graph import build_train_graph

PREFIX = "model."  # the engine wraps the recommender in BPRObjective(model)


def restore(run_dir: str, data_path: Optional[str] = None, which: str = "best"):
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise TrainingError(f"{run}: not a run folder (config.yaml missing)")
    overrides = [f"data.path={data_path}"] if data_path else []
    cfg = load_config(str(run / "config.yaml"), overrides)
    ckpt = Checkpoints(str(run), DistInfo())
    tag = ckpt.pointer(which) or ckpt.pointer("latest")
    if tag is None:
        raise TrainingError(f"{run}: no complete checkpoint under {ckpt.root}")
    ds = Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None)
    state = {k[len(PREFIX):]: v for k, v in load_module_state(ckpt.root, tag).items() if k.startswith(PREFIX)}
    if (ckpt.root / tag / ID_TABLES_FILE).exists():  # train.id_tables=sparse: the ID tables live beside
        state.update(load_id_weights(ckpt.root / tag / ID_TABLES_FILE))
    model = build_model(cfg.model, ds.num_users, ds.num_items, ds.feat_dim)
    own = model.state_dict()
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
    model.eval()
    store = ds.feature_store(cache_mb=cfg.data.cache_mb, verify=cfg.data.verify)
    train_u, train_i = ds.interactions("train")
    graph = build_train_graph(train_u, train_i, ds.num_users, ds.num_items, backend=cfg.train.graph_backend)
    return cfg, ds, store, graph, model, tag
