"""metammf-dist: MetaMMF multimodal recommenders trained at cluster scale.

Data path: ``sharding`` (feature shards) -> ``data`` (datasets) -> ``graph`` (the train graph) -> ``sampler``
(mini-batches) -> ``model`` (pure torch) -> ``train`` (the loop; ``strategies`` for big catalogs,
``distributed`` for ranks and DeepSpeed) -> ``evaluation`` (full ranking).  ``commands`` holds the CLI.
"""
import os as _os

# DGL writes ~/.dgl/config.json on import unless the backend is given; a node with a read-only home
# (containers, some Slurm clusters) would crash there.
_os.environ.setdefault("DGLBACKEND", "pytorch")

__version__ = "0.1.0"
