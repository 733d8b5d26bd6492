"""The training graph: TRAIN interactions as a user–item graph, DGL heterograph or torch-only.

``backend="dgl"`` (default) builds a DGL heterograph; ``backend="torch"`` a ``torch_graph.BipartiteGraph``
(no DGL needed: the latest lane).  Everything downstream (``make_batches``, the GCN) follows the graph's
type.  DGL is imported only when the DGL backend is used.

Contract shared by both backends and the model's GCN:

* node types ``"user"`` (``num_users`` nodes) and ``"item"`` (``num_items`` nodes);
* edge types ``("user", "ui", "item")`` and ``("item", "iu", "user")``;
* edge id ``e`` of ``ui`` and edge id ``e`` of ``iu`` are the same interaction (row ``e`` of the input
  arrays) in the two directions, so excluding an interaction means excluding id ``e`` of both types.

Only TRAIN interactions belong here: valid/test edges in the graph would leak labels into the
neighbourhoods.  Duplicate (user, item) rows would become distinct edges that are not excluded with
each other; the dataset loader rejects them (``data.mmrec``), so this module does not re-check.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from metammf_dist.errors import DataError
from metammf_dist.graph.torch_graph import IU, UI, BipartiteGraph

BACKENDS = ("dgl", "torch")


def _check_ids(name: str, ids: np.ndarray, count: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DataError(f"train {name} ids: expected a 1-D array, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"train {name} ids: expected integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    bad = np.flatnonzero((ids < 0) | (ids >= count))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"train interaction {row}: {name} id {int(ids[row])} is out of range [0, {count}) "
            f"({bad.size} bad {name} id(s) in total)"
        )
    return ids


def build_train_graph(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, backend: str = "dgl",
                      copy: bool = True):
    """Interaction ``e`` = (``users[e]``, ``items[e]``) becomes edge ``e`` of both ``ui`` and ``iu``.

    ``backend``: ``"dgl"`` -> ``dgl.DGLHeteroGraph``; ``"torch"`` -> ``BipartiteGraph`` (on CPU; ``.to(device)``).
    ``copy=False`` (torch): the graph's edge arrays may be the caller's arrays (int64, contiguous), not copies.
    """
    if backend not in BACKENDS:
        raise ValueError(f"train.graph_backend: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if num_users <= 0 or num_items <= 0:
        raise DataError(f"train graph: need at least one user and one item, got {num_users} users, {num_items} items")
    users = _check_ids("user", users, num_users)
    items = _check_ids("item", items, num_items)
    if users.shape != items.shape:
        raise DataError(f"train interactions: {users.size} user ids but {items.size} item ids")
    u = torch.from_numpy(np.ascontiguousarray(users))
    i = torch.from_numpy(np.ascontiguousarray(items))
    if backend == "torch":
        if copy:  # not views of the caller's arrays
            u, i = u.clone(), i.clone()
        return BipartiteGraph(u, i, int(num_users), int(num_items))
    import dgl

    return dgl.heterograph(
        {UI: (u, i), IU: (i, u)},
        num_nodes_dict={"user": int(num_users), "item": int(num_items)},
        idtype=torch.int64,
    )


def graph_backend(graph) -> str:
    """``"torch"`` for a ``BipartiteGraph``, ``"dgl"`` for anything else (a DGL graph)."""
    return "torch" if isinstance(graph, BipartiteGraph) else "dgl"


def train_edges(graph) -> Tuple[np.ndarray, np.ndarray]:
    """(users, items) of every train interaction, indexed by edge id (int64 numpy arrays)."""
    if isinstance(graph, BipartiteGraph):
        return graph.edge_users.cpu().numpy(), graph.edge_items.cpu().numpy()
    u, i = graph.edges(etype=UI, order="eid")
    return u.numpy(), i.numpy()
