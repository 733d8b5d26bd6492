"""GCN layer histories (``train.gcn_history``): historical embeddings for a step's neighbours.

With the fusion cache alone a step still runs the GCN over a 2-hop sampled neighbourhood, and that
neighbourhood grows with the catalog until it saturates (9k items at a 10k catalog, 154k at 1M with
fan-outs [10, 10] and batch 3,000): the GCN, the ID-row updates and block building all scale with it.
GNNAutoScale (Fey et al., ICML 2021) bounds it: every layer aggregates ONE sampled hop, and the
neighbours' inner-layer vectors come from history tables instead of from their own neighbourhoods.  Here:

* tables ``H_l`` (l = 1 .. L-1) hold every user's and item's layer-l GCN vector (after the activation,
  before dropout); layer 0 needs no table: a neighbour's layer-0 vector is its fusion-cache row ⊕ its ID
  row, both read without gradient;
* a step samples the seeds' in-edges once (``fanouts[-1]``, seed edges excluded as usual); each layer
  aggregates those neighbours' previous-layer vectors; the seeds' own vectors are exact, with gradient
  (``GCN.forward_history``).  Only the seeds' ID rows, the fusion of the seed items and the GCN weights
  get gradients (so a step updates ~batch ID rows, not its neighbourhood's);
* after the step the seeds' fresh vectors are pushed: layer-l rows into ``H_l``, the seed items' fusion
  output into the fusion cache (all ranks' pushes are all-gathered and applied in rank order, so the
  tables stay identical across ranks);
* whenever the fusion cache is refreshed (every K steps), the tables are recomputed over the whole train graph
  (``GCN.hidden_graph``, no dropout, no gradient) from the refreshed cache and the current ID tables.

Per-step work is then ~ batch × fan-out, independent of the catalog size.  The cost: neighbours' inner-layer
vectors are as stale as their last push or refresh, and no gradient reaches a neighbour through the
aggregation (only when it is a seed itself).
Memory: ``(num_users + num_items) × D × (L - 1)`` float32 per rank (512 MB at 1M users + 1M items, D = 64,
2 layers), plus one full-graph layer pass at a refresh.
Saved with each checkpoint (``gcn_history.pt``, the fusion cache inside), so a resumed run equals an
uninterrupted one.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.distributed as tdist

from metammf_dist.distributed.collectives import all_gather_rows, last_per_id
from metammf_dist.strategies.base import FullModel, Strategy, seed_counts
from metammf_dist.strategies.fusion_cache import FusionCache

NODE_TYPES = ("user", "item")


class GCNHistory(Strategy):
    """Layer histories on top of a fusion cache (which holds the layer-0 fusion part and sets the refresh period)."""

    file_name = "gcn_history.pt"
    seed_features_only = True

    def __init__(self, cache: FusionCache, graph, num_users: int, dim: int, num_layers: int, *,
                 world_size: int = 1, distributed: bool = False, device: torch.device = torch.device("cpu")):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"GCNHistory needs a GCN of at least 2 layers, got {num_layers}")
        self.cache, self.graph = cache, graph
        self.num_nodes = {"user": int(num_users), "item": cache.num_items}
        self.dim, self.num_tables = int(dim), int(num_layers) - 1
        self.world_size, self.distributed, self.device = int(world_size), bool(distributed), device
        self.tables: List[Dict[str, torch.Tensor]] = []
        self.refreshed_at = -1

    # -- the strategy interface ---------------------------------------------------------------------
    def prepare(self, batch, global_step: int, full_model: FullModel) -> Dict[str, object]:
        if self.cache.due(global_step):
            with self.timed_refresh(), full_model() as model:
                self.cache.refresh(model, global_step)
                self.refresh(model, self.cache.fused, self.graph, global_step)
        n_seed = seed_counts(batch)
        return {"cached_fusion": self.cache.lookup(batch.input_items[n_seed["item"]:]),
                "neighbor_history": self.lookup({"user": batch.input_users[n_seed["user"]:],
                                                 "item": batch.input_items[n_seed["item"]:]})}

    def after_step(self, batch, fresh: Optional[dict]) -> None:
        self.push({"user": batch.output_users, "item": batch.output_items}, fresh["hidden"])

    def state_dict(self) -> dict:
        return {"tables": [{nt: t.cpu() for nt, t in table.items()} for table in self.tables],
                "refreshed_at": self.refreshed_at, "fusion_cache": self.cache.state_dict()}

    def load_state_dict(self, state: dict) -> bool:
        tables = state.get("tables") or []
        if len(tables) != self.num_tables or any(
                tuple(table[nt].shape) != (self.num_nodes[nt], self.dim) for table in tables for nt in NODE_TYPES):
            return False
        if not self.cache.load_state_dict(state.get("fusion_cache") or {}):
            return False
        self.tables = [{nt: table[nt].to(self.device) for nt in NODE_TYPES} for table in tables]
        self.refreshed_at = int(state["refreshed_at"])
        return True

    # -- the tables ---------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self, model, fused: torch.Tensor, graph, global_step: int) -> None:
        """Recompute every table over the whole train ``graph`` from the fusion snapshot ``fused``
        (``[num_items, F]``) and the current ID tables.  Collective when distributed: every rank runs the
        same module calls, then rank 0's result is broadcast, so the tables are bit-identical.  Under ZeRO-3
        pass a module with gathered parameters (``prepare`` does)."""
        feats = {"user": model.as_input_rows(model.user_emb.weight.detach()),
                 "item": torch.cat([model.as_input_rows(fused),
                                    model.item_id_rows(torch.arange(model.num_items)).detach()], dim=1)}
        hidden = model.gcn.hidden_graph(graph, feats)
        tables = [{nt: h[nt].float().to(self.device).contiguous() for nt in NODE_TYPES} for h in hidden]
        if self.distributed and self.world_size > 1:
            for table in tables:
                for nt in NODE_TYPES:
                    tdist.broadcast(table[nt], src=0)
        self.tables, self.refreshed_at = tables, int(global_step)

    def lookup(self, ids: Dict[str, torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """History rows of the nodes ``ids`` (per type: global ids of a step's neighbour nodes), per table:
        ``[{ntype: [n, D]}]``."""
        if not self.tables:
            raise RuntimeError("GCNHistory.lookup before the first refresh")
        # index_select, not t[ids]: ~5x faster row gathers from a large table on CPU (1M x 64, 35k rows)
        return [{nt: table[nt].index_select(0, ids[nt].to(self.device)) for nt in NODE_TYPES}
                for table in self.tables]

    @torch.no_grad()
    def push(self, ids: Dict[str, torch.Tensor], fresh: List[Dict[str, torch.Tensor]]) -> None:
        """Write the seeds' fresh vectors: ``fresh[l][ntype]`` (layer l of the nodes ``ids[ntype]``) into
        table l (l >= 1) and the fusion part of ``fresh[0]["item"]`` into the fusion cache.  Collective when
        distributed."""
        fusion_dim = self.cache.dim
        for nt in NODE_TYPES:
            node_ids = ids[nt].to(self.device)
            parts = [fresh[layer][nt].float().to(self.device) for layer in range(1, self.num_tables + 1)]
            if nt == "item":
                parts.append(fresh[0]["item"][:, :fusion_dim].float().to(self.device))
            values = torch.cat(parts, dim=1)
            if self.distributed and self.world_size > 1:
                node_ids, values = all_gather_rows(node_ids, values, self.world_size)
            node_ids, values = last_per_id(node_ids, values)
            for layer, table in enumerate(self.tables):
                table[nt].index_copy_(0, node_ids, values[:, layer * self.dim:(layer + 1) * self.dim])
            if nt == "item":
                target = self.cache.fused
                target.index_copy_(0, node_ids.to(target.device),
                                   values[:, -fusion_dim:].to(target.device, target.dtype))
