"""One train graph per machine (graph/shared.py): written once by the first local rank, memory-mapped by all.

* the mapped graph holds the same edges and CSC views as the built one, and the neighbour sampler draws the same
  blocks from it;
* only local rank 0 builds; the others map the files it wrote (a build on another rank would fail the test);
* its pages are shared: a second process mapping the graph adds about nothing to the node's PSS.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from metammf_dist.graph.shared import map_graph, node_folder, node_shared_graph, release, write_graph
from metammf_dist.graph.train_graph import build_train_graph
from metammf_dist.sampler.torch_neighbor import TorchNeighborSampler


def _graph(seed=0, users=300, items=200, edges=4000):
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, users, edges), rng.integers(0, items, edges)], 1), axis=0)
    return build_train_graph(pairs[:, 0], pairs[:, 1], users, items, backend="torch")


def test_the_mapped_graph_equals_the_built_one_and_samples_the_same_blocks(tmp_path):
    built = _graph()
    write_graph(built, tmp_path / "g")
    mapped = map_graph(tmp_path / "g")
    assert mapped.num_nodes("user") == 300 and mapped.num_nodes("item") == 200
    for name in ("edge_users", "edge_items"):
        assert torch.equal(getattr(mapped, name), getattr(built, name))
    for adj in ("in_items", "in_users"):
        for field in ("indptr", "eids", "position", "dst"):
            assert torch.equal(getattr(getattr(mapped, adj), field), getattr(getattr(built, adj), field))
    users, items, seeds = torch.tensor([0, 5, 9]), torch.tensor([1, 2]), torch.arange(4)
    samplers = [TorchNeighborSampler(g, [3, 3]) for g in (built, mapped)]
    a, b = (s.sample_blocks(users, items, seeds, s.generator(7)) for s in samplers)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for x, y in zip(a[2], b[2]):
        for etype in ("ui", "iu"):
            assert all(torch.equal(p, q) for p, q in zip(x.edges(etype), y.edges(etype)))


def test_only_the_first_local_rank_builds(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return _graph(1)

    def must_not_build():
        raise AssertionError("a rank other than local rank 0 built the graph")

    first = node_shared_graph(build, "k1", 0, lambda: None, root=str(tmp_path))
    other = node_shared_graph(must_not_build, "k1", 1, lambda: None, root=str(tmp_path))
    again = node_shared_graph(must_not_build, "k1", 0, lambda: None, root=str(tmp_path))  # a complete copy is reused
    assert calls == [1] and torch.equal(first.edge_items, other.edge_items) and torch.equal(again.edge_users,
                                                                                             other.edge_users)
    release("k1", 1, root=str(tmp_path))
    assert node_folder("k1", str(tmp_path)).exists()  # only local rank 0 removes it
    release("k1", 0, root=str(tmp_path))
    assert not node_folder("k1", str(tmp_path)).exists()


PSS_PROBE = r"""
import sys, numpy as np
from metammf_dist.graph.shared import map_graph
from metammf_dist.procmem import pss_bytes
g = map_graph(__import__("pathlib").Path(sys.argv[1]))
before = pss_bytes()
total = 0
for t in (g.edge_users, g.edge_items, g.in_items.eids, g.in_items.position, g.in_users.eids, g.in_users.position):
    total += int(t.sum())  # touch every page
print(pss_bytes() - before, flush=True)
sys.stdin.readline()  # stay alive (mapped) until told to exit
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps_rollup"), reason="needs Linux PSS")
def test_a_second_process_shares_the_pages(tmp_path):
    """Two processes map one ~100 MB graph: the first adds ~all of it to its PSS, and once the second maps and
    touches it too, the pages are split between them (each ~half)."""
    graph = _graph(2, users=200_000, items=200_000, edges=2_000_000)
    write_graph(graph, tmp_path / "g")
    size = sum((tmp_path / "g" / f).stat().st_size for f in ("edge_users.npy", "edge_items.npy", "in_items_eids.npy",
                                                           "in_items_position.npy", "in_users_eids.npy",
                                                           "in_users_position.npy"))
    procs = []
    try:
        readings = []
        for _ in range(2):  # one after the other: the second maps while the first still holds the pages
            procs.append(subprocess.Popen([sys.executable, "-c", PSS_PROBE, str(tmp_path / "g")], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True))
            readings.append(int(procs[-1].stdout.readline()))
        first, second = readings
    finally:
        for p in procs:
            p.communicate("\n", timeout=30)
    assert first > 0.8 * size  # alone, the process owns the pages it touched
    assert second < 0.7 * size  # the second process's share: the pages were already resident, now split


@pytest.mark.multiproc
def test_a_run_that_exits_with_an_error_removes_the_node_graph(synth_ds, tmp_path):
    """2 ranks, torch backend: a resume refused on another catalog (one-line error, exit 2) leaves no graph copy
    in the node folder; the successful first run removed its own at its end."""
    from metammf_dist.data.dataset import Dataset
    from metammf_dist.data.synth import SynthSpec, generate
    from metammf_dist.graph.shared import graph_key
    from helpers import train

    run, other = tmp_path / "run", tmp_path / "other"
    opts = ("train.graph_backend=torch", "train.max_steps_per_epoch=2")
    train(synth_ds, run, *opts, nproc=2, epochs=1)
    generate(SynthSpec(num_users=300, num_items=250, num_interactions=5000, modalities={"image": 16, "text": 8},
                       seed=3), str(other))
    folders = {}
    for ds in (synth_ds, other):
        opened = Dataset.open(str(ds))
        folders[ds] = node_folder(graph_key(str(ds), opened.meta, opened.num_interactions("train"), str(run)))
    assert not folders[synth_ds].exists()
    proc = train(other, run, *opts, "--resume", nproc=2, epochs=1, check=False)
    assert proc.returncode != 0 and "does not match this run's dataset" in proc.stderr, proc.stderr[-2000:]
    assert not folders[other].exists(), sorted(p.name for p in folders[other].iterdir())
