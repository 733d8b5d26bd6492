"""MetaMMF model in plain torch (+ DGL for the GCN scorer); knows nothing of DeepSpeed, shards or launchers.

    metalearner.py  x_i -> meta vector s_i
    fusion.py       the paper's fusion equations: MetaLayer, CPLayer, StaticLayer, FusionNet
    gcn.py          GraphSAGE-mean scorer over the user–item graph (imports DGL)
    recommender.py  MetaMMFRecommender: ID embeddings + fusion + scorer, cold start
    registry.py     config strings -> parts; build_model
    summary.py      parameter counts (from a model, or from the config without allocating)

``GCN`` is imported lazily so that MF models work without DGL.
"""
from metammf_dist.model.fusion import CPLayer, FusionNet, MetaLayer, StaticLayer
from metammf_dist.model.metalearner import MetaLearner
from metammf_dist.model.recommender import MetaMMFRecommender
from metammf_dist.model.registry import FUSION_LAYERS, SCORERS, build_model
from metammf_dist.model.summary import count_parameters, format_parameter_table, parameter_counts

__all__ = [
    "CPLayer", "FusionNet", "MetaLayer", "StaticLayer", "MetaLearner", "MetaMMFRecommender", "GCN",
    "FUSION_LAYERS", "SCORERS", "build_model", "count_parameters", "format_parameter_table", "parameter_counts",
]


def __getattr__(name):
    if name == "GCN":
        from metammf_dist.model.gcn import GCN

        return GCN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
