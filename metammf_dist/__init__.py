"""metammf-dist: MetaMMF multimodal recommenders trained at cluster scale.

Data path: ``sharding`` (feature shards) -> ``metammf_dist.data`` (datasets) -> ``metammf_dist.sampler``
(DGL or torch-only mini-batches) -> ``metammf_dist.model`` (pure torch) -> ``metammf_dist.engine`` (DeepSpeed)
-> ``metammf_dist.evaluation`` (full ranking).
"""
import os as _os

# DGL writes ~/.dgl/config.json on import unless the backend is given; a node with a read-only home
# (containers, some Slurm clusters) would crash there.
_os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
