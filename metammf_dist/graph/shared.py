"""One train graph per machine: the local ranks of a node share one memory-mapped copy (torch backend).

Every rank of a run needs the whole train graph (its sampler draws neighbours anywhere in it), and a
``BipartiteGraph`` is ~48 bytes per train edge (the edge arrays and the CSC view in both directions).  Built per
rank, a node with 8 ranks holds it 8 times.  Here the first local rank of each node builds it once and writes its
arrays as ``.npy`` files into a node-local folder (``/dev/shm`` where there is one: shared memory; else the
temporary folder, whose pages the page cache shares), marked complete last; after a barrier every local rank maps
them read-only (``numpy.load(mmap_mode="r")``), so the pages exist once per machine.  Measure with PSS (the
proportional set size: a page shared by k processes counts 1/k in each), not RSS, which counts shared pages in
every process (``procmem.pss_bytes``).

The folder is named by the dataset's identity (its path, ``dataset.json`` and the train edge count) and the run
folder, so a run killed outright leaves files its resume reuses; the run that made or found them removes them at
its end, or when it exits with an error (``release``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from metammf_dist.graph.torch_graph import Adjacency, BipartiteGraph

MARKER = "COMPLETE.json"
ARRAYS = ("edge_users", "edge_items", "in_items_indptr", "in_items_eids", "in_items_position", "in_users_indptr",
          "in_users_eids", "in_users_position")


def node_folder(key: str, root: Optional[str] = None) -> Path:
    """The node-local folder of graph ``key``: under ``/dev/shm`` (shared memory) where it exists."""
    base = root or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    return Path(base) / f"metammf-graph-{key}"


def graph_key(dataset_path: str, meta: dict, num_train_edges: int, run_dir: str) -> str:
    """The node folder's name: the dataset and the run (one writer per run folder, so two runs on one dataset
    never share, write or remove each other's copy)."""
    text = json.dumps({"path": os.path.abspath(dataset_path), "meta": meta, "edges": int(num_train_edges),
                       "run": os.path.abspath(run_dir)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_graph(graph: BipartiteGraph, folder: Path) -> None:
    """The graph's arrays into ``folder`` (through a temporary sibling, renamed into place; the marker last)."""
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays = {"edge_users": graph.edge_users, "edge_items": graph.edge_items}
    for name, adj in (("in_items", graph.in_items), ("in_users", graph.in_users)):
        arrays.update({f"{name}_indptr": adj.indptr, f"{name}_eids": adj.eids, f"{name}_position": adj.position})
    for name, tensor in arrays.items():
        np.save(tmp / f"{name}.npy", tensor.cpu().numpy())
    (tmp / MARKER).write_text(json.dumps({"num_users": graph.num_nodes("user"), "num_items": graph.num_nodes("item"),
                                          "num_edges": graph.num_edges()}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def map_graph(folder: Path) -> BipartiteGraph:
    """The graph in ``folder``, memory-mapped read-only (nothing copied)."""
    meta = json.loads((folder / MARKER).read_text())
    with warnings.catch_warnings():  # read-only maps: nothing here writes to the graph
        warnings.simplefilter("ignore", UserWarning)
        t = {name: torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="r")) for name in ARRAYS}
    users, items = t["edge_users"], t["edge_items"]
    in_items = Adjacency(t["in_items_indptr"], t["in_items_eids"], t["in_items_position"], items)
    in_users = Adjacency(t["in_users_indptr"], t["in_users_eids"], t["in_users_position"], users)
    return BipartiteGraph(users, items, meta["num_users"], meta["num_items"], _in_items=in_items, _in_users=in_users)


def node_shared_graph(build: Callable[[], BipartiteGraph], key: str, local_rank: int, barrier: Callable[[], None],
                      root: Optional[str] = None) -> BipartiteGraph:
    """Collective: local rank 0 of each node builds the graph (``build()``) unless a complete copy is there, every
    rank waits at ``barrier`` and then maps it."""
    folder = node_folder(key, root)
    if local_rank == 0 and not (folder / MARKER).is_file():
        graph = build()
        write_graph(graph, folder)
        del graph
    barrier()
    return map_graph(folder)


def release(key: str, local_rank: int, root: Optional[str] = None) -> None:
    """Local rank 0, at the end of a run (after the last barrier): remove the node's copy."""
    if local_rank == 0:
        shutil.rmtree(node_folder(key, root), ignore_errors=True)
