"""metammf-dist: MetaMMF multimodal recommenders trained at cluster scale.

Data path: ``sharding`` (feature shards) -> ``metammf_dist.data`` (datasets) -> ``metammf_dist.sampler``
(DGL or torch-only mini-batches) -> ``metammf_dist.model`` (pure torch) -> ``metammf_dist.engine`` (DeepSpeed)
-> ``metammf_dist.evaluation`` (full ranking).
"""
__version__ = "0.1.0"
