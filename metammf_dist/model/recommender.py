"""MetaMMF recommender: user and item vectors (ID embeddings + meta-learned fusion) and a scorer.

    item vector  v_i = fusion(x_i) ⊕ e_i      (fusion out dim + item_id_dim = D)
    user vector  v_u = e_u                    (user_id_dim = D)
    score(u, i)  = <v_u', v_i'>               (v' = v for MF, the GCN's output for the GCN scorer)

Cold items: an item with no train interaction (``set_train_items``) and an id ≥ ``num_items`` (a new item) have
no trained ID row; both get their fusion part plus the mean of the TRAINED ID rows, everywhere (training, the
item kNN graph, inference).  The mean, not the item's own row: an untrained row is its random initial draw
(pushed around only by weight decay), noise that would rank cold items at random against each other; the mean
trained row puts every cold item at the same ID offset, so cold items are ranked by their features alone,
and against warm items with the catalog's average ID part.  (``model.fusion=none`` has no features: there all
cold items tie.)

``model.fusion=none`` (the ID-only ablation): no fusion and no meta-learner; the item vector is the ID row alone
(``item_id_dim`` = ``user_id_dim``).

Initial ID rows come from their own generator (``reset_id_rows``, seeded with ``train.seed`` by the trainer):
user rows first, then item rows, so runs of one seed start from the same ID rows whatever the fusion kind.

One training entry point for both scorers, ``forward_blocks(blocks, input_users, input_items,
input_item_feats)``: the inputs are the (global) ids of the src nodes of ``blocks[0]`` — per node type —
and the features of those items; the result covers the dst nodes of ``blocks[-1]``.  The MF scorer does
no message passing: since DGL dst nodes are a prefix of the src nodes in every block, it simply keeps
the first ``blocks[-1].num_dst_nodes(ntype)`` inputs (or all inputs when ``blocks`` is empty/None) and
computes only their vectors.  ``forward_graph`` is the full-graph counterpart for inference.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from metammf_dist.config import ModelConfig
from metammf_dist.model.registry import build_fusion, build_scorer


class ColdStartEmbedding(nn.Embedding):
    """ID table whose cold ids read the mean of the trained rows: ids ≥ ``num_embeddings`` (new items) and ids whose
    ``trained`` flag is off (items with no train interaction; every flag is on until ``set_trained`` says otherwise).

    The mean is taken inside this module's own ``forward``, so wrappers that gather a module's
    parameters around its forward (e.g. ZeRO stage 3) see the whole table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, _weight: Optional[torch.Tensor] = None):
        super().__init__(num_embeddings, embedding_dim, _weight=_weight)
        self.register_buffer("trained", torch.ones(num_embeddings, dtype=torch.bool))

    def set_trained(self, ids) -> None:
        """Rows ``ids`` are trained (e.g. the items of the train interactions); every other row is cold."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(f"set_trained: ids outside 0..{self.num_embeddings - 1}")
        if ids.numel() == 0:
            raise ValueError("set_trained: no trained row (no train interaction)")
        mask = torch.zeros_like(self.trained)
        mask[ids.to(mask.device)] = True
        self.trained.copy_(mask)

    def trained_mean(self) -> torch.Tensor:
        """The mean of the trained rows, ``[embedding_dim]``."""
        if bool(self.trained.all()):
            return self.weight.mean(0)
        weight = self.trained.to(self.weight.dtype).unsqueeze(1)
        return (self.weight * weight).sum(0) / weight.sum()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        in_range = ids < self.num_embeddings
        if ids.numel() == 0 or (bool(in_range.all()) and bool(self.trained[ids].all())):
            return super().forward(ids)
        safe = torch.where(in_range, ids, torch.zeros_like(ids))
        known = in_range & self.trained[safe]
        rows = super().forward(safe)
        # the mean carries no gradient: a cold item trains nothing (and sparse ID tables get row gradients only)
        return torch.where(known.unsqueeze(-1), rows, self.trained_mean().detach().expand_as(rows))


ID_INIT_BLOCK = 65536  # rows per independently seeded block of model.id_init=blocks
ID_TABLES = {"user_emb": 0, "item_emb": 1}


def init_id_rows(lo: int, hi: int, dim: int, seed: int, table: int, std: float) -> torch.Tensor:
    """Rows ``[lo, hi)`` of an ID table under ``model.id_init=blocks``: ``N(0, std^2)`` drawn per block of
    ``ID_INIT_BLOCK`` rows from a generator seeded by (seed, table, block), so any range of rows can be made
    alone — the same values whichever process, placement or world size makes them."""
    out = torch.empty(max(hi - lo, 0), dim)
    for block in range(lo // ID_INIT_BLOCK, -(-hi // ID_INIT_BLOCK)):
        start = block * ID_INIT_BLOCK
        state = np.random.SeedSequence([int(seed), int(table), block]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        rows = torch.randn(ID_INIT_BLOCK, dim, generator=gen).mul_(std)
        a, b = max(lo, start), min(hi, start + ID_INIT_BLOCK)
        out[a - lo:b - lo] = rows[a - start:b - start]
    return out


class MetaMMFRecommender(nn.Module):
    """Parts, as attributes (grouped by ``summary.parameter_counts``): ``fusion`` (with
    ``fusion.meta_learner``, also reachable as ``meta_learner``; ``None`` for ``model.fusion=none``),
    ``user_emb``, ``item_emb``, and ``gcn`` (``None`` for the MF scorer).

    ``model.id_init``: ``normal`` draws the ID rows ~ N(0, id_init_std²), redrawn by ``reset_id_rows`` from a
    generator of their own (the training loop seeds it with ``train.seed`` alone, so every fusion kind starts
    from the same ID rows); ``blocks`` draws them with ``init_id_rows`` from a seed taken when the model is built (torch's
    initial seed), without touching the global generator.  ``id_device="meta"`` leaves the ID tables
    unallocated (``blocks`` only): row-sharded tables then hold the rows (``distributed/sharded_ids.py``)."""

    def __init__(self, cfg: ModelConfig, num_users: int, num_items: int, feat_dim: int,
                 id_device: Optional[str] = None):
        super().__init__()
        fusion_out = 0 if cfg.fusion == "none" else cfg.fusion_dims[-1]
        if fusion_out + cfg.item_id_dim != cfg.user_id_dim:
            raise ValueError(
                f"model.user_id_dim must equal the fusion output + model.item_id_dim "
                f"({fusion_out} + {cfg.item_id_dim}), got {cfg.user_id_dim}"
            )
        if num_users <= 0 or num_items <= 0 or feat_dim <= 0:
            raise ValueError(f"need positive sizes, got users={num_users} items={num_items} feat_dim={feat_dim}")
        self.cfg = cfg
        self.num_users, self.num_items, self.feat_dim = num_users, num_items, feat_dim
        self.dim = cfg.user_id_dim
        self.fusion = None if cfg.fusion == "none" else build_fusion(cfg, feat_dim)
        if cfg.id_init == "blocks":
            self.id_seed = torch.initial_seed()
            sizes = {"item_emb": (num_items, cfg.item_id_dim), "user_emb": (num_users, cfg.user_id_dim)}
            weights = {name: (torch.empty(n, d, device="meta") if id_device == "meta"
                              else self.init_id_rows(name, 0, n)) for name, (n, d) in sizes.items()}
            self.item_emb = ColdStartEmbedding(num_items, cfg.item_id_dim, _weight=weights["item_emb"])
            self.user_emb = nn.Embedding(num_users, cfg.user_id_dim, _weight=weights["user_emb"])
        else:
            if id_device == "meta":
                raise ValueError("id_device='meta' needs model.id_init=blocks")
            self.item_emb = ColdStartEmbedding(num_items, cfg.item_id_dim)
            self.user_emb = nn.Embedding(num_users, cfg.user_id_dim)
            nn.init.normal_(self.item_emb.weight, std=cfg.id_init_std)
            nn.init.normal_(self.user_emb.weight, std=cfg.id_init_std)
        self.gcn: Optional[nn.Module] = build_scorer(cfg)
        if cfg.feature_norm == "standardize":  # filled by set_feature_stats from the dataset
            self.register_buffer("feat_mean", torch.zeros(feat_dim))
            self.register_buffer("feat_std", torch.ones(feat_dim))
        if cfg.scorer == "gcn" and cfg.gcn_type == "light":  # filled by set_degrees from the train graph
            self.register_buffer("user_inv_sqrt_deg", torch.ones(num_users))
            self.register_buffer("item_inv_sqrt_deg", torch.ones(num_items))
        if cfg.item_knn > 0:  # filled by set_item_graph from the dataset (until then: each item its own neighbour)
            self.register_buffer("knn_index", torch.arange(num_items).unsqueeze(1).repeat(1, cfg.item_knn))

    @torch.no_grad()
    def reset_id_rows(self, generator: torch.Generator) -> None:
        """Draw the user rows, then the item rows, ~ N(0, id_init_std²) from ``generator`` (float32 draws, so a
        seed gives the same rows in any parameter dtype)."""
        for table in (self.user_emb, self.item_emb):
            rows = torch.randn(tuple(table.weight.shape), generator=generator) * self.cfg.id_init_std
            table.weight.copy_(rows.to(table.weight.dtype))

    def set_train_items(self, train_items) -> None:
        """The items with a train interaction; every other item is cold (its ID part: the mean trained row)."""
        ids = torch.as_tensor(train_items, dtype=torch.long).reshape(-1)
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError(f"set_train_items: negative item id {int(ids.min())}")
        # a count per item, not a sort of the pairs: the 80M pairs of a 10M catalog need 80 MB here, not ~1.3 GB
        counts = torch.bincount(ids, minlength=self.num_items)
        self.item_emb.set_trained(counts.nonzero().squeeze(1))

    def init_id_rows(self, name: str, lo: int, hi: int) -> torch.Tensor:
        """Rows ``[lo, hi)`` of ID table ``name`` ("user_emb" / "item_emb") as ``model.id_init=blocks`` draws them."""
        dim = self.cfg.user_id_dim if name == "user_emb" else self.cfg.item_id_dim
        return init_id_rows(lo, hi, dim, self.id_seed, ID_TABLES[name], self.cfg.id_init_std)

    @property
    def param_dtype(self) -> torch.dtype:
        """The dense parameters' dtype (bf16 under a bf16 DeepSpeed engine); ID rows held outside are cast to it."""
        for name, tensor in self.named_parameters():
            if name.split(".", 1)[0] not in ID_TABLES:
                return tensor.dtype
        for tensor in self.parameters():  # no dense parameter (model.fusion=none, MF scorer): the ID tables' dtype
            return tensor.dtype
        return torch.float32

    @property
    def param_device(self) -> torch.device:
        """Where the dense parameters live (the ID tables may be held elsewhere)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def as_input_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """ID rows read from tables held outside the engine (sparse / sharded, fp32) as layer-0 inputs: on the
        dense parameters' device, in their dtype (bf16 under a bf16 engine).  Every layer-0 reader goes through
        here: ``user_vectors``, ``item_id_rows``, the sharded evaluation and the layer histories' refresh."""
        return rows.to(device=self.param_device, dtype=self.param_dtype)

    def set_feature_stats(self, mean, std) -> None:
        """Per-dim input statistics for ``feature_norm: standardize`` (x -> (x - mean) / std)."""
        if not hasattr(self, "feat_mean"):
            raise ValueError("set_feature_stats needs model.feature_norm=standardize")
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=self.feat_mean.dtype))
        self.feat_std.copy_(torch.as_tensor(std, dtype=self.feat_std.dtype))

    def set_item_graph(self, index) -> None:
        """Each item's ``model.item_knn`` nearest items by features (``[num_items, k]`` ids; ``data/item_knn.py``)."""
        if not hasattr(self, "knn_index"):
            raise ValueError("set_item_graph needs model.item_knn > 0")
        index = torch.as_tensor(index, dtype=torch.long)
        if tuple(index.shape) != tuple(self.knn_index.shape):
            raise ValueError(f"set_item_graph: index of shape {tuple(index.shape)}, expected {tuple(self.knn_index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_items):
            raise ValueError(f"set_item_graph: neighbour ids outside 0..{self.num_items - 1}")
        self.knn_index.copy_(index)

    def set_degrees(self, train_users, train_items) -> None:
        """Train-graph degrees for ``model.gcn_type=light`` (from the train interactions; degree 0 counts as 1)."""
        if not hasattr(self, "user_inv_sqrt_deg"):
            raise ValueError("set_degrees needs model.scorer=gcn and model.gcn_type=light")
        for ids, buf, n in ((train_users, self.user_inv_sqrt_deg, self.num_users),
                            (train_items, self.item_inv_sqrt_deg, self.num_items)):
            degree = torch.bincount(torch.as_tensor(ids, dtype=torch.long), minlength=n)
            if degree.numel() != n:
                raise ValueError(f"set_degrees: ids up to {degree.numel() - 1} for {n} nodes")
            buf.copy_(degree.clamp(min=1).to(buf.dtype).rsqrt())

    def inv_sqrt_degree(self, users: Optional[torch.Tensor] = None, items: Optional[torch.Tensor] = None):
        """``1/sqrt(train degree)`` ``{"user": ..., "item": ...}`` of the given nodes (all when None) for the light
        GCN, else None."""
        if not hasattr(self, "user_inv_sqrt_deg"):
            return None
        u, i = self.user_inv_sqrt_deg, self.item_inv_sqrt_deg
        return {"user": u if users is None else u[users.to(u.device)],
                "item": i if items is None else i[items.to(i.device)]}

    def propagate_graph(self, g, vectors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The GCN over the whole graph ``g`` from layer-0 ``vectors`` of every node (MF: unchanged)."""
        if self.gcn is None:
            return vectors
        return self.gcn.forward_graph(g, vectors, self.inv_sqrt_degree())

    def _knn_lookup(self, item_ids: torch.Tensor, own: bool):
        """ONE lookup of the ID table for ``item_ids``' neighbours (and the items' own rows when ``own``):
        -> (own rows or None, neighbours' mean ID row).  One call of the table per use: one gather under ZeRO-3.
        (Two back-to-back calls had given wrong values at stage 3 on CPU, before ``complete_async_all_gathers``
        fixed DeepSpeed's unfinished gloo all-gathers, their likely cause.)"""
        ids = item_ids.to(self.knn_index.device)
        known = ids < self.num_items
        neighbours = self.knn_index[torch.where(known, ids, torch.zeros_like(ids))]
        n, k = neighbours.shape
        lookup = torch.cat([ids, neighbours.reshape(-1)]) if own else neighbours.reshape(-1)
        rows = self.item_emb(lookup.to(self.param_device))
        mean = rows[n if own else 0:].reshape(n, k, -1).mean(1) * known.unsqueeze(1).to(rows.dtype)
        return (rows[:n] if own else None), mean

    def knn_mean(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``[n, item_id_dim]``: the mean ID row of each item's k nearest items (``model.item_knn``; one step
        of propagation over the item–item graph).  The neighbours' ID rows get gradients.  Cold-start ids
        (≥ num_items) have no neighbours: zeros."""
        return self._knn_lookup(item_ids, own=False)[1]

    def item_id_rows(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The ID part of layer-0 item vectors: the ID row, plus ``knn_mean`` with ``model.item_knn_at=input``."""
        if self.cfg.item_knn > 0 and self.cfg.item_knn_at == "input":
            own, mean = self._knn_lookup(item_ids, own=True)
            return self.as_input_rows(own + mean)
        return self.as_input_rows(self.item_emb(item_ids.to(self.param_device)))

    def item_graph_term(self, item_ids: torch.Tensor) -> torch.Tensor:
        """``[n, D]``: zeros over the fusion part ⊕ ``knn_mean`` (what ``model.item_knn_at=output`` adds to the
        scorer's item vectors, as FREEDOM adds its item–item graph's output)."""
        rows = self.knn_mean(item_ids)
        return torch.cat([rows.new_zeros(rows.shape[0], self.dim - rows.shape[1]), rows], dim=1)

    def add_item_graph(self, vectors: Dict[str, torch.Tensor], item_ids: torch.Tensor,
                       chunk_size: int = 1 << 16) -> Dict[str, torch.Tensor]:
        """``vectors`` with ``item_graph_term`` added to ``vectors["item"]`` (whose rows are the leading
        ``item_ids``) when ``model.item_knn`` is on at the output, ``chunk_size`` items at a time; else unchanged."""
        if self.cfg.item_knn <= 0 or self.cfg.item_knn_at != "output":
            return vectors
        ids = item_ids[: vectors["item"].shape[0]]
        terms = [self.item_graph_term(ids[lo:lo + chunk_size]) for lo in range(0, ids.shape[0], chunk_size)]
        return {**vectors, "item": vectors["item"] + torch.cat(terms)} if terms else vectors

    @property
    def fusion_out_dim(self) -> int:
        """Width of the fusion part of an item vector (``model.fusion_dims[-1]``; 0 for ``model.fusion=none``)."""
        return 0 if self.fusion is None else self.cfg.fusion_dims[-1]

    @property
    def meta_learner(self) -> Optional[nn.Module]:
        return None if self.fusion is None else self.fusion.meta_learner

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """Features as the fusion reads them: ``(feats - mean) / std`` with ``feature_norm: standardize``, on the
        dense parameters' device and in their dtype; the standardisation itself runs in at least fp32 (the
        statistics are fp32 buffers, also under bf16)."""
        dtype = self.param_dtype
        exact = dtype if dtype.itemsize >= 4 else torch.float32
        feats = feats.to(device=self.param_device, dtype=exact)
        if hasattr(self, "feat_mean"):
            feats = (feats - self.feat_mean.to(exact)) / self.feat_std.to(exact)
        return feats.to(dtype)

    def meta_vectors(self, feats: torch.Tensor) -> torch.Tensor:
        """The items' meta vectors ``s_i`` ``[n, meta_dim]`` (fusion kinds with a meta-learner only)."""
        if self.meta_learner is None:
            raise ValueError(f"model.fusion={self.cfg.fusion} has no meta-learner")
        return self.meta_learner(self.normalize(feats))

    # ---- vectors -------------------------------------------------------------------------------
    def fuse(self, feats: torch.Tensor) -> torch.Tensor:
        """The fusion part of item vectors: ``fusion((feats - mean) / std)`` -> ``[n, fusion_dims[-1]]``
        (``[n, 0]`` for ``model.fusion=none``)."""
        if self.fusion is None:
            return torch.zeros(feats.shape[0], 0, device=self.param_device, dtype=self.param_dtype)
        return self.fusion(self.normalize(feats))

    def item_vectors(self, item_ids: torch.Tensor, feats: torch.Tensor,
                     fused_rest: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[n, D]`` = fusion(feats) ⊕ ID row; cold items get the mean trained ID row.

        ``fused_rest`` (fusion cache): precomputed fusion outputs of the items after the ``feats`` rows, used as
        they are (no gradient reaches the fusion through them); the ID rows of all ids stay live."""
        n_rest = 0 if fused_rest is None else fused_rest.shape[0]
        if feats.shape[0] + n_rest != item_ids.shape[0]:
            raise ValueError(f"item_vectors: {item_ids.shape[0]} ids but {feats.shape[0]} feature rows"
                             + (f" + {n_rest} cached fusion rows" if n_rest else ""))
        fused = self.fuse(feats)
        if fused_rest is not None:
            fused = torch.cat([fused, fused_rest.detach().to(device=fused.device, dtype=fused.dtype)])
        return torch.cat([fused, self.item_id_rows(item_ids.to(self.param_device))], dim=1)

    def user_vectors(self, user_ids: torch.Tensor) -> torch.Tensor:
        return self.as_input_rows(self.user_emb(user_ids.to(self.param_device)))

    # ---- scorer passes -------------------------------------------------------------------------
    def forward_blocks(
        self,
        blocks: Optional[Sequence],
        input_users: torch.Tensor,
        input_items: torch.Tensor,
        input_item_feats: torch.Tensor,
        cached_fusion: Optional[torch.Tensor] = None,
        neighbor_history: Optional[Sequence[Dict[str, torch.Tensor]]] = None,
    ) -> Dict[str, object]:
        """Vectors of the dst nodes of ``blocks[-1]``: ``{"user": [n_dst_user, D], "item": [n_dst_item, D]}``.

        ``input_users`` / ``input_items``: global ids of ``blocks[0]``'s src nodes per type (in block
        order); ``input_item_feats``: their multimodal features.  MF: see the module docstring.

        Rows a big-catalog strategy supplies (``metammf_dist/strategies``), GCN scorer only:
        ``cached_fusion``: ``input_item_feats`` covers only the first rows of ``input_items`` (the seed items,
        exact fusion) and ``cached_fusion`` gives the fusion outputs of the remaining (neighbour) items, read
        without gradient.  ``neighbor_history`` (with ``cached_fusion``): ``blocks`` is ONE sampled hop; the
        neighbours' layer-0 vectors (cached fusion ⊕ ID row) and their layer-1..L-1 vectors (these history
        rows) carry no gradient; only the seeds' ID rows and fusion get gradients (``GCN.forward_history``).
        With either, the result also holds ``"fresh"``: the seeds' exact rows, detached, for the strategy to
        write back (``{"fusion": [n_seed_items, F]}``, or ``{"hidden": [per layer 0..L-1 {ntype: rows}]}``).
        """
        fresh = None
        if self.gcn is None:
            if cached_fusion is not None or neighbor_history is not None:
                raise ValueError("forward_blocks: cached_fusion / neighbor_history need the GCN scorer "
                                 "(MF has no neighbour items)")
            if blocks:
                n_user = blocks[-1].num_dst_nodes("user")
                n_item = blocks[-1].num_dst_nodes("item")
                input_users, input_items = input_users[:n_user], input_items[:n_item]
                input_item_feats = input_item_feats[:n_item]
            vectors = {"user": self.user_vectors(input_users), "item": self.item_vectors(input_items, input_item_feats)}
        elif neighbor_history is not None:
            vectors, hidden = self._forward_history(blocks, input_users, input_items, input_item_feats, cached_fusion,
                                                    neighbor_history)
            fresh = {"hidden": hidden}
        else:
            items = self.item_vectors(input_items, input_item_feats, fused_rest=cached_fusion)
            if cached_fusion is not None:  # the seeds' exact fusion rows lead the item vectors
                fresh = {"fusion": items[: input_item_feats.shape[0], : self.fusion_out_dim].detach()}
            feats = {"user": self.user_vectors(input_users), "item": items}
            vectors = self.gcn(blocks, feats, self.inv_sqrt_degree(input_users, input_items))
        # output items lead the inputs (MF: they are the inputs; DGL blocks: dst nodes are a prefix of src nodes)
        vectors = self.add_item_graph(vectors, input_items)
        return vectors if fresh is None else {**vectors, "fresh": fresh}

    def _forward_history(self, blocks, input_users, input_items, input_item_feats, cached_fusion, history):
        if blocks is None or len(blocks) != 1 or cached_fusion is None:
            raise ValueError("forward_blocks: neighbor_history needs one sampled block and cached_fusion "
                             f"(got {0 if blocks is None else len(blocks)} blocks)")
        block = blocks[0]
        n_item = block.num_dst_nodes("item")
        if input_item_feats.shape[0] != n_item or cached_fusion.shape[0] != input_items.shape[0] - n_item:
            raise ValueError(f"forward_blocks: {input_item_feats.shape[0]} seed feature rows and "
                             f"{cached_fusion.shape[0]} cached rows for {n_item} seed + "
                             f"{input_items.shape[0] - n_item} neighbour items")
        # seeds: exact, with gradient; neighbours: cached fusion ⊕ ID row read without gradient, so a step's
        # ID-row updates stay with its seeds (per-step work independent of the catalog; measured: giving the
        # neighbours' rows gradients cost 4x the rows at 1M items and did not raise Recall@20 at 100k)
        n_user = block.num_dst_nodes("user")
        users = self.user_vectors(input_users[:n_user])
        items = self.item_vectors(input_items[:n_item], input_item_feats)
        with torch.no_grad():
            rest_users = self.user_vectors(input_users[n_user:])
            rest_ids = self.item_id_rows(input_items[n_item:].to(self.param_device))
            rest_items = torch.cat([cached_fusion.to(device=rest_ids.device, dtype=rest_ids.dtype), rest_ids], dim=1)
        return self.gcn.forward_history(block, {"user": users, "item": items},
                                        {"user": rest_users, "item": rest_items}, history)

    def forward_graph(self, g, item_feats_all: torch.Tensor, chunk_size: int = 8192) -> Dict[str, torch.Tensor]:
        """Full-graph pass: ``{"user": [num_users, D], "item": [num_items, D]}``.

        The fusion runs over ``chunk_size`` items at a time (features are moved to the model's device
        chunk by chunk), bounding its activation memory when called under ``torch.no_grad()``.  ``g``
        (the whole user–item graph) is only read by the GCN scorer.
        """
        if item_feats_all.shape[0] != self.num_items:
            raise ValueError(f"forward_graph: {item_feats_all.shape[0]} feature rows for {self.num_items} items")
        device = self.param_device
        parts = []
        for start in range(0, self.num_items, chunk_size):
            stop = min(start + chunk_size, self.num_items)
            ids = torch.arange(start, stop, device=device)
            parts.append(self.item_vectors(ids, item_feats_all[start:stop]))
        vectors = {"user": self.user_vectors(torch.arange(self.num_users, device=device)), "item": torch.cat(parts)}
        vectors = self.propagate_graph(g, vectors)
        return self.add_item_graph(vectors, torch.arange(self.num_items, device=device), chunk_size)

    def forward(self, blocks, input_users, input_items, input_item_feats, cached_fusion=None,
                neighbor_history=None) -> Dict[str, object]:
        """Same as ``forward_blocks`` (so wrappers that call the module, e.g. DeepSpeed engines, work)."""
        return self.forward_blocks(blocks, input_users, input_items, input_item_feats, cached_fusion,
                                   neighbor_history)

    @staticmethod
    def score(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Dot-product scores of matching rows (broadcasting): ``(u * i).sum(-1)``."""
        return (u * i).sum(-1)
