"""Per-rank memory model of a MetaMMF training run: what ``metammf-dist plan`` prints.

``plan_memory(cfg, workload, world_size, zero_stage, offload)`` returns a ``Plan``: a list of ``Component``
byte counts, each tagged with the phase in which it is alive:

* ``training`` — alive while an epoch trains, gone when it evaluates: the epoch's batches and negatives, the
  loader thread's sampler scratch (counted with the training phases below);
* ``persistent`` — the whole run: runtime (Python + torch + DGL + DeepSpeed, measured once), interactions,
  graph and sampler arrays, feature-store cache, model states (parameters, Adam states, ZeRO buffers), and
  the heap glibc retains after the first steps;
* ``backward`` — a training step's forward/backward: the batch (features, blocks), the activations saved
  for backward, the ID tables' dense gradients (they appear early in backward, next to almost every
  saved activation), ZeRO-3's gathered module;
* ``optimizer`` — after backward (the batch is still referenced): all gradients, flattening/reduction
  buffers and Adam's temporaries;
* ``inference`` — evaluation's first half: every user/item vector, the full-graph GCN pass, the CSRs;
* ``ranking`` — its second half: the vectors, the CSRs and the score chunks (users x all items);
* ``setup`` — building the trainer (the train pairs read, full-graph blocks);
* ``epoch`` — each epoch's start: the permutation of every train edge, before a rank keeps its share;
* ``refresh`` — a fusion-cache refresh (``train.fusion_cache_refresh``): one chunk of no-grad fusion plus the
  new cache before it replaces the old one.  With the cache, a step fuses (and reads features of) only its
  seed items; the cache (``num_items x fusion_dims[-1]`` floats) is persistent;
* ``history`` — a GCN-history refresh (``train.gcn_history``): one no-grad GraphSAGE layer over the whole
  train graph (layer-0 vectors of every node, one edge chunk of messages, the new tables).  The tables
  (``(num_users + num_items) x D x (L - 1)`` floats) are persistent, and a step's blocks are ONE sampled hop
  (``fanouts[-1]``) that every GCN layer runs over.

Peak per rank = persistent + the largest phase.  Bytes are float32 (4) unless noted; the formulas
follow the code (``model/fusion.py``, ``model/gcn.py``, ``sampler/*``, ``engine/*``, DeepSpeed 0.18's ZeRO
optimizers) and their constants were calibrated against measured peak RSS (``tests/test_planner.py``).

Model states by ZeRO stage (P parameters, N ranks, client ``torch.optim.Adam`` in fp32, its single-tensor
CPU path):

    stage 0   params 4P, Adam 8P persistent; grads 4P; N > 1: a flattened all-reduce copy 4P
    stage 1   flat params 4P + fp32 master 4P/N + Adam 8P/N; grads 4P until reduced, then a flat 4P/N
    stage 2   as stage 1, but gradients leave backward partitioned (4P/N) through a reduce bucket
    stage 3   params 4P/N (tensors under ``stage3_param_persistence_threshold`` stay whole) + master 4P/N
              + Adam 8P/N + grad partition 4P/N; during its forward and backward a module's FULL
              parameters are gathered (the whole user or item ID table: ``ColdStartEmbedding`` and
              ``nn.Embedding`` are single modules) plus its full gradient before the reduce-scatter.
    offload   optimizer states + master (and stage-3 params) move to host memory: on a CPU run the
              RSS stays (plus a host copy buffer); on GPUs they leave the device.

Activations come from the block sizes of a step: unique input users/items per layer and sampled edges.
They are estimated from the train degree distribution (``expected_blocks``: each hop reaches a node
with probability ``1 - exp(-sampled edges x degree / E)``; nodes of equal degree share that probability,
so the estimate runs over degree histograms and scales to 100M nodes), or measured by running the real
sampler for a few steps (``probe_blocks``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from metammf_dist.config import Config, sampled_fanouts
from metammf_dist.model.gcn import EDGE_CHUNK
from metammf_dist.model.summary import count_parameters

FLOAT = 4
INDEX = 8
# RSS of a process that imported torch 2.2.1 (CPU/CUDA wheel) + dgl 2.1.0 + deepspeed 0.18.2 +
# metammf_dist.train.loop: 595-690 MiB measured on this project's machine (x86-64; it varies with the page
# cache and thread count).  ``measure_runtime_baseline()`` re-measures it, ``plan --baseline-mb`` sets it.
RUNTIME_BASELINE_BYTES = 640 << 20
ENGINE_INIT_BYTES = 45 << 20  # DeepSpeed engine init, comm op, autograd/oneDNN state after the first steps
TORCHREC_RUNTIME_BYTES = 116 << 20  # import torchrec + fbgemm_gpu (CPU build) on top of the runtime, measured
# Calibrated constants (bytes per unit), from measurements with the current code:
TRAIN_COPY_BYTES = 16  # per train interaction: a (user, item) int64 pair
SAMPLER_BYTES_PER_EDGE = 32  # neighbour sampler: per-direction CSC eids + positions (2 x 2 x int64)
EPOCH_BYTES_PER_EDGE = 8  # an int64 per edge: the epoch permutation, a rank's batches, sorted ids, negatives
CSC_BYTES_PER_EDGE = 32  # DGL in-CSR formats of both edge types (indices + eids), created by full-graph GCN
CSC_BYTES_PER_NODE = 16
BLOCK_BYTES_PER_EDGE = 48  # a DGL block: src, dst, EID int64 + the CSC it builds for message passing
FULL_BLOCK_BYTES_PER_EDGE = 96  # dgl.to_block of the whole graph (both edge types) + its CSC
TO_BLOCK_TRANSIENT_PER_EDGE = 240  # dgl.to_block over the whole graph, while it runs
SPLIT_CSR_TRANSIENT_PER_EDGE = 72  # build_csr of the exclusion/truth CSRs (unique of keys), while it runs
ADAM_TEMPS = 3  # torch 2.2 single-tensor Adam: grad + wd*param, sqrt(v), sqrt(v)/bc -> 3 temporaries
GRAD_BACKWARD_EXTRA = 0.5  # share of the largest activation alive again as scratch/gradient (measured)
DEFAULT_BUCKET = 500_000_000  # DeepSpeed reduce/allreduce bucket (elements)
DEFAULT_PERSISTENCE = 100_000  # stage3_param_persistence_threshold (elements)
GLIBC_MMAP_MAX = 32 << 20  # glibc's dynamic mmap threshold never exceeds 32 MiB on 64-bit
RETENTION = 1.5  # retained heap / small-tensor bytes of a step (glibc, measured 0.9-1.9 on 3 catalogs)
SCORE_CHUNKS_ALIVE = 1  # evaluation.ranking frees each chunk's scores before scoring the next chunk

PHASES = ("persistent", "training", "setup", "epoch", "backward", "optimizer", "refresh", "history", "inference",
          "ranking")
TRAINING_PHASES = ("epoch", "backward", "optimizer", "refresh", "history")  # those with the "training" components
TRANSIENT_PHASES = tuple(p for p in PHASES if p not in ("persistent", "training"))


@dataclass
class Component:
    name: str
    bytes: float
    phase: str  # one of PHASES
    where: str = "host"  # host | device (device = the accelerator; on a CPU run both are RSS)
    note: str = ""
    small: float = 0.0  # bytes in tensors below glibc's largest mmap threshold (they stay in its heap)


# ---- degree distributions ------------------------------------------------------------------------------
@dataclass
class DegreeHistogram:
    """Distinct degree values and how many nodes have each (float64: scaled histograms are fractional)."""

    degrees: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_ids(cls, ids: np.ndarray, num_nodes: int) -> "DegreeHistogram":
        deg = np.bincount(np.asarray(ids, dtype=np.int64), minlength=num_nodes)
        values, counts = np.unique(deg, return_counts=True)
        return cls(values.astype(np.float64), counts.astype(np.float64))

    @classmethod
    def zipf(cls, num_nodes: int, total: float, exponent: float = 0.9, bins: int = 4096) -> "DegreeHistogram":
        """Expected degrees ``total * r^-a / sum r^-a`` over ranks r (the synthetic catalogs' item popularity),
        summarized by ``bins`` log-spaced rank groups."""
        edges = np.unique(np.geomspace(1, num_nodes + 1, bins + 1).astype(np.int64))
        lo, hi = edges[:-1].astype(np.float64), edges[1:].astype(np.float64)
        mass = _zipf_mass(lo, hi, exponent)
        norm = mass.sum()
        counts = hi - lo
        return cls(total * mass / norm / counts, counts)

    @classmethod
    def lognormal(cls, num_nodes: int, total: float, sigma: float = 1.0, cap: Optional[float] = None,
                  bins: int = 2048) -> "DegreeHistogram":
        """Log-normal activity (the synthetic catalogs' users), mean ``total / num_nodes``, by quantiles."""
        q = (np.arange(bins) + 0.5) / bins
        from statistics import NormalDist

        z = np.array([NormalDist().inv_cdf(float(p)) for p in q])
        w = np.exp(sigma * z)
        deg = total * w / w.sum() * bins / num_nodes
        if cap is not None and total / num_nodes < cap:
            for _ in range(50):  # clip at the cap, give the excess to the others (as synth does), repeat
                deg = np.minimum(deg, cap)
                free = deg < cap
                missing = total * bins / num_nodes - deg.sum()
                if missing <= 1e-9 * total or not free.any():
                    break
                deg[free] *= 1 + missing / deg[free].sum()
        return cls(deg, np.full(bins, num_nodes / bins))

    @property
    def num_nodes(self) -> float:
        return float(self.counts.sum())

    @property
    def total(self) -> float:
        return float((self.degrees * self.counts).sum())

    def scaled(self, node_factor: float) -> "DegreeHistogram":
        """The same degree distribution over ``node_factor`` times as many nodes."""
        return DegreeHistogram(self.degrees.copy(), self.counts * node_factor)


def _zipf_mass(lo: np.ndarray, hi: np.ndarray, a: float) -> np.ndarray:
    """sum_{r=lo}^{hi-1} r^-a, exact for short runs, by the integral (midpoint-corrected) for long ones."""
    out = np.empty_like(lo)
    short = (hi - lo) <= 64
    for k in np.flatnonzero(short):
        r = np.arange(lo[k], hi[k])
        out[k] = np.sum(r ** -a)
    lg = ~short
    a_lo, a_hi = lo[lg] - 0.5, hi[lg] - 0.5
    out[lg] = np.log(a_hi / a_lo) if abs(a - 1.0) < 1e-9 else (a_hi ** (1 - a) - a_lo ** (1 - a)) / (1 - a)
    return out


# ---- the catalog -----------------------------------------------------------------------------------------
@dataclass
class Workload:
    num_users: int
    num_items: int
    num_interactions: int  # all splits
    feat_dim: int
    train_interactions: int = 0  # 0 = 80 % of num_interactions
    eval_interactions: int = 0  # valid (or test) interactions ranked per evaluation; 0 = 10 %
    feature_bytes: int = 2  # float16 store
    user_degrees: Optional[DegreeHistogram] = None  # train degrees; None = log-normal (synthetic users)
    item_degrees: Optional[DegreeHistogram] = None  # None = Zipf(0.9) (synthetic items)
    source: str = "given sizes"

    def __post_init__(self) -> None:
        if min(self.num_users, self.num_items, self.num_interactions, self.feat_dim) <= 0:
            raise ValueError(f"workload needs positive sizes, got {self}")
        if not self.train_interactions:
            self.train_interactions = int(round(0.8 * self.num_interactions))
        if not self.eval_interactions:
            self.eval_interactions = int(round(0.1 * self.num_interactions))

    @classmethod
    def from_dataset(cls, path: str, storage_options: Optional[dict] = None) -> "Workload":
        from metammf_dist.data.dataset import Dataset

        ds = Dataset.open(path, storage_options=storage_options)
        u, i = ds.interactions("train")
        itemsize = 2 if ds.meta.get("feature_dtype", "float16") == "float16" else 4
        return cls(ds.num_users, ds.num_items, ds.num_interactions(), ds.feat_dim,
                   train_interactions=int(u.size), eval_interactions=max(ds.num_interactions("valid"),
                                                                         ds.num_interactions("test"), 1),
                   feature_bytes=itemsize, user_degrees=DegreeHistogram.from_ids(u, ds.num_users),
                   item_degrees=DegreeHistogram.from_ids(i, ds.num_items), source=f"dataset {path}")

    def users_hist(self) -> DegreeHistogram:
        if self.user_degrees is not None:
            return self.user_degrees
        return DegreeHistogram.lognormal(self.num_users, self.train_interactions, cap=max(1.0, self.num_items / 2))

    def items_hist(self) -> DegreeHistogram:
        if self.item_degrees is not None:
            return self.item_degrees
        return DegreeHistogram.zipf(self.num_items, self.train_interactions)

    def scaled(self, num_items: int) -> "Workload":
        """The catalog with ``num_items`` items; users and interactions scaled in proportion."""
        f = num_items / self.num_items
        return replace(
            self, num_items=int(num_items), num_users=max(1, int(round(self.num_users * f))),
            num_interactions=max(1, int(round(self.num_interactions * f))),
            train_interactions=max(1, int(round(self.train_interactions * f))),
            eval_interactions=max(1, int(round(self.eval_interactions * f))),
            user_degrees=None if self.user_degrees is None else self.user_degrees.scaled(f),
            item_degrees=None if self.item_degrees is None else self.item_degrees.scaled(f),
            source=f"{self.source}, scaled x{f:.3g}",
        )


# ---- block sizes of a step -----------------------------------------------------------------------------
@dataclass
class BlockSizes:
    """Per block l (input side first): src/dst users and items and sampled edges (both directions)."""

    layers: List[Dict[str, float]]
    output_users: float
    output_items: float
    source: str

    @property
    def input_users(self) -> float:
        return self.layers[0]["src_users"] if self.layers else self.output_users

    @property
    def input_items(self) -> float:
        return self.layers[0]["src_items"] if self.layers else self.output_items

    @property
    def edges(self) -> float:
        return sum(layer["edges"] for layer in self.layers)


def expected_blocks(workload: Workload, batch_per_rank: int, num_negatives: int, fanouts: Sequence[int]) -> BlockSizes:
    """Expected unique nodes per hop of the neighbour sampler, from the degree histograms.

    Positives are train edges drawn uniformly (a node is hit with probability ~ its degree), negatives
    uniform items.  A hop samples ``min(fanout, degree)`` in-edges per destination node; their far ends
    land on a node in proportion to its degree, so node v is reached with probability
    ``1 - exp(-S * deg(v) / E)`` for S sampled edges, independently of being reached before.
    """
    uh, ih = workload.users_hist(), workload.items_hist()
    e = max(uh.total, 1.0)
    b = float(batch_per_rank)
    pu = 1.0 - np.exp(-b * uh.degrees / e)
    pi = 1.0 - np.exp(-b * ih.degrees / e - b * num_negatives / max(workload.num_items, 1))
    out_users, out_items = float((pu * uh.counts).sum()), float((pi * ih.counts).sum())
    layers = []
    for fanout in reversed(list(fanouts)):
        f = np.inf if fanout < 0 else float(fanout)
        s_ui = float((ih.counts * pi * np.minimum(f, ih.degrees)).sum())  # edges into dst items (from users)
        s_iu = float((uh.counts * pu * np.minimum(f, uh.degrees)).sum())  # edges into dst users (from items)
        dst_u, dst_i = float((pu * uh.counts).sum()), float((pi * ih.counts).sum())
        pu = 1.0 - (1.0 - pu) * np.exp(-s_ui * uh.degrees / e)
        pi = 1.0 - (1.0 - pi) * np.exp(-s_iu * ih.degrees / e)
        layers.insert(0, {"dst_users": dst_u, "dst_items": dst_i, "src_users": float((pu * uh.counts).sum()),
                          "src_items": float((pi * ih.counts).sum()), "edges": s_ui + s_iu})
    return BlockSizes(layers, out_users, out_items, "degree model")


def full_blocks(workload: Workload, num_layers: int) -> BlockSizes:
    """``--sampler full``: every block covers every node and every train edge (both directions)."""
    u, i, e = float(workload.num_users), float(workload.num_items), float(workload.train_interactions)
    layer = {"dst_users": u, "dst_items": i, "src_users": u, "src_items": i, "edges": 2 * e}
    return BlockSizes([dict(layer) for _ in range(num_layers)], u, i, "full graph")


def edge_blocks(workload: Workload, batch_per_rank: int, num_negatives: int) -> BlockSizes:
    """MF scorer: no blocks; the batch's own users and items."""
    est = expected_blocks(workload, batch_per_rank, num_negatives, [])
    return BlockSizes([], est.output_users, est.output_items, "degree model (edge batches)")


def probe_blocks(cfg: Config, steps: int = 2, world_size: int = 1) -> BlockSizes:
    """Block sizes measured by running the real sampler of ``cfg`` for ``steps`` steps (rank 0's share)."""
    from metammf_dist.data.dataset import Dataset
    from metammf_dist.graph.train_graph import build_train_graph
    from metammf_dist.sampler import batch_kind, make_batches

    ds = Dataset.open(cfg.data.path, storage_options=cfg.data.storage_options or None)
    u, i = ds.interactions("train")
    graph = build_train_graph(u, i, ds.num_users, ds.num_items)
    batches = make_batches(batch_kind(cfg.model.scorer, cfg.train.sampler), graph, fanouts=sampled_fanouts(cfg), batch_size=cfg.train.batch_size,
                           num_negatives=cfg.train.num_negatives, seed=cfg.train.seed, rank=0,
                           world_size=world_size)
    sums: Optional[List[Dict[str, float]]] = None
    out_u = out_i = 0.0
    n = 0
    for batch in batches.epoch(0):
        layers = [{"src_users": b.num_src_nodes("user"), "src_items": b.num_src_nodes("item"),
                   "dst_users": b.num_dst_nodes("user"), "dst_items": b.num_dst_nodes("item"),
                   "edges": b.num_edges()} for b in batch.blocks]
        sums = layers if sums is None else [{k: s[k] + v[k] for k in s} for s, v in zip(sums, layers)]
        out_u += batch.output_users.numel()
        out_i += batch.output_items.numel()
        n += 1
        if n >= steps:
            break
    n = max(n, 1)
    layers = [{k: v / n for k, v in layer.items()} for layer in (sums or [])]
    return BlockSizes(layers, out_u / n, out_i / n, f"sampler probe ({n} steps)")


# ---- the model's sizes ---------------------------------------------------------------------------------
def _fusion_floats_per_item(cfg: Config, feat_dim: int) -> Dict[str, object]:
    """Floats per item the fusion forward keeps for backward: ``pieces`` (one per saved tensor, features
    first), their sum ``saved`` and the largest single tensor's width ``largest``."""
    m = cfg.model
    pieces = [float(feat_dim)]  # the gathered features (float32)
    if m.feature_norm == "standardize":
        pieces.append(float(feat_dim))
    if m.fusion != "static":
        hidden = feat_dim if m.meta_hidden is None else m.meta_hidden
        pieces += [float(hidden), float(m.meta_dim)]  # relu output (the next Linear's input), s
    widths = [feat_dim] + list(m.fusion_dims)
    for a, b in zip(widths[:-1], widths[1:]):
        if m.fusion == "meta":
            pieces += [float(m.meta_dim * b), float(b)]  # u = h.T_k for all k, and the layer output
        elif m.fusion == "cp":
            pieces += [float(m.cp_rank)] * 3 + [float(b)]  # hA, sC, their product; the layer output
        else:
            pieces.append(float(b))
    pieces.append(float(m.user_id_dim))  # the item vector (fusion ⊕ ID row), kept by the GCN's layer history
    largest = max(pieces + [float(feat_dim if m.meta_hidden is None else m.meta_hidden)])
    return {"pieces": pieces, "saved": sum(pieces), "largest": largest}


def _meta_weight_copies(cfg: Config, feat_dim: int) -> float:
    """Meta layers reshape T (s x in x out) into in x (s.out) for one matmul; autograd keeps that copy for the
    gradient of h — not in the first layer, whose input (the features) needs no gradient."""
    if cfg.model.fusion != "meta":
        return 0.0
    widths = [feat_dim] + list(cfg.model.fusion_dims)
    return float(sum(cfg.model.meta_dim * a * b for a, b in list(zip(widths[:-1], widths[1:]))[1:]))


def _ranked_fraction(cfg: Config, workload: Workload) -> float:
    """Share of the train and eval pairs the evaluation CSRs hold: ``eval.max_users`` of the split's users (their
    expected count: users with at least one of the eval pairs, Poisson), else all (``inference.split_csr``)."""
    if cfg.eval.max_users <= 0:
        return 1.0
    u = float(workload.num_users)
    split_users = u * -math.expm1(-float(workload.eval_interactions) / u)
    return min(1.0, cfg.eval.max_users / max(split_users, 1.0))


def _sampled_eval(cfg: Config, workload: Workload) -> bool:
    """Whether a sharded evaluation ranks a sample of users (``eval.max_users`` below the split's users), so that
    it makes the final rows of those users only (``train/loop.py``)."""
    return _ranked_fraction(cfg, workload) < 1.0


def _ranked_note(ranked: float) -> str:
    return "" if ranked >= 1.0 else f"eval.max_users: the ranked users' pairs only ({ranked:.2%})"


def _gcn_floats(cfg: Config, blocks: BlockSizes) -> Dict[str, object]:
    """GraphSAGE (HeteroGraphConv of SAGEConv 'mean', sum aggregate) tensors kept for backward, in floats
    (also used for ``model.gcn_type=light``, whose scaled messages and sums are fewer: an upper bound).

    Per src node of a block: the dropout output and its byte mask.  Per dst node: the neighbour mean
    (fc_neigh's saved input) and the layer output, plus LeakyReLU's input between layers.  While a layer
    runs, fc_self/fc_neigh outputs, their sum and the aggregate's stack exist too (``largest``)."""
    d = cfg.model.user_id_dim
    pieces: List[float] = []
    largest = 0.0
    last = len(blocks.layers) - 1
    for index, layer in enumerate(blocks.layers):
        for ntype in ("users", "items"):
            src, dst = layer[f"src_{ntype}"], layer[f"dst_{ntype}"]
            pieces += [src * d, src * d / 4]
            pieces += [dst * d] * (2 + (1 if index < last else 0))
            largest = max(largest, src * d, 4 * dst * d)
    if cfg.model.gcn_combine == "mean":  # stack of h^0..h^L of the output nodes, and their mean
        for n_out in (blocks.output_users, blocks.output_items):
            pieces += [(len(blocks.layers) + 1) * n_out * d, n_out * d]
    return {"pieces": pieces, "saved": sum(pieces), "largest": largest}


def _param_layout(cfg: Config, workload: Workload, with_ids: bool = True) -> Dict[str, float]:
    counts = count_parameters(cfg.model, workload.num_users, workload.num_items, workload.feat_dim)
    m = cfg.model
    ids = [workload.num_users * m.user_id_dim, workload.num_items * m.item_id_dim]
    tensors = list(ids) if with_ids else []
    widths = [workload.feat_dim] + list(m.fusion_dims) if m.fusion != "none" else []  # none: no fusion layers
    for a, b in zip(widths[:-1], widths[1:]):
        tensors.append(a * b)
        if m.fusion == "meta":
            tensors.append(m.meta_dim * a * b)
        elif m.fusion == "cp":
            tensors += [a * m.cp_rank, m.cp_rank * b]
    if m.fusion not in ("static", "none"):
        hidden = workload.feat_dim if m.meta_hidden is None else m.meta_hidden
        tensors.append(workload.feat_dim * hidden)
    if m.scorer == "gcn" and m.gcn_type == "sage":  # LightGCN propagation has no weights
        tensors.append(m.user_id_dim * m.user_id_dim)
    # modules that ZeRO-3 gathers as a whole: each ID table, each fusion layer, the meta-learner's layers
    modules = list(ids) if with_ids else []
    modules += [fusion_layer for fusion_layer in _fusion_layer_sizes(cfg, workload.feat_dim)]
    id_params = float(counts["item_id"] + counts["user_id"])
    return {"total": float(counts["total"]) - (0.0 if with_ids else id_params), "id": id_params if with_ids else 0.0,
            "largest_tensor": float(max(tensors)), "largest_module": float(max(modules)),
            "small": float(sum(t for t in tensors if t < DEFAULT_PERSISTENCE)), "counts": counts}


def _fusion_layer_sizes(cfg: Config, feat_dim: int) -> List[int]:
    from metammf_dist.model.summary import fusion_layer_parameters

    widths = [feat_dim] + list(cfg.model.fusion_dims)
    return [fusion_layer_parameters(cfg.model.fusion, a, b, cfg.model.meta_dim, cfg.model.cp_rank)
            for a, b in zip(widths[:-1], widths[1:])]


# ---- the plan ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    components: List[Component]
    world_size: int
    zero_stage: int
    offload: bool
    device: str
    blocks: BlockSizes
    workload: Workload
    params: Dict[str, float] = field(default_factory=dict)

    def phase_total(self, phase: str, where: Optional[str] = None) -> float:
        return sum(c.bytes for c in self.components if c.phase == phase and (where is None or c.where == where))

    def alive(self, phase: str, where: Optional[str] = None) -> float:
        """A transient phase's bytes + the training-only bytes when it is a training phase."""
        extra = self.phase_total("training", where) if phase in TRAINING_PHASES else 0.0
        return self.phase_total(phase, where) + extra

    def peak(self, where: Optional[str] = None) -> float:
        """Persistent + the largest transient phase (with the training-only bytes during training; per rank);
        ``where`` = host or device only."""
        return self.phase_total("persistent", where) + max(self.alive(p, where) for p in TRANSIENT_PHASES)

    def peak_phase(self) -> str:
        return max(TRANSIENT_PHASES, key=self.alive)

    def train_peak(self) -> float:
        return self.phase_total("persistent") + self.phase_total("training") + \
            max(self.phase_total("backward"), self.phase_total("optimizer"))


def zero_stage_of(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def offload_of(ds_config: dict) -> bool:
    zero = ds_config.get("zero_optimization", {})
    return any(str((zero.get(k) or {}).get("device", "none")) == "cpu" for k in ("offload_optimizer", "offload_param"))


def plan_memory(cfg: Config, workload: Workload, world_size: int = 1, zero_stage: int = 0, offload: bool = False,
                device: str = "cpu", blocks: Optional[BlockSizes] = None,
                baseline_bytes: float = RUNTIME_BASELINE_BYTES,
                ds_config: Optional[dict] = None, with_eval: bool = True, allocator: str = "glibc",
                ranks_per_node: Optional[int] = None) -> Plan:
    """Per-rank memory of training ``cfg`` on ``workload`` with ``world_size`` ranks at ZeRO ``zero_stage``.

    ``ranks_per_node`` (default: every rank on one machine for CPU runs, 8 per machine on GPUs): with the torch
    graph backend and several ranks the train graph is one memory-mapped copy per machine (``graph/shared.py``),
    counted here as 1/ranks_per_node of it per rank.

    ``allocator``: "glibc" (the default malloc: adds the heap it retains) or "live" (RSS tracks live bytes,
    e.g. ``MALLOC_MMAP_THRESHOLD_=65536`` or jemalloc)."""
    if allocator not in ("glibc", "live"):
        raise ValueError(f"allocator must be glibc or live, got {allocator!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero stage must be 0-3, got {zero_stage}")
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    zero = (ds_config or {}).get("zero_optimization", {})
    bucket = float(zero.get("reduce_bucket_size", DEFAULT_BUCKET))
    persistence = float(zero.get("stage3_param_persistence_threshold", DEFAULT_PERSISTENCE))
    n, m, t = world_size, cfg.model, cfg.train
    dev = "device" if device != "cpu" else "host"
    comps: List[Component] = []

    def add(name, nbytes, phase, where="host", note="", tensors=None):
        """``tensors``: sizes of the single tensors making up ``nbytes`` (default: one tensor)."""
        sizes = [float(nbytes)] if tensors is None else [float(x) for x in tensors]
        if nbytes:
            small = sum(x for x in sizes if x < GLIBC_MMAP_MAX)
            comps.append(Component(name, float(nbytes), phase, where, note, small))

    # ---- runtime, data, graph --------------------------------------------------------------------------
    add("runtime (python, torch, dgl, deepspeed)", baseline_bytes, "persistent", note="imports, measured once")
    add("engine init + first-step state", ENGINE_INIT_BYTES, "persistent", note="calibrated")
    if cfg.train.id_tables == "sharded":
        add("TorchRec + FBGEMM libraries", TORCHREC_RUNTIME_BYTES, "persistent", "host", "imports, measured")
    e_all, e_tr = float(workload.num_interactions), float(workload.train_interactions)
    nodes = float(workload.num_users + workload.num_items)
    if ranks_per_node is None:
        ranks_per_node = world_size if device == "cpu" else min(world_size, 8)
    node_shared = t.graph_backend == "torch" and world_size > 1
    sharers = max(1, min(ranks_per_node, world_size))  # the ranks of one machine that map its graph
    graph_share = 1.0 / sharers if node_shared else 1.0
    shared_note = f"one copy per machine: 1/{sharers} per rank" if node_shared else ""
    # the dataset caches no table: the train pairs are read once while the trainer is built (graph, degrees),
    # and an evaluation reads its split's pairs (and the ranked users' excluded pairs) again
    pairs_note = f"{e_tr:,.0f} of {e_all:,.0f} interactions"
    if node_shared:  # the machine's graph builder alone reads them; every rank then maps the graph's edge arrays
        add("train pairs (read while the trainer is built)", TRAIN_COPY_BYTES * e_tr * graph_share, "setup",
            note=f"{pairs_note}, by the graph's builder: 1/{sharers} per rank")
        add("graph build: the CSC views in the builder's heap", (SAMPLER_BYTES_PER_EDGE * e_tr + 2 * INDEX * nodes)
            * graph_share, "setup", note="while they are written to shared memory")
    else:
        add("train pairs (read while the trainer is built)", TRAIN_COPY_BYTES * e_tr, "setup", note=pairs_note)
    add("train graph edges", TRAIN_COPY_BYTES * e_tr * graph_share, "persistent", note=shared_note)
    batch_per_rank = max(1, t.batch_size // n)
    full = t.sampler == "full"
    gcn = m.scorer == "gcn"
    if blocks is None:
        if full and gcn:
            blocks = full_blocks(workload, len(t.fanouts))
        elif gcn:
            blocks = expected_blocks(workload, batch_per_rank, t.num_negatives, sampled_fanouts(cfg))
        else:
            blocks = edge_blocks(workload, batch_per_rank, t.num_negatives)
    if gcn and not full:
        add("neighbour sampler (CSC by dst)", (SAMPLER_BYTES_PER_EDGE * e_tr + 2 * INDEX * nodes) * graph_share,
            "persistent", note=shared_note)
        # graph-sized marks kept per sampling thread and reset after each use (sampler/torch_neighbor.py)
        # thread-local: with loader threads (train.num_workers > 0) they go with the epoch's thread
        add("sampler scratch", e_tr + (2 * INDEX + 1) * nodes, "training" if t.num_workers > 0 else "persistent",
            note="excluded-edge mask, node lookups (per loader thread)")
    if gcn and full:
        add("full-graph blocks", FULL_BLOCK_BYTES_PER_EDGE * e_tr * len(t.fanouts), "persistent",
            note=f"{len(t.fanouts)} x to_block(all nodes)")
        add("to_block of the whole graph", TO_BLOCK_TRANSIENT_PER_EDGE * e_tr, "setup")
    # the epoch's permutation of every train edge exists while each epoch starts; a rank keeps its own edges'
    # batches, their sorted ids and their negatives (drawn in chunks of the epoch's stream)
    add("epoch permutation (each epoch's start)", EPOCH_BYTES_PER_EDGE * e_tr, "epoch")
    add("epoch batches + negatives (own edges)", EPOCH_BYTES_PER_EDGE * (2 + t.num_negatives) * e_tr / n,
        "training", note="the epoch's generator: gone before its evaluation")
    if with_eval and gcn and t.id_tables != "sharded":
        add("train graph CSC (full-graph inference)", CSC_BYTES_PER_EDGE * e_tr + CSC_BYTES_PER_NODE * nodes,
            "persistent", dev, "created by the first evaluation")
        if dev == "device":
            add("train graph copied to the device", 2 * 2 * INDEX * e_tr, "persistent", dev, "graph.to(device)")
    store_bytes = float(workload.num_items) * workload.feat_dim * workload.feature_bytes
    add("feature-store cache", min(float(cfg.data.cache_mb) * 2**20, store_bytes), "persistent",
        note=f"min(data.cache_mb, store {store_bytes / 2**20:,.0f} MiB)")

    if m.scorer == "gcn" and m.gcn_type == "light":
        add("node degrees (model.gcn_type=light)", FLOAT * nodes, "persistent", dev, "1/sqrt(degree) per node")
    if m.item_knn > 0:
        add("item kNN index (model.item_knn)", INDEX * float(workload.num_items) * m.item_knn, "persistent", dev,
            note=f"{m.item_knn} int64 ids per item, a model buffer on every rank")

    # ---- model states ----------------------------------------------------------------------------------
    # Backward order matters: the ID tables sit at the bottom of the graph but right below the GCN, so their
    # dense gradients appear early, next to almost all saved activations; the fusion's gradients appear as
    # its activations are freed.  So "backward" holds the activations + the ID-table gradients, and the
    # "optimizer" phase (the batch is still referenced) holds all gradients + the optimizer's scratch.
    sparse_ids = t.id_tables in ("sparse", "sharded")  # ID tables outside the engine, updated row by row
    sharded_ids = t.id_tables == "sharded"  # ... and row-sharded: 1/n of the rows (and their state) per rank
    cached = t.fusion_cache_refresh > 0 and gcn and not full  # seed items fused, neighbours from the cache
    history = t.gcn_history and cached  # + one sampled hop, neighbours' inner layers from history tables
    layout = _param_layout(cfg, workload, with_ids=not sparse_ids)
    p, p_big, p_small, p_id = layout["total"], layout["total"] - layout["small"], layout["small"], layout["id"]
    id_tables = [FLOAT * workload.num_users * m.user_id_dim, FLOAT * workload.num_items * m.item_id_dim]
    opt_where = "host" if offload else dev
    if zero_stage == 0:
        add("parameters", FLOAT * p, "persistent", dev, "fp32, replicated")
        add("Adam states (m, v)", 2 * FLOAT * p, "persistent", dev, "replicated")
        add("ID-table gradients (dense)", FLOAT * p_id, "backward", dev, "whole tables, produced early",
            tensors=id_tables)
        add("gradients", FLOAT * p, "optimizer", dev, "dense, incl. ID tables")
        if n > 1:
            add("all-reduce flat buffer", FLOAT * min(p, bucket), "optimizer", dev)
        add("Adam temporaries", ADAM_TEMPS * FLOAT * layout["largest_tensor"], "optimizer", dev,
            "per tensor, the largest")
    elif zero_stage in (1, 2):
        add("parameters (flat)", FLOAT * p, "persistent", dev, "fp32, replicated")
        add("fp32 master partition", FLOAT * p / n, "persistent", opt_where, f"1/{n}")
        add("Adam states (m, v)", 2 * FLOAT * p / n, "persistent", opt_where, f"1/{n}")
        if offload:
            add("offload copy buffer", FLOAT * p / n, "persistent", "host")
        add("ID-table gradients (dense)", FLOAT * p_id, "backward", dev, "whole tables, produced early",
            tensors=id_tables)
        if zero_stage == 1:
            add("reduce bucket", FLOAT * min(p, bucket), "optimizer", dev, "gradients reduced after backward")
        else:
            add("reduce bucket", FLOAT * min(p, bucket), "backward", dev, "gradients reduced during backward")
        add("flat gradient partition", FLOAT * p / n, "optimizer", opt_where, f"1/{n}")
        add("Adam temporaries", ADAM_TEMPS * FLOAT * p / n, "optimizer", opt_where, "on the flat partition")
    else:
        pwhere = "host" if offload else dev
        add("parameter partitions", FLOAT * (p_big / n + p_small), "persistent", pwhere,
            f"1/{n}; tensors < {persistence:,.0f} elements whole")
        add("fp32 master partition", FLOAT * p / n, "persistent", opt_where, f"1/{n}")
        add("Adam states (m, v)", 2 * FLOAT * p / n, "persistent", opt_where, f"1/{n}")
        add("gradient partition", FLOAT * p / n, "persistent", opt_where, f"1/{n}")
        add("gathered module (forward/backward)", FLOAT * layout["largest_module"], "backward", dev,
            "a whole ID table")
        add("its full gradient", FLOAT * layout["largest_module"], "backward", dev, "before reduce-scatter")
        add("flat gradient copy", FLOAT * p / n, "optimizer", opt_where)
        add("Adam temporaries", ADAM_TEMPS * FLOAT * p / n, "optimizer", opt_where, "on the flat partition")

    if sparse_ids:
        share = 1.0 / n if sharded_ids else 1.0
        own = [b * share for b in id_tables]
        if t.id_optimizer == "adam":
            state, what = [2 * b for b in own], "lazy Adam (m, v)"
        else:  # row-wise Adagrad: one float per row
            state = [FLOAT * workload.num_users * share, FLOAT * workload.num_items * share]
            what = "row-wise Adagrad (one float per row)"
        where = f"row-sharded on TorchRec, 1/{n} of the rows" if sharded_ids else "outside ZeRO, replicated"
        add(f"ID tables + {what}", sum(own) + sum(state), "persistent", dev, where, tensors=own + state)
        if history:  # only the seeds' rows get gradients
            rows = FLOAT * (blocks.output_users * m.user_id_dim + blocks.output_items * m.item_id_dim)
        else:
            rows = FLOAT * (blocks.input_users * m.user_id_dim + blocks.input_items * m.item_id_dim)
        if sharded_ids:  # looked-up rows and their gradients, through the all-to-all both ways
            add("ID rows looked up + all-to-all buffers", 4 * rows, "optimizer", dev, "this rank's batch, both ways")
        else:
            add("ID gradient rows (sparse, gathered)", (2 + n) * rows, "optimizer", dev, "coalesced, all ranks' rows")

    # ---- one training step -----------------------------------------------------------------------------
    items_in, users_in = blocks.input_items, blocks.input_users
    fusion = _fusion_floats_per_item(cfg, workload.feat_dim)
    # with the fusion cache only the seed items (the last block's dst items) are fused and read features
    fused = blocks.output_items if cached else items_in
    if cached:
        fdim = float(m.fusion_dims[-1])
        own_items = float(workload.num_items) / (n if sharded_ids else 1)  # sharded: cut like the item table
        add("fusion cache", FLOAT * own_items * fdim, "persistent", dev,
            f"{own_items:,.0f} items x {m.fusion_dims[-1]}" + (f" (1/{n}, sharded)" if sharded_ids else ""))
        add("fusion cache lookup", FLOAT * (items_in - fused) * fdim * (2 if sharded_ids else 1), "backward", dev,
            "neighbour rows of a step" + (" (+ the all-to-all copy)" if sharded_ids else ""))
        chunk = min(float(cfg.eval.item_chunk), own_items)
        add("fusion cache refresh (one chunk, no grad)", FLOAT * chunk * (fusion["saved"] + fusion["largest"])
            + FLOAT * own_items * fdim, "refresh", dev,
            "chunked fusion + the new rows" if sharded_ids else "chunked fusion + the all-reduced copy")
    if history:
        d, hist_layers = float(m.user_id_dim), float(m.gcn_layers - 1)
        neighbours = users_in + items_in - blocks.output_users - blocks.output_items
        add("GCN layer histories", FLOAT * nodes * d * hist_layers, "persistent", dev,
            f"{nodes:,.0f} nodes x {m.user_id_dim} x {m.gcn_layers - 1} layer(s)")
        add("history lookup", FLOAT * neighbours * d * hist_layers, "backward", dev, "neighbour rows of a step")
        add("history refresh: layer-0 vectors + messages", FLOAT * d * (float(workload.num_items) + min(
            float(EDGE_CHUNK), e_tr)), "history", dev, "all items' fusion ⊕ ID rows, one edge chunk")
        add("history refresh: new tables", FLOAT * nodes * d * hist_layers, "history", dev, "before the old are freed")
    batch_bytes = FLOAT * fused * workload.feat_dim
    add("batch features (float32)", batch_bytes, "backward", dev, f"{fused:,.0f} items fused per step")
    add("batch features (float32)", batch_bytes, "optimizer", dev, "the batch lives until the next one")
    weight_copies = FLOAT * _meta_weight_copies(cfg, workload.feat_dim)
    add("fusion activations", FLOAT * fused * (fusion["saved"] - workload.feat_dim) + weight_copies, "backward",
        dev, tensors=[FLOAT * fused * x for x in fusion["pieces"][1:]] + [weight_copies])
    add("user ID rows", FLOAT * users_in * m.user_id_dim, "backward", dev, f"{users_in:,.0f} unique input users")
    largest = FLOAT * fused * fusion["largest"]
    if gcn:
        # with layer histories every GCN layer runs over the same one sampled hop
        g = _gcn_floats(cfg, replace(blocks, layers=blocks.layers * m.gcn_layers) if history else blocks)
        add("GCN activations", FLOAT * g["saved"], "backward", dev, tensors=[FLOAT * x for x in g["pieces"]])
        largest = max(largest, FLOAT * g["largest"])
        if not full:
            block_bytes = BLOCK_BYTES_PER_EDGE * blocks.edges + INDEX * 4 * (users_in + items_in)
            arrays = [block_bytes / 12] * 12  # ids, eids and formats of each block, per edge type
            add("sampled blocks", block_bytes, "backward", note=f"{blocks.edges:,.0f} edges", tensors=arrays)
            add("sampled blocks", block_bytes, "optimizer", tensors=arrays)
    add("transient of the largest activation", GRAD_BACKWARD_EXTRA * largest, "backward", dev,
        "its gradient / the next layer's scratch")

    # ---- evaluation ------------------------------------------------------------------------------------
    if with_eval and sharded_ids:  # each rank: the vectors of its own users and items; items cut for ranking
        d = m.user_id_dim
        u, i = float(workload.num_users) / n, float(workload.num_items) / n
        own = FLOAT * d * (u + i)
        chunk = min(float(cfg.eval.item_chunk), i)
        fusion_chunk = FLOAT * chunk * (fusion["saved"] + fusion["largest"])
        if gcn:  # layer outputs of the own nodes, and the neighbours' rows fetched for one chunk of a layer (<= the
            # chunk's in-edges; eval.item_chunk users and items): the fetched rows and the all-to-all's receive
            # buffer are alive together (fetch_owned_rows)
            per = float(cfg.eval.item_chunk)
            chunk_edges = e_tr * (min(per, u) / float(workload.num_users) + min(per, i) / float(workload.num_items))
            neighbours = 2 * FLOAT * d * min(nodes, chunk_edges)
            L = m.gcn_layers
            if _sampled_eval(cfg, workload):  # the ranked users' rows only (inference._gcn_for_ranked_users):
                # the users' layers 1 .. L-1 and the items' 0 .. L-2 (layer 0 combined into the final rows), one
                # chunk's item rows of layer L-1, and those of the items the ranked users reach
                reach = float(cfg.eval.max_users) * e_tr / float(workload.num_users)
                tables = FLOAT * d * ((L - 1) * u + max(L - 1, 1) * i + chunk + min(reach, i))
            else:  # layer 0 .. L-1 of every own node (the last layer combined chunk by chunk over layer 0), and
                # a fresh table for the user rows, whose layer 0 is the ID table's own storage
                tables = L * own + FLOAT * d * u
            work = tables + neighbours + fusion_chunk
            add("inference: a chunk's in-edges", 4 * INDEX * chunk_edges, "inference",
                note=f"range_block of {min(per, u):,.0f} users + {min(per, i):,.0f} items, host")
        else:
            work = own + fusion_chunk
        users_chunk = min(float(cfg.eval.user_chunk), float(workload.num_users))
        kmax = float(max(cfg.eval.ks))
        e_ev = float(workload.eval_interactions)
        add("inference: own vectors + GCN layer (sharded)", work, "inference", dev,
            f"{u + i:,.0f} own nodes x {d}")
        ranked = _ranked_fraction(cfg, workload)
        add("inference: building the CSRs", SPLIT_CSR_TRANSIENT_PER_EDGE * e_tr * ranked, "inference",
            note=_ranked_note(ranked))
        add("ranking: own item vectors + a user chunk", FLOAT * d * (i + users_chunk), "ranking", dev)
        add("ranking: exclusion/truth CSRs", INDEX * (e_tr + e_ev) * ranked + 2 * INDEX * float(workload.num_users),
            "ranking")
        add("ranking: score chunks (own items)", SCORE_CHUNKS_ALIVE * FLOAT * users_chunk * i, "ranking", dev,
            f"{SCORE_CHUNKS_ALIVE} x {users_chunk:,.0f} users x {i:,.0f} own items")
        add("ranking: top-K candidates of every rank", 2 * 12 * n * users_chunk * kmax, "ranking", dev,
            f"{n} x {users_chunk:,.0f} x {kmax:.0f} (score, id)")
    elif with_eval:
        d = m.user_id_dim
        u, i = float(workload.num_users), float(workload.num_items)
        vec = FLOAT * d * (u + i)
        chunk = min(float(cfg.eval.item_chunk), i)
        e_ev = float(workload.eval_interactions)
        ranked = _ranked_fraction(cfg, workload)
        csr = INDEX * (e_tr + e_ev) * ranked + 2 * INDEX * u
        fusion_chunk = FLOAT * chunk * (fusion["saved"] + fusion["largest"])
        if gcn:
            # layer-0 vectors, each layer's output and the layer-mean stack (3 x the vectors, measured), one
            # edge chunk of gathered messages (sage_mean), and the heap the chunked fusion pass before it
            # left behind (below glibc's mmap threshold: retained, measured at 100k and 1M items)
            messages = FLOAT * d * min(float(EDGE_CHUNK), e_tr)
            work = 3 * vec + messages + fusion_chunk
        else:
            work = max(vec + FLOAT * d * max(u, i), vec + fusion_chunk)
        users_chunk = min(float(cfg.eval.user_chunk), u)
        add("inference: vectors + full-graph pass", work, "inference", dev, f"{u + i:,.0f} nodes x {d}")
        add("inference: building the CSRs", SPLIT_CSR_TRANSIENT_PER_EDGE * e_tr * ranked, "inference",
            note=_ranked_note(ranked))
        add("ranking: user + item vectors", vec, "ranking", dev)
        add("ranking: exclusion/truth CSRs", csr, "ranking")
        add("ranking: score chunks", SCORE_CHUNKS_ALIVE * FLOAT * users_chunk * i, "ranking", dev,
            f"{SCORE_CHUNKS_ALIVE} x {users_chunk:,.0f} users x {i:,.0f} items")
    if allocator == "glibc":
        # glibc keeps freed blocks below its mmap threshold (dynamic, at most 32 MiB) in its heap: after a few
        # steps the RSS floor holds about RETENTION x the step's small-tensor bytes (measured 0.9-1.9x).
        retained = RETENTION * sum(c.small for c in comps if c.phase == "backward" and c.where == "host")
        add("allocator retention (glibc heap)", retained, "persistent", "host",
            f"{RETENTION:g} x the step's tensors < 32 MiB; none with MALLOC_MMAP_THRESHOLD_=65536")
    return Plan(comps, world_size, zero_stage, offload, device, blocks, workload,
                params={**{k: v for k, v in layout.items() if k != "counts"}, "counts": layout["counts"],
                        "eval_user_chunk": cfg.eval.user_chunk, "id_tables": t.id_tables,
                        "id_optimizer": t.id_optimizer})


def largest_catalog(cfg: Config, workload: Workload, budget_bytes: float, world_size: int = 1, zero_stage: int = 0,
                    offload: bool = False, device: str = "cpu", where: Optional[str] = None,
                    max_items: int = 10**11, **plan_kwargs) -> Optional[Workload]:
    """The largest item count (users and interactions scaled with it) whose per-rank peak fits ``budget_bytes``.

    ``where``: compare only host or only device bytes (e.g. GPU memory); None = everything (CPU runs).
    ``plan_kwargs`` go to ``plan_memory`` (baseline_bytes, ds_config, allocator, ranks_per_node)."""

    def fits(items: int) -> bool:
        wl = workload.scaled(items)
        plan = plan_memory(cfg, wl, world_size, zero_stage, offload, device, **plan_kwargs)
        return plan.peak(where) <= budget_bytes

    lo = 1
    if not fits(lo):
        return None
    hi = max(2, workload.num_items)
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > max_items:
            return workload.scaled(lo)
    while hi - lo > max(1, lo // 1000):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return workload.scaled(lo)


def smallest_world_size(cfg: Config, workload: Workload, budget_bytes: float, zero_stage: int = 0,
                        offload: bool = False, device: str = "cpu", where: Optional[str] = None,
                        max_world_size: int = 1 << 16, **plan_kwargs) -> Optional[int]:
    """The fewest ranks whose per-rank peak fits ``budget_bytes`` (None if even ``max_world_size`` does not):
    doubling, then bisection between the last world size that did not fit and the first that did."""

    def fits(n: int) -> bool:
        batch = max(cfg.train.batch_size, n)  # every rank needs at least one pair per step
        plan_cfg = replace(cfg, train=replace(cfg.train, batch_size=batch))
        return plan_memory(plan_cfg, workload, n, zero_stage, offload, device, **plan_kwargs).peak(where) <= budget_bytes

    hi = 1
    while not fits(hi):
        if hi >= max_world_size:
            return None
        hi = min(hi * 2, max_world_size)
    lo = hi // 2  # does not fit (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def measure_runtime_baseline() -> int:
    """RSS (bytes) of a fresh interpreter after importing what a training process imports (DGL if installed).

    It depends on the machine and even on the page cache: the loader maps more of torch's shared libraries
    when their files are cached (measured: 360 MB after ``import torch`` from a long-idle venv, 498 MB from
    a freshly installed one), which is why ``scale`` measures it once per sweep."""
    import subprocess
    import sys

    code = ("import importlib.util, torch, deepspeed, metammf_dist.train.loop\n"
            "if importlib.util.find_spec('dgl'): import dgl\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(proc.stdout.strip().splitlines()[-1]) * 1024
