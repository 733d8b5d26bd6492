"""Helpers shared by the test modules: the repo and the shared data, training runs through the real CLI, a toy
model and graph.

The shared data sits beside the checkout (``../shared/data``, as in CI) unless METAMMF_SHARED_DATA says
otherwise.  Tests that need it FAIL when it is missing: a silent skip would hide a broken CI setup.

Test modules import from here (or get fixtures from ``conftest.py``); no test module imports another.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metammf_dist.distributed.process_group import free_port

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# The DGL lane tests the DGL graph backend, the latest lane (no DGL) the torch one; env overrides.
GRAPH_BACKEND = os.environ.get("METAMMF_GRAPH_BACKEND") or ("dgl" if importlib.util.find_spec("dgl") else "torch")
SMALL = [
    f"train.graph_backend={GRAPH_BACKEND}",
    "model.fusion_dims=[16,8]", "model.item_id_dim=8", "model.user_id_dim=16", "model.meta_hidden=16",
    "train.batch_size=512", "train.fanouts=[5,5]", "train.eval_every=1", "train.patience=10",
    "eval.user_chunk=64", "data.cache_mb=16",
]

SHARED_DATA = Path(os.environ.get("METAMMF_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"shared data missing: {path} (set METAMMF_SHARED_DATA)")
    return path


__all__ = ["GRAPH_BACKEND", "PY", "REPO", "SHARED_DATA", "SMALL", "shared", "close", "free_port", "last_json", "run_cli", "run_env",
           "straight_and_resumed", "train", "N_USERS", "N_ITEMS", "FEAT", "toy_cfg", "toy_feats", "toy_graph"]


# -- training runs through the CLI ------------------------------------------------------------------------
def run_env() -> dict:
    """The environment of a child run: one thread, the project's JIT cache, no launcher variables."""
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    env["OMP_NUM_THREADS"] = "1"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_cli(*args, nproc: int = 1, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m metammf_dist ARGS`` (under torchrun for ``nproc`` > 1) in the repo; fails with its output."""
    if nproc == 1:
        cmd = [PY, "-m", "metammf_dist", *args]
    else:
        cmd = [PY, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
               "-m", "metammf_dist", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def last_json(proc) -> dict:
    """The last stdout line of a command, as JSON (train/evaluate print their metrics there)."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train(ds, run_dir, *extra, nproc=1, stage=0, epochs=2, check=True):
    """``train configs/tiktok.yaml`` on ``ds`` with the small test model (``SMALL``) at ZeRO ``stage``."""
    return run_cli("train", "configs/tiktok.yaml", f"data.path={ds}", f"run_dir={run_dir}", f"train.epochs={epochs}",
                   f"train.ds_config=configs/ds/zero{stage}.json", *SMALL, *extra, nproc=nproc, check=check)


def close(a: dict, b: dict, tol: float) -> bool:
    """Every ``metric@K`` of ``a`` within ``tol`` of ``b``'s (and there is at least one)."""
    keys = [k for k in a if "@" in k]
    return bool(keys) and all(abs(a[k] - b[k]) <= tol for k in keys)


def straight_and_resumed(ds, tmp_path, *opts, stage: int = 3):
    """A 2-rank, 1-epoch run (in ``tmp_path/a``), and the same run stopped after step 3 with checkpoints every 2
    steps, pointed back at step 2 as if it had died there, and resumed (``tmp_path/b``): (straight metrics,
    resumed metrics, the straight run's folder)."""
    straight_run, run = tmp_path / "a", tmp_path / "b"
    straight = last_json(train(ds, straight_run, *opts, nproc=2, stage=stage, epochs=1))
    first = train(ds, run, *opts, "train.max_steps_per_epoch=3", "train.checkpoint_every_steps=2", nproc=2,
                  stage=stage, epochs=1)
    assert first.returncode == 0
    tags = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert "epoch0000-step0000002" in tags, tags
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"tag": "epoch0000-step0000002"}))
    (run / "checkpoints" / "best.json").unlink()
    resumed = last_json(train(ds, run, *opts, "--resume", nproc=2, stage=stage, epochs=1))
    return straight, resumed, straight_run


# -- a toy model and graph (float64, for oracle comparisons) -------------------------------------------------
N_USERS, N_ITEMS, FEAT = 6, 9, 11


def toy_cfg(**overrides):
    from metammf_dist.config import ModelConfig

    base = dict(fusion_dims=[8, 4], item_id_dim=3, user_id_dim=7, meta_dim=3, cp_rank=2, gcn_layers=2)
    base.update(overrides)
    return ModelConfig(**base)


def toy_feats(n: int = N_ITEMS, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, FEAT, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def toy_graph(seed: int = 2):
    """A small random user–item DGL heterograph (DGL lane)."""
    import dgl

    gen = torch.Generator().manual_seed(seed)
    pairs = torch.unique(torch.stack([torch.randint(0, N_USERS, (20,), generator=gen),
                                      torch.randint(0, N_ITEMS, (20,), generator=gen)], 1), dim=0)
    u, i = pairs[:, 0], pairs[:, 1]
    return dgl.heterograph({("user", "ui", "item"): (u, i), ("item", "iu", "user"): (i, u)},
                           num_nodes_dict={"user": N_USERS, "item": N_ITEMS})
