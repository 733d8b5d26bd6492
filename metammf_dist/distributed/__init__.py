"""Running on many ranks: process groups, the DeepSpeed engine, where the ID tables live, row collectives.

    process_group.py    launcher environment (torchrun, deepspeed, Slurm) -> ``DistInfo``; barriers
    deepspeed_engine.py the objective wrapped in a DeepSpeed ZeRO engine; gathered full-parameter replicas
    id_tables.py        ``train.id_tables``: dense (inside ZeRO) or sparse (outside it, row-wise lazy Adam)
    collectives.py      all-gathers of (row id, row) pairs shared by the ID tables and the strategies
"""
