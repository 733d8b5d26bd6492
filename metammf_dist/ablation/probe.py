"""What the learned meta vectors ``s_i`` encode: linear probes of a trained run's meta-learner.

For every item, ``s_i = meta_learner((x_i - mean) / std)`` (``MetaMMFRecommender.meta_vectors``).  A probe fits a
linear map (with intercept) from ``s_i`` to a per-item target and reports its R², cross-fitted: items are cut
into two seeded halves, each half is predicted by the map fitted on the other, and

    R² = 1 - Σ_items Σ_cols (y - ŷ)² / Σ_items Σ_cols (y - ȳ)²          (ȳ: the target's mean over all items)

so a map that merely memorizes cannot score.  Targets:

* ``gate`` (synthetic catalogs made with ``--planted-fusion``): the planted gate ``g_i`` (``data/synth.py``,
  regenerated from the spec in ``dataset.json``);
* ``dominance``: which modality dominates the item's (standardized) features: per modality the log of its
  features' mean square, centred over the modalities (for two modalities: ± half the log ratio);
* ``popularity``: ``log(1 + train interactions)`` of the item.

Each target also gets ``<target>_r2_features``: the same probe from the standardized features themselves (all
of them, so a linear reference for how linearly readable the target is at all).

How item-specific the fusion is at all: ``meta_effect`` = the mean over items of
``||f(x_i; s_i) - f(x_i; s̄)|| / ||f(x_i; s_i)||``, the relative change of an item's fusion output when its own meta
vector is replaced by the average item's ``s̄`` (0: the fusion is one static network in effect).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from metammf_dist.train.restore import restore

PROBE_SEED = 0
PROBE_VERSION = 2  # the runner re-probes runs whose probe.json is older


def cross_fitted_r2(x: np.ndarray, y: np.ndarray, folds: int = 2, seed: int = PROBE_SEED) -> float:
    """R² of a least-squares linear map (with intercept) from ``x [n, p]`` to ``y [n] or [n, q]``, each fold
    predicted by the map fitted on the other folds (module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n = x.shape[0]
    if n != y.shape[0] or n < 2 * folds:
        raise ValueError(f"cross_fitted_r2: {n} rows of x for {y.shape[0]} rows of y, need >= {2 * folds}")
    fold = np.random.default_rng(seed).permutation(n) % folds
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    pred = np.empty_like(y)
    for f in range(folds):
        fit = fold != f
        coef, *_ = np.linalg.lstsq(design[fit], y[fit], rcond=None)
        pred[~fit] = design[~fit] @ coef
    total = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else float("nan")


def modality_dominance(feats: np.ndarray, modalities: dict) -> np.ndarray:
    """``[n, M]``: per modality the log mean square of its columns of ``feats``, centred over the modalities."""
    parts, lo = [], 0
    for dim in modalities.values():
        parts.append(np.log(np.mean(feats[:, lo:lo + int(dim)] ** 2, axis=1) + 1e-12))
        lo += int(dim)
    logs = np.stack(parts, axis=1)
    return logs - logs.mean(1, keepdims=True)


def planted_gate(meta: dict) -> Optional[np.ndarray]:
    """The planted gate ``[I, M]`` of a catalog made by ``synth --planted-fusion`` (from ``dataset.json``), else None."""
    source = meta.get("source", {})
    if source.get("format") != "synth" or not source.get("planted_fusion"):
        return None
    from dataclasses import fields

    from metammf_dist.data.synth import SynthSpec, plant

    spec = SynthSpec(**{f.name: source[f.name] for f in fields(SynthSpec) if f.name in source})
    return plant(spec).gate


@torch.no_grad()
def item_table(model, store, num_items: int, chunk: int = 8192):
    """(meta vectors ``[I, s]``, standardized features ``[I, d]``) of every item, float64 numpy."""
    metas, feats = [], []
    for _, _, block in store.iter_range(0, num_items, chunk):
        x = torch.from_numpy(block)
        metas.append(model.meta_vectors(x).double().numpy())
        feats.append(model.normalize(x).double().numpy())
    return np.concatenate(metas), np.concatenate(feats)


@torch.no_grad()
def fusion_meta_effect(fusion, x: torch.Tensor, s: torch.Tensor) -> float:
    """Mean relative change of the fusion output when each item's ``s_i`` is replaced by the mean ``s̄``."""
    own = fusion(x, s)
    average = fusion(x, s.mean(0, keepdim=True).expand_as(s))
    return float(((own - average).norm(dim=1) / own.norm(dim=1).clamp_min(1e-12)).mean())


def probe_run(run_dir: str, data_path: Optional[str] = None) -> dict:
    """The probes of the run in ``run_dir`` (its best checkpoint); ``{}`` for a fusion kind without meta-learner."""
    cfg, ds, store, _, model, tag = restore(run_dir, data_path)
    if model.meta_learner is None:
        return {}
    s, feats = item_table(model, store, ds.num_items, cfg.eval.item_chunk)
    meta_effect = fusion_meta_effect(model.fusion, torch.from_numpy(feats).to(model.item_emb.weight.dtype),
                                     torch.from_numpy(s).to(model.item_emb.weight.dtype))
    _, train_items = ds.interactions("train")
    targets = {"dominance": modality_dominance(feats, ds.modalities),
               "popularity": np.log1p(np.bincount(train_items, minlength=ds.num_items))}
    gate = planted_gate(ds.meta)
    if gate is not None:
        targets["gate"] = gate
    out = {"checkpoint": tag, "meta_dim": int(s.shape[1]), "meta_effect": meta_effect, "version": PROBE_VERSION}
    for name, y in targets.items():
        out[f"{name}_r2"] = cross_fitted_r2(s, y)
        out[f"{name}_r2_features"] = cross_fitted_r2(feats, y)
    return out
