"""Parameter counts of a MetaMMF recommender, by component — from a built model or from the config alone.

Groups: ``meta_learner`` (the MLP producing s_i), ``fusion_layers`` (M, T / A, B, C, bias of every
fusion layer), ``item_id`` and ``user_id`` (embedding tables), ``gcn`` (0 for MF), ``total``.

``count_parameters`` computes the same numbers from a ``ModelConfig`` and the dataset sizes without
allocating anything (huge catalogs, ``metammf-dist info --model``); a test keeps the two in step.
"""
from __future__ import annotations

from typing import Dict, Mapping, Union

from torch import nn

from metammf_dist.config import ModelConfig

GROUPS = ("meta_learner", "fusion_layers", "item_id", "user_id", "gcn", "total")


def _numel(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Counts of an allocated ``MetaMMFRecommender`` (``total`` counts every parameter of the model)."""
    return {
        "meta_learner": _numel(model.meta_learner),
        "fusion_layers": 0 if model.fusion is None else _numel(model.fusion.layers),
        "item_id": _numel(model.item_emb),
        "user_id": _numel(model.user_emb),
        "gcn": _numel(model.gcn),
        "total": _numel(model),
    }


def fusion_layer_parameters(kind: str, in_dim: int, out_dim: int, meta_dim: int, cp_rank: int) -> int:
    """Parameters of one fusion layer (see the shapes in ``fusion.py``)."""
    if kind == "none":  # the ID-only model has no fusion layers
        return 0
    static = in_dim * out_dim + out_dim  # M, bias
    if kind == "static":
        return static
    if kind == "meta":
        return static + meta_dim * in_dim * out_dim  # T
    if kind == "cp":
        return static + cp_rank * (in_dim + out_dim + meta_dim)  # A, B, C
    raise ValueError(f"unknown fusion kind {kind!r}")


def count_parameters(cfg: ModelConfig, num_users: int, num_items: int, feat_dim: int) -> Dict[str, int]:
    """What ``parameter_counts(build_model(cfg, num_users, num_items, feat_dim))`` returns, without allocating."""
    counts = dict.fromkeys(GROUPS, 0)
    if cfg.fusion not in ("static", "none"):
        hidden = feat_dim if cfg.meta_hidden is None else cfg.meta_hidden
        counts["meta_learner"] = feat_dim * hidden + hidden + hidden * cfg.meta_dim + cfg.meta_dim
    widths = [feat_dim] + list(cfg.fusion_dims)
    if cfg.fusion != "none":
        counts["fusion_layers"] = sum(fusion_layer_parameters(cfg.fusion, a, b, cfg.meta_dim, cfg.cp_rank)
                                      for a, b in zip(widths[:-1], widths[1:]))
    counts["item_id"] = num_items * cfg.item_id_dim
    counts["user_id"] = num_users * cfg.user_id_dim
    if cfg.scorer == "gcn" and cfg.gcn_type == "sage":  # LightGCN propagation has no parameters
        dim = cfg.user_id_dim
        # per layer, per direction: SAGEConv fc_self (D×D) + fc_neigh (D×D) + bias (D)
        counts["gcn"] = cfg.gcn_layers * 2 * (2 * dim * dim + dim)
    counts["total"] = sum(counts[g] for g in GROUPS if g != "total")
    return counts


def format_parameter_table(counts: Union[Mapping[str, int], Mapping[str, Mapping[str, int]]]) -> str:
    """A plain-text table.  ``counts``: one ``parameter_counts``/``count_parameters`` dict (shown with
    each group's share of the total), or ``{column label: counts dict}`` to compare models side by side."""
    if all(isinstance(v, int) for v in counts.values()):
        total = counts.get("total", 0) or 1
        rows = [(g, f"{counts[g]:,}", f"{100.0 * counts[g] / total:.1f}%") for g in GROUPS if g in counts]
        header = ("component", "parameters", "share")
    else:
        labels = list(counts)
        groups = [g for g in GROUPS if any(g in counts[lab] for lab in labels)]
        rows = [(g, *(f"{counts[lab].get(g, 0):,}" for lab in labels)) for g in groups]
        header = ("component", *labels)
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(row) -> str:
        return "  ".join(str(v).ljust(w) if c == 0 else str(v).rjust(w) for c, (v, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
