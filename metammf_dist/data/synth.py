"""Synthetic catalogs with planted structure (``metammf-dist synth``), streamed in bounded memory.

Generative model (all seeded; the same ``SynthSpec`` gives byte-identical output):

* **Clusters.** K latent clusters (``clusters``; default ``clamp(round(sqrt(items)), 4, 1024)``) with
  centres ``c_k ~ N(0, I_d)`` in ``d = latent_dim`` dimensions and Dirichlet(5) sizes; every cluster holds
  at least one item.
* **Items.** Item i belongs to cluster ``a_i`` with latent vector ``z_i = c_{a_i} + 0.6 * N(0, I_d)``.
  Popularity is Zipf-like: ``pop_i = rank_i ** -zipf`` over a random ranking, independent of the cluster.
* **Features.** Per modality m a fixed random map ``W_m`` (d x dim_m, entries ``N(0, 1/d)``):
  ``x_i = z_i W_m + feature_noise * N(0, I)``.  Features therefore reveal the cluster, never popularity.
* **Users.** User u prefers a primary cluster ``g1_u`` (drawn with the cluster sizes) and a different
  secondary cluster ``g2_u``; activity (interaction count) is ``min(3, E // U)`` plus a multinomial share of
  the rest with log-normal weights (``activity_sigma``), capped at ``items // 2``, summing to exactly E.
* **Interactions.** Each draw of user u picks an item ∝ ``pop_i * exp(affinity(u, i))`` with affinity
  concentrated on the preferred clusters: with probability ``global_frac`` from global popularity, else
  from ``g1_u`` (or ``g2_u`` with probability ``secondary_frac``) ∝ popularity within the cluster - one
  ``searchsorted`` over per-cluster cumulative tables serves all draws at once.  Repeated (user, item) pairs
  are redrawn (for a few rounds, then uniformly) so each user gets exactly their count of distinct items.
* **Splits.** Per user, ``splits.per_user_split`` with ``valid_frac`` / ``test_frac``.  ``cold_frac`` of
  the items (chosen at random) are cold: their train interactions are moved to valid/test, so they can
  only be ranked from features.

**Planted item-specific fusion** (``planted_fusion``, ``synth --planted-fusion``; off by default, and with it
off every byte above is unchanged).  The modalities no longer share one latent; each item carries a gate that
decides how its modalities combine:

* **Modality latents.** Per modality m the item has its own cluster ``a_im`` (drawn with the cluster sizes,
  independently across modalities) and latent ``z_im = c_{a_im} + 0.6 * N(0, I_d)``.
* **Gate.** Logits ``l_i ~ N(0, GATE_SPREAD² I_M)`` over the M modalities, gate ``g_i = softmax(l_i)``.
* **Features.** ``x_im = z_im W_m + GATE_SIGNAL * l_im * u_m + feature_noise * N(0, I)``: modality m shows its
  own latent and, along a fixed random unit direction ``u_m``, its own gate logit, so the gate is a (softmax)
  function of linear readouts of the features.
* **Behaviour.** Item i behaves as the cluster of its dominant modality ``m_i = argmax_m g_im``: its cluster is
  ``a_i = a_{i,m_i}``, and interactions follow ``a_i`` exactly as above (users' clusters drawn with the
  clusters' item shares).  The item latent is ``z_i = Σ_m w_im z_im`` with per-item weights
  ``w_i = onehot(argmax g_i)`` over the modality latents: a multiplicative, item-dependent function of the
  features, in which the gate (read from the features) switches between modality-specific maps - what a meta
  fusion layer ``W_i = M + Σ_k s_ik T_k`` expresses with ``s_i`` tracking the gate, and one static MLP can only
  approximate.  ``Planted.gate`` is the target of the meta-vector probe (``ablation/probe.py``).

Streaming: item features are generated ``item_chunk`` items at a time straight into the feature store;
interactions ``~draw_chunk`` draws at a time straight into Parquet.  Each chunk has its own RNG stream
(``default_rng([seed, stream, chunk])``), so memory is bounded by the chunk sizes plus a few bytes per
item and per user (cluster, popularity tables, activity).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from metammf_dist.data.dataset import DatasetWriter
from metammf_dist.data.splits import SPLIT_CODES, check_fractions, per_user_split
from metammf_dist.errors import DataError

# RNG stream ids (second entry of the seed sequence)
_PLANT, _PROJECTION, _FEATURES, _INTERACTIONS, _GATE = 0, 1, 2, 3, 4
LATENT_NOISE = 0.6
GATE_SPREAD = 1.5  # std of the planted gate logits (planted_fusion)
GATE_SIGNAL = 4.0  # length of a modality's gate-logit direction in its features (planted_fusion)
DEDUPE_ROUNDS = 8  # preference-driven redraw rounds before falling back to uniform fill


@dataclass(frozen=True)
class SynthSpec:
    num_users: int
    num_items: int
    num_interactions: int
    modalities: dict = field(default_factory=lambda: {"image": 128, "text": 384})
    seed: int = 0
    valid_frac: float = 0.1
    test_frac: float = 0.1
    cold_frac: float = 0.0
    dtype: str = "float16"
    clusters: int = 0  # 0 = auto
    latent_dim: int = 16
    zipf: float = 0.9
    global_frac: float = 0.1
    secondary_frac: float = 0.25
    activity_sigma: float = 1.0
    feature_noise: float = 1.0
    planted_fusion: bool = False  # items carry a gate over their modalities (module docstring)
    item_chunk: int = 16384
    draw_chunk: int = 1 << 20

    def validate(self) -> None:
        for name in ("num_users", "num_items", "num_interactions", "latent_dim", "item_chunk", "draw_chunk"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"synth: {name} must be >= 1, got {getattr(self, name)}")
        if not self.modalities:
            raise DataError("synth: give at least one --modality NAME:DIM")
        for name, dim in self.modalities.items():
            if not name or int(dim) < 1:
                raise DataError(f"synth: modality {name!r} needs a name and a dim >= 1, got {dim}")
        check_fractions(self.valid_frac, self.test_frac)
        if not 0.0 <= self.cold_frac < 1.0:
            raise DataError(f"synth: cold_frac must be in [0, 1), got {self.cold_frac}")
        if self.cold_frac > 0 and self.valid_frac + self.test_frac == 0:
            raise DataError("synth: cold_frac > 0 needs valid_frac or test_frac > 0 (cold items live there)")
        if self.dtype not in ("float16", "float32"):
            raise DataError(f"synth: dtype {self.dtype!r} not supported; use float16 or float32")
        cap = max(1, self.num_items // 2)
        if self.num_interactions > self.num_users * cap:
            raise DataError(f"synth: {self.num_interactions:,} interactions do not fit {self.num_users:,} users x "
                            f"{self.num_items:,} items (at most {cap:,} distinct items per user)")
        for name in ("global_frac", "secondary_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DataError(f"synth: {name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def num_clusters(self) -> int:
        k = self.clusters or int(np.clip(round(np.sqrt(self.num_items)), 4, 1024))
        return max(1, min(k, self.num_items))


@dataclass
class Planted:
    """The hidden structure: per item cluster/popularity/cold flag, per user clusters/activity."""

    centers: np.ndarray  # [K, d] float64
    item_cluster: np.ndarray  # [I] int32
    popularity: np.ndarray  # [I] float64, sums to 1
    cold: np.ndarray  # [I] bool
    user_primary: np.ndarray  # [U] int32
    user_secondary: np.ndarray  # [U] int32
    activity: np.ndarray  # [U] int64, sums to num_interactions
    projections: dict  # modality -> [d, dim] float32
    # sampling tables
    global_cum: np.ndarray  # [I] cumulative popularity
    by_cluster: np.ndarray  # [I] item ids sorted by cluster
    cluster_key: np.ndarray  # [I] cluster + within-cluster cumulative share, in by_cluster order
    # planted_fusion only (else None)
    modality_cluster: Optional[np.ndarray] = None  # [I, M] int32: a_im
    gate_logits: Optional[np.ndarray] = None  # [I, M] float64: l_i
    gate: Optional[np.ndarray] = None  # [I, M] float64: softmax(l_i), the planted gate
    gate_directions: Optional[dict] = None  # modality -> [dim] float32 unit vector u_m


def plant(spec: SynthSpec) -> Planted:
    """Draw the hidden structure of ``spec`` (deterministic in ``spec.seed``)."""
    spec.validate()
    rng = np.random.default_rng([spec.seed, _PLANT])
    n_items, n_users, k, d = spec.num_items, spec.num_users, spec.num_clusters, spec.latent_dim
    centers = rng.standard_normal((k, d))
    sizes = rng.dirichlet(np.full(k, 5.0))
    # every cluster gets one item, the rest by the cluster sizes; then shuffle item order
    clusters = np.concatenate([np.arange(k), rng.choice(k, size=n_items - k, p=sizes)])
    item_cluster = rng.permutation(clusters).astype(np.int32)
    popularity = (rng.permutation(n_items) + 1.0) ** -spec.zipf
    popularity /= popularity.sum()
    cold = np.zeros(n_items, dtype=bool)
    n_cold = int(round(spec.cold_frac * n_items))
    if n_cold:
        cold[rng.choice(n_items, size=n_cold, replace=False)] = True
    user_primary = rng.choice(k, size=n_users, p=sizes).astype(np.int32)
    if k > 1:
        user_secondary = ((user_primary + 1 + rng.integers(0, k - 1, size=n_users)) % k).astype(np.int32)
    else:
        user_secondary = user_primary.copy()
    activity = _draw_activity(spec, rng)

    projections = {}
    for m, (name, dim) in enumerate(spec.modalities.items()):
        prng = np.random.default_rng([spec.seed, _PROJECTION, m])
        projections[name] = (prng.standard_normal((d, int(dim))) / np.sqrt(d)).astype(np.float32)
    gated = {}
    if spec.planted_fusion:
        gated = _plant_gate(spec, sizes)
        item_cluster = gated["item_cluster"]
        user_primary, user_secondary = gated["user_primary"], gated["user_secondary"]

    by_cluster = np.argsort(item_cluster, kind="stable")
    sorted_cluster = item_cluster[by_cluster]
    pop_sorted = popularity[by_cluster]
    cum = np.cumsum(pop_sorted)
    cluster_total = np.bincount(sorted_cluster, weights=pop_sorted, minlength=k)
    cluster_start = np.concatenate([[0.0], np.cumsum(cluster_total)[:-1]])
    share = (cum - cluster_start[sorted_cluster]) / cluster_total[sorted_cluster]
    last = np.r_[sorted_cluster[1:] != sorted_cluster[:-1], True]
    share[last] = 1.0  # exact upper edge per cluster: no draw can spill into the next cluster
    cluster_key = sorted_cluster + share
    global_cum = np.cumsum(popularity)
    global_cum[-1] = 1.0
    return Planted(centers=centers, item_cluster=item_cluster, popularity=popularity, cold=cold,
                   user_primary=user_primary, user_secondary=user_secondary, activity=activity,
                   projections=projections, global_cum=global_cum, by_cluster=by_cluster, cluster_key=cluster_key,
                   modality_cluster=gated.get("modality_cluster"), gate_logits=gated.get("gate_logits"),
                   gate=gated.get("gate"), gate_directions=gated.get("gate_directions"))


def _plant_gate(spec: SynthSpec, sizes: np.ndarray) -> dict:
    """The planted-fusion structure (module docstring), from a stream of its own: modality clusters, gate
    logits and gate, each item's behavioural cluster, users' clusters drawn with the clusters' item shares,
    and the gate directions ``u_m``."""
    rng = np.random.default_rng([spec.seed, _GATE])
    n_items, n_users, k = spec.num_items, spec.num_users, spec.num_clusters
    n_mod = len(spec.modalities)
    modality_cluster = rng.choice(k, size=(n_items, n_mod), p=sizes).astype(np.int32)
    logits = GATE_SPREAD * rng.standard_normal((n_items, n_mod))
    gate = np.exp(logits - logits.max(1, keepdims=True))
    gate /= gate.sum(1, keepdims=True)
    chosen = gate.argmax(1)  # the dominant modality decides the behaviour
    item_cluster = modality_cluster[np.arange(n_items), chosen].astype(np.int32)
    share = np.bincount(item_cluster, minlength=k) / n_items
    user_primary = rng.choice(k, size=n_users, p=share).astype(np.int32)
    user_secondary = user_primary.copy()
    if int((share > 0).sum()) > 1:  # a different non-empty cluster
        other = np.broadcast_to(share, (n_users, k)).copy()
        other[np.arange(n_users), user_primary] = 0.0
        cum = np.cumsum(other, 1)
        pick = rng.random(n_users) * cum[:, -1]
        user_secondary = (pick[:, None] >= cum).sum(1).clip(max=k - 1).astype(np.int32)
    directions = {}
    for m, (name, dim) in enumerate(spec.modalities.items()):
        u = np.random.default_rng([spec.seed, _GATE, 1 + m]).standard_normal(int(dim))
        directions[name] = (u / np.linalg.norm(u)).astype(np.float32)
    return {"modality_cluster": modality_cluster, "gate_logits": logits, "gate": gate, "item_cluster": item_cluster,
            "user_primary": user_primary, "user_secondary": user_secondary, "gate_directions": directions}


def _draw_activity(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Per-user interaction counts: a floor of min(3, E // U) plus a log-normal-weighted multinomial share,
    capped at items // 2 (excess re-dealt to users below the cap); sums to exactly E."""
    n_users, total = spec.num_users, spec.num_interactions
    cap = max(1, spec.num_items // 2)
    floor = min(3, total // n_users, cap)
    weights = rng.lognormal(0.0, spec.activity_sigma, size=n_users)
    counts = floor + rng.multinomial(total - floor * n_users, weights / weights.sum()).astype(np.int64)
    while True:
        over = counts > cap
        if not over.any():
            return counts
        excess = int((counts[over] - cap).sum())
        counts[over] = cap
        room = np.where(counts < cap, weights, 0.0)
        counts += rng.multinomial(excess, room / room.sum())


# ---------------------------------------------------------------------------- features
def item_features(spec: SynthSpec, planted: Planted, lo: int, hi: int) -> dict:
    """Feature rows of items ``[lo, hi)`` (float32), from the chunk's own RNG stream: rows depend only on the
    spec and ``lo`` (a multiple of ``item_chunk``), so chunks can be generated in any order."""
    rng = np.random.default_rng([spec.seed, _FEATURES, lo // spec.item_chunk])
    n = hi - lo
    if planted.gate is not None:
        return _gated_features(spec, planted, lo, hi, rng)
    z = planted.centers[planted.item_cluster[lo:hi]].astype(np.float32)
    z += LATENT_NOISE * rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
    out = {}
    for name, w in planted.projections.items():
        x = z @ w
        x += spec.feature_noise * rng.standard_normal(x.shape, dtype=np.float32)
        out[name] = x
    return out


def _gated_features(spec: SynthSpec, planted: Planted, lo: int, hi: int, rng: np.random.Generator) -> dict:
    """planted_fusion: ``x_im = z_im W_m + GATE_SIGNAL * l_im * u_m + noise`` (module docstring)."""
    out = {}
    for m, (name, w) in enumerate(planted.projections.items()):
        z = planted.centers[planted.modality_cluster[lo:hi, m]].astype(np.float32)
        z += LATENT_NOISE * rng.standard_normal((hi - lo, spec.latent_dim), dtype=np.float32)
        x = z @ w
        x += (GATE_SIGNAL * planted.gate_logits[lo:hi, m:m + 1]).astype(np.float32) * planted.gate_directions[name]
        x += spec.feature_noise * rng.standard_normal(x.shape, dtype=np.float32)
        out[name] = x
    return out


def feature_chunks(spec: SynthSpec, planted: Planted):
    for lo in range(0, spec.num_items, spec.item_chunk):
        yield item_features(spec, planted, lo, min(lo + spec.item_chunk, spec.num_items))


# ---------------------------------------------------------------------------- interactions
def _draw_preferred(spec: SynthSpec, planted: Planted, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``users``: global popularity with prob. global_frac, else the primary (or,
    with prob. secondary_frac, the secondary) cluster, ∝ popularity within it."""
    n_items = spec.num_items
    t = users.size
    pick = rng.random(t)
    where = rng.random(t)
    items = np.empty(t, dtype=np.int64)
    glob = pick < spec.global_frac
    items[glob] = np.minimum(np.searchsorted(planted.global_cum, where[glob], side="right"), n_items - 1)
    local = ~glob
    secondary = pick[local] >= spec.global_frac + (1.0 - spec.global_frac) * (1.0 - spec.secondary_frac)
    cluster = np.where(secondary, planted.user_secondary[users[local]], planted.user_primary[users[local]])
    pos = np.searchsorted(planted.cluster_key, cluster + where[local], side="right")
    items[local] = planted.by_cluster[np.minimum(pos, n_items - 1)]
    return items


def user_interactions(spec: SynthSpec, planted: Planted, lo: int, hi: int, chunk_index: int):
    """Distinct (user, item) pairs and split codes for users ``[lo, hi)``, sorted by (user, item)."""
    rng = np.random.default_rng([spec.seed, _INTERACTIONS, chunk_index])
    n_items = spec.num_items
    want = planted.activity[lo:hi]
    need = want.copy()
    keys = np.zeros(0, dtype=np.int64)
    for round_ in range(10_000):
        if not need.any():
            break
        users = lo + np.repeat(np.arange(hi - lo), need)
        if round_ < DEDUPE_ROUNDS:
            items = _draw_preferred(spec, planted, users, rng)
        else:  # heavy users saturated their clusters: fill with uniformly random items
            items = rng.integers(0, n_items, size=users.size)
        keys = np.union1d(keys, users * n_items + items)
        need = want - np.bincount(keys // n_items - lo, minlength=hi - lo)
    else:  # pragma: no cover - cannot happen while activity <= items // 2
        raise DataError(f"synth: could not draw distinct items for users [{lo}, {hi})")
    users, items = keys // n_items, keys % n_items
    splits = per_user_split(want, spec.valid_frac, spec.test_frac, rng)
    if planted.cold.any():
        move = planted.cold[items] & (splits == SPLIT_CODES["train"])
        to_valid = rng.random(int(move.sum())) < spec.valid_frac / (spec.valid_frac + spec.test_frac)
        splits[move] = np.where(to_valid, SPLIT_CODES["valid"], SPLIT_CODES["test"]).astype(np.int8)
    return users, items, splits


def user_chunks(spec: SynthSpec, planted: Planted) -> list[tuple[int, int]]:
    """User ranges holding about ``draw_chunk`` interactions each (at least one user per range)."""
    ends = np.cumsum(planted.activity)
    bounds = [0]
    while bounds[-1] < spec.num_users:
        start = bounds[-1]
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + spec.draw_chunk, side="right"))
        bounds.append(min(max(stop, start + 1), spec.num_users))
    return list(zip(bounds[:-1], bounds[1:]))


# ---------------------------------------------------------------------------- writing
def generate(spec: SynthSpec, out, *, shard_size: int = 65536, overwrite: bool = False,
             storage_options: Optional[dict] = None) -> dict:
    """Write the synthetic catalog of ``spec`` as a canonical dataset at ``out``; returns ``dataset.json``."""
    planted = plant(spec)
    source = {"format": "synth", **{k: v for k, v in asdict(spec).items() if k not in ("item_chunk", "draw_chunk")},
              "num_clusters": spec.num_clusters, "cold_items": int(planted.cold.sum())}
    with DatasetWriter(out, num_users=spec.num_users, num_items=spec.num_items, modalities=spec.modalities,
                       dtype=spec.dtype, shard_size=shard_size, storage_options=storage_options,
                       overwrite=overwrite) as writer:
        for chunk in feature_chunks(spec, planted):
            writer.add_features(chunk)
        for index, (lo, hi) in enumerate(user_chunks(spec, planted)):
            writer.add_interactions(*user_interactions(spec, planted, lo, hi, index))
        return writer.commit(source=source, split_seed=int(spec.seed))


def ensure_generated(spec: SynthSpec, out) -> str:
    """The local folder ``out`` holding the catalog of ``spec``: reused when its ``dataset.json`` records this very
    spec, else generated (replacing whatever was there)."""
    import json
    import shutil
    from pathlib import Path

    out = Path(out)
    meta = out / "dataset.json"
    if meta.is_file():
        source = json.loads(meta.read_text()).get("source", {})
        wanted = {k: v for k, v in asdict(spec).items() if k not in ("item_chunk", "draw_chunk")}
        if all(source.get(k, False) == v if k == "planted_fusion" else source.get(k) == v  # older catalogs: off
               for k, v in wanted.items()):
            return str(out)
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    generate(spec, str(out))
    return str(out)
