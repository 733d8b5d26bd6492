"""Reference points for a synthetic catalog's cold items: what scorers that know the planted structure (or fit a
linear map to it) reach on the cold-item test metrics, next to which the learned fusions of
docs/results/meta_evidence.md are read.

Every scorer ranks with users' planted preferences ``u = 0.75 onehot(primary) + 0.25 onehot(secondary)`` (over the
clusters) against an item vector over the clusters:

* ``true cluster``: ``onehot(a_i)``, the item's planted cluster (the best any scorer can know without popularity);
* planted-fusion catalogs only: ``gate-weighted`` ``Σ_m g_im onehot(a_im)``; ``equal weights`` ``Σ_m onehot(a_im) / M``
  (the modality clusters mixed without the gate);
* ``linear on features``: a ridge map (λ = 1) from the standardized features to ``onehot(a_i)``, fitted on the
  warm items, applied to all; planted-fusion catalogs also ``linear on gate-weighted features`` (the same from
  ``[x ⊙ g_i1, ..., x ⊙ g_iM, x]`` with the TRUE gate: what one gated linear layer can reach).

    .venv/bin/python experiments/synth_ceilings.py bench_out/synth/planted      (one JSON line per scorer)
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields

import numpy as np
import torch

from metammf_dist.data.dataset import Dataset
from metammf_dist.data.synth import SynthSpec, plant
from metammf_dist.evaluation.item_groups import cold_item_mask, evaluate_item_groups
from metammf_dist.train.inference import split_csr


def main(path: str) -> None:
    ds = Dataset.open(path)
    source = ds.meta["source"]
    spec = SynthSpec(**{f.name: source[f.name] for f in fields(SynthSpec) if f.name in source})
    planted, k = plant(spec), spec.num_clusters
    onehot = np.eye(k)
    users = 0.75 * onehot[planted.user_primary] + 0.25 * onehot[planted.user_secondary]
    truth, exclude, eval_users = split_csr(ds, "test", ["train", "valid"])
    cold = cold_item_mask(ds.interactions("train")[1], ds.num_items)
    x = np.concatenate([b for _, _, b in ds.feature_store().iter_range(0, ds.num_items, 8192)]).astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    target = onehot[planted.item_cluster]
    warm = ~cold.numpy()

    def ridge(inputs: np.ndarray) -> np.ndarray:
        design = np.concatenate([inputs, np.ones((len(inputs), 1))], 1)
        w = np.linalg.solve(design[warm].T @ design[warm] + np.eye(design.shape[1]), design[warm].T @ target[warm])
        return design @ w

    scorers = {"true cluster": target}
    if planted.gate is not None:
        g, mods = planted.gate, planted.modality_cluster
        scorers["gate-weighted"] = sum(g[:, m:m + 1] * onehot[mods[:, m]] for m in range(g.shape[1]))
        scorers["equal weights"] = sum(onehot[mods[:, m]] for m in range(g.shape[1])) / g.shape[1]
    scorers["linear on features"] = ridge(x)
    if planted.gate is not None:
        scorers["linear on gate-weighted features"] = ridge(np.concatenate([x * g[:, m:m + 1] for m in range(g.shape[1])]
                                                                           + [x], 1))
    for name, items in scorers.items():
        m = evaluate_item_groups(torch.tensor(users), torch.tensor(items), exclude, truth, eval_users, cold, ks=(20,))
        print(json.dumps({"scorer": name, **{key: round(m[key], 4) for key in
                                              ("warm_recall@20", "cold_recall@20", "cold_all_recall@20")}}))


if __name__ == "__main__":
    main(sys.argv[1])
