"""Horovod data-parallel training: the alternative to the DeepSpeed engine, for the latest lane.

The same model, sampler, objective and evaluation as ``metammf-dist train``; only the data-parallel layer
differs: ``horovod.torch.DistributedOptimizer`` (gradients averaged by allreduce over Gloo, or NCCL on
GPUs) around ``torch.optim.Adam``, with ``broadcast_parameters`` from rank 0 at the start (the fresh
optimizer states are equal everywhere; ``broadcast_optimizer_state`` is avoided because it initializes
them with a zero-gradient step, which moves the parameters when weight decay is on).  Ranks take rank-disjoint edge batches (``EdgePartition``), exactly as under
DeepSpeed, and dropout is seeded per (seed, epoch, step, rank) as in ``train/loop.py``, so a Horovod run
follows the same trajectory as a DeepSpeed ZeRO-0 run with the same config and world size.

Launch (Horovod is built into the latest lane by ``scripts/setup_latest.sh`` -> ``scripts/build_horovod.sh``, ~11 min on
2 cores; CI runs ``tests/test_hvd.py`` there)::

    horovodrun -np 2 --gloo .venv-latest/bin/python -m metammf_dist.hvd configs/tiktok.yaml \\
        train.graph_backend=torch [key=value ...]

Outputs (rank 0): ``<run_dir>/hvd/metrics.jsonl`` (one line per validation), ``best_model.pt`` (the
model state dict at the best validation, loadable into ``build_model``) and ``final_metrics.json``; the
last stdout line is the test metrics as JSON, like ``metammf-dist train``.  Deliberately minimal: no
resume, no mid-epoch checkpoints, no ZeRO sharding (Horovod replicates parameters and optimizer state).

    trainer.py   HorovodTrainer: the training loop and evaluation
    __main__.py  ``python -m metammf_dist.hvd CONFIG [key=value ...]``
"""
